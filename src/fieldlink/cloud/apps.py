from django.apps import AppConfig


class CloudConfig(AppConfig):
    name = "fieldlink.cloud"
    label = "cloud"
    verbose_name = "Fieldlink cloud"
