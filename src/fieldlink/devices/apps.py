from django.apps import AppConfig


class DevicesConfig(AppConfig):
    name = "fieldlink.devices"
    label = "devices"
    verbose_name = "Devices"
