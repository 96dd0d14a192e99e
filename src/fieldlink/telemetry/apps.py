from django.apps import AppConfig


class TelemetryConfig(AppConfig):
    name = "fieldlink.telemetry"
    label = "telemetry"
    verbose_name = "Telemetry"

    def ready(self) -> None:
        # Alarms follow the data: stored batches and health changes are evaluated inside the
        # transaction that stored them (see alarm_services). Registered once per process.
        from fieldlink.devices.services import HEALTH_CHANGE_HOOKS  # noqa: PLC0415
        from fieldlink.telemetry import alarm_services, notifications  # noqa: PLC0415
        from fieldlink.telemetry.ingest import INGEST_HOOKS  # noqa: PLC0415

        if alarm_services.on_samples not in INGEST_HOOKS:
            INGEST_HOOKS.append(alarm_services.on_samples)
        if alarm_services.on_health_change not in HEALTH_CHANGE_HOOKS:
            HEALTH_CHANGE_HOOKS.append(alarm_services.on_health_change)
        # Webhooks and e-mails: rows in the alarm's transaction, sending after commit.
        if notifications.queue_alarm_event not in alarm_services.ALARM_EVENT_HOOKS:
            alarm_services.ALARM_EVENT_HOOKS.append(notifications.queue_alarm_event)
        from django.db.models.signals import pre_delete  # noqa: PLC0415

        from fieldlink.telemetry.models import Series  # noqa: PLC0415
        from fieldlink.telemetry.receivers import delete_samples_of_series  # noqa: PLC0415

        pre_delete.connect(
            delete_samples_of_series, sender=Series, dispatch_uid="telemetry-series-samples"
        )
        # Export sections and the organisation-purge hook register on import, in every process.
        from fieldlink.telemetry import exports  # noqa: F401, PLC0415
