"""Retention: per-organisation cutoffs, receipts kept for exactly-once, bounded steps, reruns."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

import psycopg
import pytest
from django.db import close_old_connections, connection, transaction
from django.utils import timezone
from psycopg import sql

from fieldlink.ops.tasks import PERIODIC
from fieldlink.protocol.telemetry import Ack, Batch
from fieldlink.telemetry import ingest, retention, storage
from fieldlink.telemetry.models import BatchReceipt, LatestValue
from fieldlink.telemetry.tasks import apply_telemetry_retention
from tests.telemetry.ingest_support import Plant, batch_for, make_plant

pytestmark = [pytest.mark.django_db, pytest.mark.backend]

DAY = storage.DAY_MS


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def series_of(plant: Plant) -> list[int]:
    ids = storage.ensure_series(plant.points)
    return [ids[p.pk] for p in plant.points]


def stamps(series_id: int) -> list[int]:
    return [ts for ts, _, _ in storage.range(series_id, 0, 2**62, limit=10**6)]


def run(plant: Plant, batch: Batch) -> Ack:
    with transaction.atomic():
        return ingest.ingest_batch(plant.device, batch)


def retention_days(plant: Plant, days: int) -> None:
    plant.org.raw_retention_days = days
    plant.org.save(update_fields=["raw_retention_days"])


def test_old_samples_go_only_where_the_organisation_keeps_them_shorter() -> None:
    now = timezone.now()
    short, long = make_plant("short", points=2), make_plant("long", points=2)
    retention_days(short, 30)
    retention_days(long, 365)
    ages = [400, 100, 31, 29, 1]  # days
    for plant in (short, long):
        first, silent = series_of(plant)
        storage.write_samples([(first, ms(now) - age * DAY, 1.0, 192) for age in ages])
        # A point silent for 100 days: its latest value is past the short retention.
        storage.write_samples([(silent, ms(now) - 100 * DAY, 1.0, 192)])
    storage.compact()

    summary = retention.apply_retention(now)

    kept_short, kept_long = [29, 1], [100, 31, 29, 1]
    assert stamps(series_of(short)[0]) == [ms(now) - a * DAY for a in kept_short]
    assert stamps(series_of(long)[0]) == [ms(now) - a * DAY for a in kept_long]
    assert stamps(series_of(short)[1]) == []
    assert stamps(series_of(long)[1]) == [ms(now) - 100 * DAY]
    assert summary.organisations == 2
    assert summary.latest_deleted == 1
    assert LatestValue.objects.filter(series_id=series_of(short)[1]).count() == 0
    assert LatestValue.objects.filter(series_id=series_of(long)[1]).count() == 1
    assert storage.latest([series_of(short)[0]])[series_of(short)[0]][0] == ms(now) - DAY
    if connection.vendor == "postgresql":
        # The 400-day-old day is older than anyone keeps: its partition went whole.
        assert summary.partitions_dropped >= 1
        # Row-wise: short's 100- and 31-day-old rows and its silent point's one.
        assert summary.samples_deleted == 3
        day = (ms(now) - 400 * DAY) // DAY
        with connection.cursor() as cursor:
            cursor.execute("SELECT to_regclass(%s)", [f"telemetry_sample_d{day}"])
            assert cursor.fetchone() == (None,)
    else:
        # short: 3 of the first series and the silent one; long: the 400-day one.
        assert summary.samples_deleted == 4 + 1
        assert summary.partitions_dropped == 0

    again = retention.apply_retention(now)
    assert (again.samples_deleted, again.partitions_dropped, again.latest_deleted) == (0, 0, 0)
    assert stamps(series_of(long)[0]) == [ms(now) - a * DAY for a in kept_long]


def test_a_retention_of_zero_days_keeps_the_last_day() -> None:
    now = timezone.now()
    plant = make_plant("zero", points=1)
    retention_days(plant, 0)
    (sid,) = series_of(plant)
    storage.write_samples([(sid, ms(now) - 2 * DAY, 1.0, 192), (sid, ms(now) - 3_600_000, 2.0, 0)])
    retention.apply_retention(now)
    assert stamps(sid) == [ms(now) - 3_600_000]


def test_receipts_are_pruned_only_at_or_below_the_acked_sequence() -> None:
    now = timezone.now()
    short, long = make_plant("rs", points=2), make_plant("rl", points=2)
    retention_days(short, 30)
    retention_days(long, 365)
    batches = {seq: batch_for(short, seq) for seq in (1, 2, 3, 5)}
    for batch in batches.values():
        run(short, batch)
    assert run(long, batch_for(long, 1)).acked_sequence == 1
    old = now - timedelta(days=40)
    # 4 is missing: 5 sits above the acked sequence (3) and is what answers its replay.
    BatchReceipt.objects.filter(device=short.device, sequence__in=[1, 2, 5]).update(received_at=old)
    BatchReceipt.objects.filter(device=long.device).update(received_at=old)

    summary = retention.apply_retention(now)

    assert summary.receipts_pruned == 2
    assert set(
        BatchReceipt.objects.filter(device=short.device).values_list("sequence", flat=True)
    ) == {3, 5}
    assert BatchReceipt.objects.filter(device=long.device).count() == 1
    values = sum(len(stamps(s)) for s in series_of(short))
    # Exactly-once still holds for every pruned and kept sequence: replays store nothing.
    for seq in (1, 2, 5):
        ack = run(short, batches[seq])
        assert (ack.duplicate, ack.acked_sequence) == (True, 3)
    assert sum(len(stamps(s)) for s in series_of(short)) == values
    assert run(short, batch_for(short, 4)).acked_sequence == 5
    BatchReceipt.objects.filter(device=short.device, sequence=4).update(received_at=old)

    assert retention.apply_retention(now).receipts_pruned == 2  # 4 and 5, now at or below 5
    assert set(
        BatchReceipt.objects.filter(device=short.device).values_list("sequence", flat=True)
    ) == {3}
    assert run(short, batches[5]).duplicate is True
    assert retention.apply_retention(now).receipts_pruned == 0


def test_deletion_runs_in_bounded_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    now = timezone.now()
    plant = make_plant("steps", points=3)
    # Someone keeps a year: on PostgreSQL no partition may go, the rows go step by step.
    retention_days(make_plant("keeper", points=1), 365)
    retention_days(plant, 30)
    sids = series_of(plant)
    cutoff = ms(now) - 30 * DAY
    start = cutoff - 10 * DAY
    # Ten days at one value per minute for one series, a few scattered values for the others.
    storage.write_samples([(sids[0], start + i * 60_000, 1.0, 192) for i in range(14_400)])
    storage.write_samples([(s, start + k * DAY, 1.0, 192) for s in sids[1:] for k in range(3)])
    storage.write_samples([(s, cutoff + 1000, 2.0, 192) for s in sids])
    monkeypatch.setattr(retention, "ROWS_PER_STEP", 500)
    monkeypatch.setattr(retention, "SERIES_PER_STEP", 2)
    steps: list[tuple[int, int]] = []
    delete_before = storage.delete_before

    def spy(series_ids: list[int], cutoff_ms: int) -> int:
        deleted = delete_before(series_ids, cutoff_ms)
        steps.append((len(series_ids), deleted))
        return deleted

    monkeypatch.setattr(storage, "delete_before", spy)
    summary = retention.apply_retention(now)
    assert summary.samples_deleted == 14_400 + 2 * 3 == sum(rows for _, rows in steps)
    assert max(n for n, _ in steps) <= 2
    # The slice adapts to the density: no step deletes much more than the target.
    assert max(rows for _, rows in steps) <= 2 * 500
    assert len(steps) >= 14_400 // 1000
    for sid in sids:
        assert stamps(sid) == [cutoff + 1000]


def test_the_task_is_periodic_and_reports_counts() -> None:
    assert (timedelta(hours=1), apply_telemetry_retention) in PERIODIC
    plant = make_plant("task", points=1)
    retention_days(plant, 7)
    (sid,) = series_of(plant)
    storage.write_samples([(sid, ms(timezone.now()) - 8 * DAY, 1.0, 192)])
    result = apply_telemetry_retention.call()
    assert result["samples_deleted"] or result["partitions_dropped"]
    assert result["skipped"] is False
    assert stamps(sid) == []


def test_sqlite_run_drains_the_hot_table() -> None:
    if connection.vendor != "sqlite":
        pytest.skip("SQLite-only behaviour: PostgreSQL has no hot table")
    plant = make_plant("hot", points=1)
    (sid,) = series_of(plant)
    storage.compact()
    storage.write_samples([(sid, ms(timezone.now()) - i * 1000, 1.0, 192) for i in range(1, 6)])
    assert retention.apply_retention().compacted_rows == 5
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM telemetry_sample_hot")
        assert cursor.fetchone() == (0,)
    assert len(stamps(sid)) == 5


def _conninfo() -> str:
    s = connection.settings_dict
    return psycopg.conninfo.make_conninfo(
        dbname=s["NAME"], user=s["USER"], host=s["HOST"], port=s["PORT"] or 5432
    )


@pytest.mark.django_db(transaction=True)
def test_a_busy_partition_defers_the_run_instead_of_queueing_ingestion(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL-only behaviour: day partitions (runs in the PostgreSQL pass)")
    plant = make_plant("busy", points=1)
    retention_days(plant, 30)
    (sid,) = series_of(plant)
    day = 11_400  # 2001-03-19
    with transaction.atomic():
        storage.write_samples([(sid, day * DAY + 5, 1.0, 192)])
    monkeypatch.setattr(retention, "DROP_LOCK_TIMEOUT", "200ms")
    # A long reader of that day holds a lock the DROP needs.
    with psycopg.connect(_conninfo()) as reader:
        partition = sql.Identifier(f"telemetry_sample_d{day}")
        reader.execute(sql.SQL("SELECT count(*) FROM {}").format(partition))
        summary = retention.apply_retention()
        assert summary.deferred is True
        assert stamps(sid) == [day * DAY + 5]
        reader.rollback()
    summary = retention.apply_retention()
    assert summary.deferred is False
    assert summary.partitions_dropped >= 1
    assert stamps(sid) == []


@pytest.mark.django_db(transaction=True)
def test_two_runs_at_once_delete_once_and_fail_nothing() -> None:
    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        pytest.skip(
            "two connections need a file or PostgreSQL database (in-memory SQLite locks "
            "whole tables without a busy timeout): runs in the PostgreSQL pass"
        )
    now = timezone.now()
    plant = make_plant("twice", points=3)
    retention_days(plant, 30)
    sids = series_of(plant)
    with transaction.atomic():
        storage.write_samples(
            [(s, ms(now) - (31 + i) * DAY, 1.0, 192) for s in sids for i in range(50)]
        )
        storage.write_samples([(s, ms(now) - DAY, 2.0, 192) for s in sids])
    barrier = threading.Barrier(2)
    results: list[retention.RetentionSummary] = []
    errors: list[BaseException] = []

    def apply() -> None:
        try:
            barrier.wait()
            results.append(retention.apply_retention(now))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=apply) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(results) == 2
    assert sum(r.samples_deleted for r in results) <= 3 * 50
    for sid in sids:
        assert stamps(sid) == [ms(now) - DAY]
