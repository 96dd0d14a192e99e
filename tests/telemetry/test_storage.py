"""The storage engine on the backend in use: writes, reads, compaction, corrections, retention.

On SQLite the hot table and the series-clustered table are both read; these tests put rows in
each (``compact`` in between) so a query that forgot one of them fails. On PostgreSQL the same
tests run against day partitions created on demand.
"""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldlink.telemetry import storage
from fieldlink.telemetry.querying import bucket_width
from tests.telemetry.ingest_support import make_plant

pytestmark = [pytest.mark.django_db, pytest.mark.backend]

DAY = storage.DAY_MS
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a day boundary
OLD_DAY = 11_326  # 2001-01-04: far from any other test's data


@pytest.fixture
def series() -> list[int]:
    plant = make_plant("st", points=3)
    ids = storage.ensure_series(plant.points)
    # Whatever earlier tests left in the hot table moves out, and the per-process row counter
    # restarts: an automatic compaction cannot happen in the middle of a test.
    storage.compact()
    return [ids[p.pk] for p in plant.points]


def everything(series_id: int) -> list[storage.Sample]:
    return storage.range(series_id, 0, 2**62, limit=10**6)


def sqlite() -> bool:
    return connection.vendor == "sqlite"


def partitions() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'telemetry_sample'::regclass"
        )
        return {str(r[0]) for r in cursor.fetchall()}


def test_range_reads_the_hot_and_the_compacted_rows_together(series: list[int]) -> None:
    a, b, _ = series
    storage.write_samples([(a, T0 + i * 1000, float(i), 192) for i in range(0, 10, 2)])
    moved = storage.compact()
    assert moved == (5 if sqlite() else 0)
    storage.write_samples([(a, T0 + i * 1000, float(i), 64) for i in range(1, 10, 2)])
    storage.write_samples([(b, T0 + 500, 99.0, 0)])
    expected = [(T0 + i * 1000, float(i), 192 if i % 2 == 0 else 64) for i in range(10)]
    assert everything(a) == expected
    # Half-open, paging with ``after`` and a limit, across both tables.
    assert storage.range(a, T0 + 2000, T0 + 5000, limit=100) == expected[2:5]
    assert storage.range(a, T0, T0 + 10_000, after=T0 + 3000, limit=3) == expected[4:7]
    assert storage.compact() == (5 + 1 if sqlite() else 0)
    assert everything(a) == expected
    assert everything(b) == [(T0 + 500, 99.0, 0)]
    assert storage.compact() == 0  # nothing left in the hot table


def test_a_correction_keeps_the_newer_value_as_documented(series: list[int]) -> None:
    a = series[0]
    storage.write_samples([(a, T0, 1.0, 64), (a, T0 + 1000, 5.0, 192)])
    storage.write_samples([(a, T0, 2.0, 192)])  # same (series, ts), another batch
    rows = everything(a)
    if sqlite():
        # Both writes landed in the hot table, whose key is (ts, series): the newer replaced it.
        assert rows == [(T0, 2.0, 192), (T0 + 1000, 5.0, 192)]
        storage.compact()
        storage.write_samples([(a, T0, 3.0, 0)])  # the old value is in the compacted table now
        storage.compact()
        assert everything(a) == [(T0, 3.0, 0), (T0 + 1000, 5.0, 192)]
    else:
        # PostgreSQL keeps both rows; range queries return both, the newer one last.
        assert rows == [(T0, 1.0, 64), (T0, 2.0, 192), (T0 + 1000, 5.0, 192)]
    assert storage.latest([a])[a] == (T0 + 1000, 5.0, 192)
    storage.write_samples([(a, T0 + 1000, 6.0, 64)])
    assert storage.latest([a])[a] == (T0 + 1000, 6.0, 64)  # a correction of the latest


def test_latest_never_moves_backwards_on_backfill(series: list[int]) -> None:
    a, b, c = series
    storage.write_samples([(a, T0 + 5000, 5.0, 192), (b, T0, 1.0, 192)])
    # A backfill batch: older values for a, a newer one for b, and within one batch the newest
    # of a series wins whatever its position.
    storage.write_samples(
        [(a, T0 + 1000, 1.0, 192), (b, T0 + 9000, 9.0, 64), (b, T0 + 3000, 3.0, 192)]
    )
    assert storage.latest([a, b, c]) == {a: (T0 + 5000, 5.0, 192), b: (T0 + 9000, 9.0, 64)}
    assert [ts for ts, _, _ in everything(a)] == [T0 + 1000, T0 + 5000]


def test_buckets_match_a_python_computation(series: list[int]) -> None:
    sid = series[0]

    @settings(max_examples=30, deadline=None)
    @given(
        samples=st.dictionaries(
            st.integers(0, 3 * DAY - 1),  # three days: three partitions on PostgreSQL
            st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
            min_size=1,
            max_size=60,
        ),
        start=st.integers(-DAY, DAY),
        span=st.integers(1, 3 * DAY),
        n=st.integers(1, 50),
        compacted=st.integers(0, 60),
    )
    def check(samples: dict[int, float], start: int, span: int, n: int, compacted: int) -> None:
        rows = [(sid, T0 + ts, value, 192) for ts, value in sorted(samples.items())]
        with transaction.atomic():
            # Some rows compacted, the rest in the hot table (SQLite): both are aggregated.
            storage.write_samples(rows[:compacted])
            storage.compact()
            storage.write_samples(rows[compacted:])
            got = storage.buckets(sid, T0 + start, T0 + start + span, n)
            transaction.set_rollback(True)
        width = bucket_width(span, n)
        groups: dict[int, list[float]] = {}
        for ts, value in samples.items():
            if start <= ts < start + span:
                groups.setdefault(T0 + start + (ts - start) // width * width, []).append(value)
        assert [(b, lo, hi, c) for b, lo, hi, _avg, c in got] == [
            (b, min(v), max(v), len(v)) for b, v in sorted(groups.items())
        ]
        for (_b, _lo, _hi, avg, _c), (_k, values) in zip(got, sorted(groups.items()), strict=True):
            assert avg == pytest.approx(sum(values) / len(values), rel=1e-9, abs=1e-9)
        assert len(got) <= n

    check()


def test_partitions_are_created_on_demand_and_dropped_whole(series: list[int]) -> None:
    a, b, _ = series
    day = OLD_DAY * DAY
    storage.write_samples(
        [(a, day + 10, 1.0, 192), (a, day + DAY + 10, 2.0, 192), (b, day + 2 * DAY - 1, 3.0, 0)]
    )
    storage.compact()
    if sqlite():
        # No partitions: dropping is a no-op, the rows stay (delete_before is SQLite's way).
        assert storage.drop_partitions_before(day + 5 * DAY) == 0
        assert len(everything(a)) == 2
        return
    names = {f"telemetry_sample_d{OLD_DAY}", f"telemetry_sample_d{OLD_DAY + 1}"}
    assert names <= partitions()
    # A cutoff inside the second day: only the first day ends before it.
    assert storage.drop_partitions_before(day + DAY + 20) >= 1
    assert f"telemetry_sample_d{OLD_DAY}" not in partitions()
    assert f"telemetry_sample_d{OLD_DAY + 1}" in partitions()
    assert everything(a) == [(day + DAY + 10, 2.0, 192)]
    assert everything(b) == [(day + 2 * DAY - 1, 3.0, 0)]
    assert storage.drop_partitions_before(day + 2 * DAY) >= 1  # the exact end of day 2
    assert not names & partitions()
    assert everything(a) == everything(b) == []
    # Writing to a dropped day creates its partition again.
    storage.write_samples([(a, day + 5, 4.0, 192)])
    assert f"telemetry_sample_d{OLD_DAY}" in partitions()
    assert everything(a) == [(day + 5, 4.0, 192)]


def test_delete_before_counts_rows_of_the_named_series_only(series: list[int]) -> None:
    a, b, c = series
    storage.write_samples([(s, T0 + i * 1000, float(i), 192) for s in (a, b) for i in range(6)])
    storage.compact()
    storage.write_samples([(s, T0 + i * 1000, float(i), 192) for s in (a, b) for i in range(6, 9)])
    assert storage.delete_before([], T0 + 10_000) == 0
    # Strictly older than the cutoff: 0..6 of a go (six compacted, one hot), 7 and 8 stay.
    assert storage.delete_before([a, c], T0 + 7000) == 7
    assert [ts for ts, _, _ in everything(a)] == [T0 + 7000, T0 + 8000]
    assert len(everything(b)) == 9
    assert storage.delete_before([a, c], T0 + 7000) == 0
    assert storage.delete_before([a, b], T0 + 9000) == 2 + 9
    assert everything(a) == everything(b) == []


def test_deleting_a_measuring_point_deletes_its_samples_and_no_others() -> None:
    plant = make_plant("del", points=2)
    sids = storage.ensure_series(plant.points)
    doomed, kept = sids[plant.points[0].pk], sids[plant.points[1].pk]
    with transaction.atomic():
        storage.write_samples([(doomed, T0, 1.0, 192), (kept, T0, 2.0, 192)])
        storage.compact()
        storage.write_samples([(doomed, T0 + 1, 1.5, 192)])  # still in the hot table on SQLite
    with transaction.atomic():
        plant.points[0].delete()
    # The raw tables have no foreign key: the series' samples went with it, found by id.
    assert everything(doomed) == []
    assert everything(kept) == [(T0, 2.0, 192)]
