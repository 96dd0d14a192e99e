"""Background tasks of alarm notifications (django-tasks): webhook deliveries and alarm e-mails.

No task runs inside one transaction: a delivery attempt owns its short transactions itself
(``notifications.attempt_delivery``), so none stays open while a receiver is slow.
"""

from __future__ import annotations

from django.db import transaction
from django_tasks import task

from fieldlink.telemetry import notifications


@task()
def deliver_webhook(delivery_id: str) -> str:
    """First attempt of a queued delivery (retries come from the sweep)."""
    delivery = notifications.attempt_delivery(delivery_id)
    return "skipped" if delivery is None else str(delivery.state)


@task()
def deliver_due_webhooks() -> int:
    """Periodic: attempt the deliveries whose retry is due, then prune old history.

    Safe to run on several replicas at once: each attempt first claims its delivery.
    """
    attempted = notifications.deliver_due()
    with transaction.atomic():
        notifications.prune_deliveries()
    return attempted


@task()
def send_alarm_emails(alarm_id: str, event: str) -> int:
    return notifications.send_alarm_emails(alarm_id, event)
