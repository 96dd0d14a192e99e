from datetime import timedelta

from django.apps import AppConfig


class UpdatesConfig(AppConfig):
    name = "fieldlink.updates"
    label = "updates"
    verbose_name = "Updates"

    def ready(self) -> None:
        # The periodic schedule lives in ops (``fieldlink serve`` enqueues it); registered once
        # per process. Both tasks are idempotent, as every periodic task must be.
        from fieldlink.ops.tasks import PERIODIC  # noqa: PLC0415
        from fieldlink.updates.tasks import advance_rollouts, refresh_tuf_metadata  # noqa: PLC0415

        for interval, task in (
            (timedelta(minutes=1), advance_rollouts),
            (timedelta(hours=1), refresh_tuf_metadata),
        ):
            if (interval, task) not in PERIODIC:
                PERIODIC.append((interval, task))
