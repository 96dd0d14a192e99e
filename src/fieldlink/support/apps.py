from django.apps import AppConfig


class SupportConfig(AppConfig):
    name = "fieldlink.support"
    label = "support"
    verbose_name = "Support"
