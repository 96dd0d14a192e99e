"""The telemetry storage engine: samples in tables shaped for the hot path, SQLite and PostgreSQL.

Samples are ``(series, ts, value, quality)``: a compact integer series id (``models.Series``)
instead of the measuring point's UUID, ``ts`` in UTC milliseconds. Writes happen in the
caller's transaction (the ingestion boundary owns it), so samples, the batch receipt and the
latest values commit together or not at all.

Two workloads pull the table layout in opposite directions (measured, issue 5): a batch holds
one timestamp across many series, so a table clustered by ``(series, ts)`` touches one page per
series per batch (5 % of the raw insert rate), while a table clustered by ``(ts, series)``
appends but makes a per-series range query scan everything.

- SQLite: batches append to ``telemetry_sample_hot`` clustered by ``(ts, series)``. Every
  ``COMPACT_ROWS`` rows the hot table is moved, sorted by series, into ``telemetry_sample``
  clustered by ``(series, ts)``: each series' run then grows by many rows at once, paying the
  page touch once per compaction instead of once per batch. Range queries read both (the hot
  table is small by construction). Both are ``WITHOUT ROWID``: the key is the row.
- PostgreSQL: ``telemetry_sample`` is natively range-partitioned by ``ts`` (one partition per
  UTC day, created on demand), with a ``(series, ts)`` index, filled with binary ``COPY``;
  retention drops whole partitions.

Exactly-once is a batch-level key (``models.BatchReceipt``), not a per-value key, so the sample
tables need no unique index of their own on PostgreSQL. The same (series, ts) written twice by
two different batches is a correction (agents never resend a value in another batch): on SQLite
the newer value replaces the older once both sit in the same table — until the next compaction a
correction in the hot table and the value it corrects in the compacted one are both returned;
PostgreSQL keeps both rows. Keeping reads free of a per-row anti-join is worth that rare case.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from typing import Any, Final

from django.db import connection

from fieldlink.telemetry.models import LatestValue, Series
from fieldlink.telemetry.querying import bucket_width

__all__ = [
    "COMPACT_ROWS",
    "DAY_MS",
    "Row",
    "Sample",
    "buckets",
    "compact",
    "delete_before",
    "drop_partitions_before",
    "ensure_series",
    "latest",
    "range",
    "series_of",
    "write_samples",
]

Row = tuple[int, int, float, int]  # (series, ts_ms, value, quality)
Sample = tuple[int, float, int]  # (ts_ms, value, quality)
BucketRow = tuple[int, float, float, float, int]  # (bucket_start_ms, min, max, avg, count)

DAY_MS: Final = 86_400_000
# Rows the SQLite hot table collects before they move to the series-clustered table. Larger
# means fewer page touches per value moved, and longer per-series scans of the hot table.
COMPACT_ROWS: Final = 100_000
_PARTITION_LOCK: Final = 0x7E1E_0001  # pg advisory lock: one creator of partitions at a time

_state = {"hot_rows": 0}


def _vendor() -> str:
    return str(connection.vendor)


def _raw() -> Any:
    """The DB-API connection under Django's: the hot path skips Django's cursor wrapper."""
    connection.ensure_connection()
    return connection.connection


# -- series -----------------------------------------------------------------------------------


def series_of(point_ids: Sequence[Any]) -> dict[Any, int]:
    """Measuring point id -> series id, for the points that have one."""
    rows = Series.objects.filter(point_id__in=list(point_ids)).values_list("point_id", "id")
    return dict(rows)


def ensure_series(points: Iterable[Any]) -> dict[Any, int]:
    """Measuring point id -> series id, creating the missing series (points are model objects)."""
    wanted = {p.pk: p for p in points}
    found = series_of(list(wanted))
    missing = [p for pk, p in wanted.items() if pk not in found]
    if missing:
        Series.objects.bulk_create(
            [Series(point=p, organisation_id=p.organisation_id) for p in missing],
            ignore_conflicts=True,  # a concurrent batch may create the same series
        )
        found = series_of(list(wanted))
    return found


# -- writes -----------------------------------------------------------------------------------


def write_samples(rows: Sequence[Row]) -> None:
    """Store ``rows`` in the current transaction and keep the latest value per series."""
    if not rows:
        return
    if _vendor() == "postgresql":
        _write_postgres(rows)
    else:
        _write_sqlite(rows)


def _newest(rows: Sequence[Row]) -> list[Row]:
    newest: dict[int, Row] = {}
    for row in rows:
        kept = newest.get(row[0])
        if kept is None or row[1] >= kept[1]:
            newest[row[0]] = row
    # Sorted: concurrent upserts lock latest rows in the same order and cannot deadlock.
    return [newest[s] for s in sorted(newest)]


def _write_sqlite(rows: Sequence[Row]) -> None:
    raw = _raw()
    raw.executemany(
        "INSERT OR REPLACE INTO telemetry_sample_hot (ts, series, value, quality) "
        "VALUES (?, ?, ?, ?)",
        sorted((ts, series, value, quality) for series, ts, value, quality in rows),
    )
    raw.executemany(
        "INSERT INTO telemetry_latestvalue (series, ts, value, quality) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (series) DO UPDATE SET ts = excluded.ts, value = excluded.value, "
        "quality = excluded.quality WHERE excluded.ts >= telemetry_latestvalue.ts",
        _newest(rows),
    )
    _state["hot_rows"] += len(rows)
    if _state["hot_rows"] >= COMPACT_ROWS:
        compact()


def compact() -> int:
    """Move the SQLite hot table into the series-clustered table; the number of rows moved."""
    if _vendor() != "sqlite":
        return 0
    raw = _raw()
    cursor = raw.execute(
        "INSERT OR REPLACE INTO telemetry_sample (series, ts, value, quality) "
        "SELECT series, ts, value, quality FROM telemetry_sample_hot ORDER BY series, ts"
    )
    moved = int(cursor.rowcount)
    raw.execute("DELETE FROM telemetry_sample_hot")
    _state["hot_rows"] = 0
    return moved


def _partition(day: int) -> str:
    return f"telemetry_sample_d{day}"


def _ensure_partitions(cursor: Any, days: set[int]) -> None:
    names = [_partition(d) for d in sorted(days)]
    cursor.execute("SELECT n FROM unnest(%s::text[]) AS n WHERE to_regclass(n) IS NULL", (names,))
    missing = [str(r[0]) for r in cursor.fetchall()]
    if not missing:
        return
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_PARTITION_LOCK,))
    for name in missing:
        day = int(name.rsplit("d", 1)[1])
        # Names and bounds are integers we computed, never input text.
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF telemetry_sample "
            f"FOR VALUES FROM ({day * DAY_MS}) TO ({(day + 1) * DAY_MS})"
        )


def _write_postgres(rows: Sequence[Row]) -> None:
    with _raw().cursor() as cursor:
        _ensure_partitions(cursor, {ts // DAY_MS for _s, ts, _v, _q in rows})
        with cursor.copy(
            "COPY telemetry_sample (series, ts, value, quality) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(["int4", "int8", "float8", "int2"])
            for row in rows:
                copy.write_row(row)
        newest = _newest(rows)
        cursor.execute(
            "INSERT INTO telemetry_latestvalue (series, ts, value, quality) "
            "SELECT * FROM unnest(%s::int4[], %s::int8[], %s::float8[], %s::int2[]) "
            "ON CONFLICT (series) DO UPDATE SET ts = EXCLUDED.ts, value = EXCLUDED.value, "
            "quality = EXCLUDED.quality WHERE telemetry_latestvalue.ts <= EXCLUDED.ts",
            (
                [r[0] for r in newest],
                [r[1] for r in newest],
                [r[2] for r in newest],
                [r[3] for r in newest],
            ),
        )


# -- reads ------------------------------------------------------------------------------------

# SQLite reads the series-clustered table and the (small) hot table; PostgreSQL one table.
_RANGE_SQLITE: Final = (
    "SELECT ts, value, quality FROM ("
    "SELECT ts, value, quality FROM telemetry_sample "
    "WHERE series = %s AND ts >= %s AND ts < %s "
    "UNION ALL SELECT ts, value, quality FROM telemetry_sample_hot "
    "WHERE series = %s AND ts >= %s AND ts < %s"
    ") AS s ORDER BY ts LIMIT %s"
)
_RANGE_PG: Final = (
    "SELECT ts, value, quality FROM telemetry_sample "
    "WHERE series = %s AND ts >= %s AND ts < %s ORDER BY ts LIMIT %s"
)
_BUCKETS_SQLITE: Final = (
    "SELECT %s + ((ts - %s) / %s) * %s AS b, MIN(value), MAX(value), AVG(value), COUNT(*) "
    "FROM (SELECT ts, value FROM telemetry_sample WHERE series = %s AND ts >= %s AND ts < %s "
    "UNION ALL SELECT ts, value FROM telemetry_sample_hot "
    "WHERE series = %s AND ts >= %s AND ts < %s) AS s GROUP BY b ORDER BY b"
)
_BUCKETS_PG: Final = (
    "SELECT %s + ((ts - %s) / %s) * %s AS b, MIN(value), MAX(value), AVG(value), COUNT(*) "
    "FROM telemetry_sample WHERE series = %s AND ts >= %s AND ts < %s GROUP BY b ORDER BY b"
)


def latest(series_ids: Sequence[int]) -> dict[int, Sample]:
    """The newest sample of each series that has one."""
    rows = LatestValue.objects.filter(series_id__in=list(series_ids)).values_list(
        "series_id", "ts", "value", "quality"
    )
    return {int(s): (int(ts), float(v), int(q)) for s, ts, v, q in rows}


def range(
    series_id: int, start: int, end: int, *, after: int | None = None, limit: int
) -> list[Sample]:
    """Samples of a series with ``start <= ts < end`` (and ``ts > after``), oldest first."""
    low = start if after is None else builtins.max(start, after + 1)
    postgres = _vendor() == "postgresql"
    params = [series_id, low, end] if postgres else [series_id, low, end] * 2
    with connection.cursor() as cursor:
        cursor.execute(_RANGE_PG if postgres else _RANGE_SQLITE, [*params, limit])
        return [(int(ts), float(v), int(q)) for ts, v, q in cursor.fetchall()]


def buckets(series_id: int, start: int, end: int, n: int) -> list[BucketRow]:
    """``n`` equal time buckets over ``[start, end)``: (start, min, max, avg, count), in SQL.

    Empty buckets are left out. The width is ``querying.bucket_width`` (the last bucket may be
    cut short by ``end``).
    """
    width = bucket_width(end - start, n)
    postgres = _vendor() == "postgresql"
    where = [series_id, start, end] if postgres else [series_id, start, end] * 2
    with connection.cursor() as cursor:
        cursor.execute(
            _BUCKETS_PG if postgres else _BUCKETS_SQLITE, [start, start, width, width, *where]
        )
        return [
            (int(b), float(lo), float(hi), float(avg), int(c))
            for b, lo, hi, avg, c in cursor.fetchall()
        ]


# -- retention --------------------------------------------------------------------------------


def drop_partitions_before(cutoff_ms: int) -> int:
    """PostgreSQL: drop the day partitions that end at or before ``cutoff_ms``; how many."""
    if _vendor() != "postgresql":
        return 0
    with _raw().cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'telemetry_sample'::regclass"
        )
        names = [str(r[0]) for r in cursor.fetchall()]
        dropped = 0
        for name in names:
            suffix = name.removeprefix("telemetry_sample_d")
            if suffix.isdigit() and (int(suffix) + 1) * DAY_MS <= cutoff_ms:
                cursor.execute(f"DROP TABLE {name}")  # a name we created (digits only)
                dropped += 1
        return dropped


def delete_before(series_ids: Sequence[int], cutoff_ms: int) -> int:
    """Delete the samples of ``series_ids`` older than ``cutoff_ms``; how many rows."""
    if not series_ids:
        return 0
    deleted = 0
    tables = ["telemetry_sample"]
    if _vendor() == "sqlite":
        tables.append("telemetry_sample_hot")
    ids = list(series_ids)
    with connection.cursor() as cursor:
        for table in tables:
            for i in builtins.range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ", ".join(["%s"] * len(chunk))
                cursor.execute(
                    # table: one of our two names; marks: only "%s" placeholders.
                    f"DELETE FROM {table} WHERE series IN ({marks}) AND ts < %s",  # noqa: S608
                    [*chunk, cutoff_ms],
                )
                deleted += builtins.max(cursor.rowcount, 0)
    return deleted
