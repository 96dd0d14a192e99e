"""Background tasks of the telemetry storage (django-tasks): retention and compaction.

The retention run owns its short transactions itself (``retention`` explains why): one open
transaction for the whole run would hold SQLite's single write lock against ingestion.
"""

from __future__ import annotations

from django_tasks import task

from fieldlink.telemetry import retention


@task()
def apply_telemetry_retention() -> dict[str, int | bool]:
    """Periodic: delete raw samples and prunable receipts past each organisation's retention.

    On SQLite it also drains the hot table (``storage.compact``). Idempotent; a concurrent
    second run is harmless (PostgreSQL: it skips).
    """
    return retention.apply_retention().as_dict()
