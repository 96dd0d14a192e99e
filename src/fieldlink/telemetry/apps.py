from django.apps import AppConfig


class TelemetryConfig(AppConfig):
    name = "fieldlink.telemetry"
    label = "telemetry"
    verbose_name = "Telemetry"
