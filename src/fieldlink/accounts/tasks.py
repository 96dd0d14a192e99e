"""Background tasks of the accounts context (django-tasks)."""

from __future__ import annotations

from django.db import transaction
from django_tasks import task

from fieldlink.accounts import services


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
