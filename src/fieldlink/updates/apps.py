from django.apps import AppConfig


class UpdatesConfig(AppConfig):
    name = "fieldlink.updates"
    label = "updates"
    verbose_name = "Updates"
