"""Background tasks of the accounts context (django-tasks)."""

from __future__ import annotations

from django.db import transaction
from django_tasks import task

# exports registers its organisation-purge hook on import: the purge below must see it.
from fieldlink.accounts import exports, services
from fieldlink.kit.logging import get_logger

log = get_logger(__name__)


@task()
def prune_security_history() -> int:
    """Delete security-history rows past the retention period (365 days; 90 are promised)."""
    with transaction.atomic():
        return services.prune_security_history()


@task()
def purge_due_organisations() -> int:
    """Delete organisations whose deletion grace period is over (each audited)."""
    with transaction.atomic():
        return len(services.purge_due_organisations())


@task()
def build_data_export(export_id: str) -> str:
    """Write a requested export's archive, then record it as ready (or failed)."""
    # No transaction around the build: it may take a while, and on SQLite an open transaction
    # holds the one write lock. The outcome is recorded in a short one.
    try:
        built = exports.build_archive(export_id)
    except Exception as exc:
        log.exception("export_failed", export=export_id)
        with transaction.atomic():
            exports.mark_failed(export_id, exports.failure_message(exc))
        return "failed"
    with transaction.atomic():
        return "ready" if exports.mark_ready(export_id, built) else "discarded"


@task()
def expire_data_exports() -> int:
    """Delete the files of exports past their expiry; give up on builds that never finished."""
    with transaction.atomic():
        return exports.expire_exports()
