"""Raw telemetry retention: samples and batch receipts older than each organisation keeps them.

Decisions (issue 5):

- Each organisation keeps raw samples for ``Organisation.raw_retention_days``; a sample is
  deleted once its *device* timestamp is older than ``now - days``. A retention below one day
  is read as one day: a zero set by mistake must not wipe the values arriving right now.
- PostgreSQL: day partitions that end before the cutoff of the organisation with the *longest*
  retention hold nothing anyone keeps, so they are dropped whole (cheap, no dead rows). Every
  organisation's rows are then deleted row-wise below its own cutoff; for the longest retention
  that only touches the one partition straddling its cutoff. Dropping a partition needs an
  exclusive lock on the parent table, and a waiting exclusive lock queues every ingest and
  query behind it, so the drop gives up after ``DROP_LOCK_TIMEOUT`` and the run is deferred to
  the next one (nothing else is deleted that run: the row-wise path would otherwise grind
  through whole days that a later drop removes for free).
- SQLite: ``storage.compact()`` first (the hot table is drained even when no process reached
  its own ``COMPACT_ROWS``: the counter is per process), then ``storage.delete_before`` per
  organisation in bounded steps: at most ``SERIES_PER_STEP`` series and a time slice sized so a
  step deletes about ``ROWS_PER_STEP`` rows, each step its own short transaction, so the one
  write lock is never held for long and ingestion interleaves. PostgreSQL uses the same steps
  (short transactions, bounded WAL per commit).
- The latest value of a series (``LatestValue``) is a copy of a raw sample: it goes when its
  timestamp is past the retention too (a point silent for longer shows "no value").
- Batch receipts older than the retention are pruned only when ``sequence <=
  device.acked_sequence``. A replay of such a sequence is answered from ``acked_sequence``
  alone, so its receipt is no longer needed for exactly-once. A receipt above
  ``acked_sequence`` (a batch stored past a gap) is what answers a replay of that batch as a
  duplicate; it is kept however old it is, until the gap below closes.
- Values older than the retention may still arrive (a device draining an old buffer): they are
  stored and removed by the next run; ingestion does not need to know about retention.
- Idempotent, and safe to run twice at once: every step deletes "what is older than X", which a
  second run finds already gone. On PostgreSQL a run takes a session advisory lock and a
  concurrent run skips (two runs dropping the same partitions would fail on the second DROP).

Each step owns its own short transaction (the task is the boundary but must not hold one
transaction open for the whole run).
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Final
from uuid import UUID

from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from fieldlink.accounts.models import Organisation
from fieldlink.kit.logging import get_logger
from fieldlink.telemetry import storage
from fieldlink.telemetry.models import BatchReceipt, LatestValue, Series

__all__ = [
    "DROP_LOCK_TIMEOUT",
    "RECEIPTS_PER_STEP",
    "ROWS_PER_STEP",
    "SERIES_PER_STEP",
    "RetentionSummary",
    "apply_retention",
]

log = get_logger(__name__)

SERIES_PER_STEP: Final = 100
ROWS_PER_STEP: Final = 20_000
RECEIPTS_PER_STEP: Final = 5_000
_FIRST_SLICE_MS: Final = 3_600_000
_MIN_SLICE_MS: Final = 1_000
_MAX_SLICE_MS: Final = 31 * storage.DAY_MS
DROP_LOCK_TIMEOUT: Final = "2s"
_RUN_LOCK: Final = 0x7E1E_0002  # pg advisory lock: one retention run at a time
_LOCK_NOT_AVAILABLE: Final = "55P03"  # SQLSTATE of a lock_timeout


@dataclass(frozen=True)
class RetentionSummary:
    organisations: int = 0
    partitions_dropped: int = 0
    samples_deleted: int = 0
    latest_deleted: int = 0
    receipts_pruned: int = 0
    compacted_rows: int = 0
    skipped: bool = False  # another run holds the lock (PostgreSQL)
    deferred: bool = False  # the partition drop could not get its lock in time

    def as_dict(self) -> dict[str, int | bool]:
        return asdict(self)


def _days(raw: int) -> int:
    return builtins.max(1, int(raw))


@contextlib.contextmanager
def _exclusive_run() -> Iterator[bool]:
    if connection.vendor != "postgresql":
        yield True  # SQLite's one write lock serialises every step already
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [_RUN_LOCK])
        row = cursor.fetchone()
    held = bool(row and row[0])
    try:
        yield held
    finally:
        if held:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [_RUN_LOCK])


def _drop_partitions(cutoff_ms: int) -> int | None:
    """Whole-day partitions before ``cutoff_ms`` dropped; None when the lock was not granted."""
    try:
        with transaction.atomic():
            with connection.cursor() as cursor:
                # SET LOCAL takes no bind parameters; the value is our constant.
                cursor.execute(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'")
            return storage.drop_partitions_before(cutoff_ms)
    except Exception as exc:
        # storage talks to psycopg directly: its error arrives untranslated (or wrapped by Django).
        if _LOCK_NOT_AVAILABLE not in (_sqlstate(exc), _sqlstate(exc.__cause__)):
            raise
        return None


def _sqlstate(exc: BaseException | None) -> str | None:
    state = getattr(exc, "sqlstate", None)
    return state if isinstance(state, str) else None


def _oldest(series_ids: Sequence[int], before_ms: int) -> int | None:
    found = [
        rows[0][0] for sid in series_ids if (rows := storage.range(sid, 0, before_ms, limit=1))
    ]
    return builtins.min(found, default=None)


def _delete_series_before(series_ids: Sequence[int], cutoff_ms: int) -> tuple[int, int]:
    """Delete samples (and latest values) of ``series_ids`` older than ``cutoff_ms``; counts."""
    deleted = latest = 0
    slice_ms = _FIRST_SLICE_MS
    for i in builtins.range(0, len(series_ids), SERIES_PER_STEP):
        chunk = series_ids[i : i + SERIES_PER_STEP]
        oldest = _oldest(chunk, cutoff_ms)
        while oldest is not None:
            upper = builtins.min(cutoff_ms, oldest + slice_ms)
            with transaction.atomic():
                rows = storage.delete_before(chunk, upper)
            deleted += rows
            # Sparse series get wide slices, dense ones narrow: each step stays near the target.
            if rows > ROWS_PER_STEP:
                slice_ms = builtins.max(_MIN_SLICE_MS, slice_ms // 2)
            elif rows < ROWS_PER_STEP // 4:
                slice_ms = builtins.min(_MAX_SLICE_MS, slice_ms * 2)
            oldest = _oldest(chunk, cutoff_ms) if upper < cutoff_ms else None
        with transaction.atomic():
            # ts is re-checked on the row itself: a value arriving meanwhile is not deleted.
            latest += LatestValue.objects.filter(series_id__in=chunk, ts__lt=cutoff_ms).delete()[0]
    return deleted, latest


def _prune_receipts(organisation_id: UUID, before: datetime) -> int:
    prunable = BatchReceipt.objects.filter(
        organisation_id=organisation_id,
        received_at__lt=before,
        # At or below acked_sequence a replay is answered without the receipt.
        sequence__lte=F("device__acked_sequence"),
    ).order_by()
    pruned = 0
    while True:
        with transaction.atomic():
            ids = list(prunable.values_list("id", flat=True)[:RECEIPTS_PER_STEP])
            if not ids:
                return pruned
            count, _ = BatchReceipt.objects.filter(id__in=ids).delete()
        pruned += count


def apply_retention(now: datetime | None = None) -> RetentionSummary:
    """Delete raw samples and prunable batch receipts past each organisation's retention."""
    now = now or timezone.now()
    now_ms = int(now.timestamp() * 1000)
    with _exclusive_run() as held:
        if not held:
            log.info("telemetry_retention_skipped", reason="another run holds the lock")
            return RetentionSummary(skipped=True)
        summary = _apply(now, now_ms)
    log.info("telemetry_retention_applied", **summary.as_dict())
    return summary


def _apply(now: datetime, now_ms: int) -> RetentionSummary:
    orgs = [
        (pk, _days(days))
        for pk, days in Organisation.objects.values_list("pk", "raw_retention_days")
    ]
    compacted = 0
    if connection.vendor == "sqlite":
        with transaction.atomic():
            compacted = storage.compact()
    dropped = 0
    if orgs and connection.vendor == "postgresql":
        longest = builtins.max(days for _, days in orgs)
        result = _drop_partitions(now_ms - longest * storage.DAY_MS)
        if result is None:
            log.warning("telemetry_retention_deferred", reason="partition lock not granted")
            return RetentionSummary(organisations=len(orgs), deferred=True)
        dropped = result
    samples = latest = receipts = 0
    for pk, days in orgs:
        series = list(
            Series.objects.filter(organisation_id=pk).order_by("id").values_list("id", flat=True)
        )
        deleted = _delete_series_before(series, now_ms - days * storage.DAY_MS)
        samples += deleted[0]
        latest += deleted[1]
        receipts += _prune_receipts(pk, now - timedelta(days=days))
    return RetentionSummary(
        organisations=len(orgs),
        partitions_dropped=dropped,
        samples_deleted=samples,
        latest_deleted=latest,
        receipts_pruned=receipts,
        compacted_rows=compacted,
    )
