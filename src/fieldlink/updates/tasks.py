"""Background tasks of the updates context (django-tasks), registered as periodic in ``apps``.

``advance_rollouts`` owns one short transaction per rollout (``services`` explains why);
``refresh_tuf_metadata`` one for the whole re-signing, which touches a handful of rows.
"""

from __future__ import annotations

from django.db import transaction
from django_tasks import task

from fieldlink.kit.logging import get_logger
from fieldlink.updates import repository, services

log = get_logger(__name__)


@task()
def advance_rollouts() -> dict[str, int]:
    """Periodic (every minute): offer the next waves, time out silent devices, halt or finish."""
    counts = services.advance_rollouts()
    if counts["halted"] or counts["completed"]:
        log.info("rollouts_advanced", **counts)
    return counts


@task()
def refresh_tuf_metadata() -> list[str]:
    """Periodic (hourly): re-sign online metadata with less than half its lifetime left.

    Without it, timestamp (1 day) and snapshot (7 days) expire and every device's update
    check fails with ``expired_metadata``, which is what TUF's freeze protection is for.
    """
    with transaction.atomic():
        signed = repository.refresh_online_metadata()
    if signed:
        log.info("tuf_metadata_refreshed", files=signed)
    return signed
