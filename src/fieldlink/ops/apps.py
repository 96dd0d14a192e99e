from django.apps import AppConfig


class OperationsConfig(AppConfig):
    name = "fieldlink.ops"
    label = "ops"
    verbose_name = "Operations"
