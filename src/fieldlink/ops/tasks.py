"""Background tasks of the ops context (django-tasks), and the periodic schedule."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django_tasks import task
from django_tasks.base import Task

from fieldlink.accounts.tasks import (
    expire_data_exports,
    prune_security_history,
    purge_due_organisations,
)
from fieldlink.telemetry.notification_tasks import deliver_due_webhooks
from fieldlink.telemetry.tasks import apply_telemetry_retention


@task()
def ping(message: str) -> str:
    """A no-op round trip through the queue; operators use it to check that a worker runs."""
    return f"pong: {message}"


# What ``fieldlink serve`` enqueues on its own, and how often. Every task here must be safe to
# run twice (replicas each enqueue): they are idempotent clean-ups.
PERIODIC: list[tuple[timedelta, Task[[], Any]]] = [
    (timedelta(hours=24), prune_security_history),
    (timedelta(hours=1), purge_due_organisations),
    (timedelta(hours=1), expire_data_exports),
    # Webhook retries are due from 30 s after a failure on (webhooks.RETRY_DELAYS).
    (timedelta(minutes=1), deliver_due_webhooks),
    # Also drains SQLite's hot sample table, whose row counter is per process.
    (timedelta(hours=1), apply_telemetry_retention),
]
