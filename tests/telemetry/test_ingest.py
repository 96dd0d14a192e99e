"""Ingestion: exactly-once, acks over gaps, backfill, cross-tenant refusals, rate limits."""

from __future__ import annotations

import threading

import pytest
from django.core.cache import caches
from django.db import close_old_connections, connection, transaction

from fieldlink.kit.errors import RateLimitedError
from fieldlink.protocol.telemetry import Ack, Batch, Value, encode_batch
from fieldlink.telemetry import ingest, storage
from fieldlink.telemetry.edge_app import handle_telemetry
from fieldlink.telemetry.errors import PointUnknownError
from fieldlink.telemetry.models import BatchReceipt, Series
from tests.telemetry.ingest_support import Plant, batch_for, make_plant, now_ms

pytestmark = [pytest.mark.django_db, pytest.mark.backend]


def run(plant: Plant, batch: Batch) -> Ack:
    with transaction.atomic():
        return ingest.ingest_batch(plant.device, batch)


def stored_count(plant: Plant) -> int:
    sids = list(Series.objects.filter(point__in=plant.points).values_list("id", flat=True))
    return sum(len(storage.range(s, 0, 2**62, limit=10**6)) for s in sids)


def test_batch_is_stored_once_and_a_replay_is_acked_without_storing() -> None:
    plant = make_plant()
    batch = batch_for(plant, 1)
    first = run(plant, batch)
    assert (first.acked_sequence, first.accepted, first.duplicate) == (1, True, False)
    again = run(plant, batch)
    assert (again.acked_sequence, again.accepted, again.duplicate) == (1, True, True)
    assert stored_count(plant) == 6
    assert BatchReceipt.objects.filter(device=plant.device).count() == 1


def test_out_of_order_batches_ack_the_highest_contiguous_sequence() -> None:
    plant = make_plant()
    assert run(plant, batch_for(plant, 2)).acked_sequence == 0  # gap at 1
    assert run(plant, batch_for(plant, 3)).acked_sequence == 0
    assert run(plant, batch_for(plant, 1)).acked_sequence == 3  # gap closed
    assert run(plant, batch_for(plant, 3)).duplicate is True
    assert stored_count(plant) == 18


def test_backfill_lands_in_time_order() -> None:
    plant = make_plant(points=1)
    recent = batch_for(plant, 1, n=3, ts=now_ms() - 1000)
    old = batch_for(plant, 2, n=3, ts=now_ms() - 90 * 86_400_000)
    run(plant, recent)
    run(plant, old)
    sid = Series.objects.get(point=plant.points[0]).pk
    ts = [row[0] for row in storage.range(sid, 0, 2**62, limit=100)]
    assert ts == sorted(ts)
    assert len(ts) == 6
    # The latest value is the newest by device time, not the last to arrive.
    assert storage.latest([sid])[sid][0] == recent.values[-1].ts


def _refused_nothing_stored(plant: Plant, batch: Batch) -> PointUnknownError:
    with pytest.raises(PointUnknownError) as caught:
        run(plant, batch)
    assert stored_count(plant) == 0
    assert not BatchReceipt.objects.filter(device=plant.device).exists()
    return caught.value


def test_unknown_measuring_point_refuses_the_whole_batch() -> None:
    plant = make_plant()
    good = batch_for(plant, 1).values
    bad = Batch(1, [*good, Value(f"{plant.asset.tag}/nope", now_ms(), 1.0)])
    assert _refused_nothing_stored(plant, bad).details["index"] == len(good)


def test_cross_tenant_ingestion_refused() -> None:
    mine, theirs = make_plant("mine"), make_plant("theirs")
    foreign = Value(f"{theirs.asset.tag}/{theirs.points[0].key}", now_ms(), 1.0)
    _refused_nothing_stored(mine, Batch(1, [*batch_for(mine, 1).values, foreign]))
    assert stored_count(theirs) == 0


def test_point_of_an_asset_the_device_does_not_serve_is_refused() -> None:
    plant = make_plant(serve=False)
    _refused_nothing_stored(plant, batch_for(plant, 1))


def test_failing_hook_rolls_the_batch_back() -> None:
    plant = make_plant()

    def boom(device: object, samples: object) -> None:
        raise RuntimeError("alarm evaluation failed")

    ingest.INGEST_HOOKS.append(boom)
    try:
        with pytest.raises(RuntimeError):
            run(plant, batch_for(plant, 1))
    finally:
        ingest.INGEST_HOOKS.remove(boom)
    assert stored_count(plant) == 0


def test_hooks_receive_the_stored_samples() -> None:
    plant = make_plant()
    seen: list[int] = []
    ingest.INGEST_HOOKS.append(lambda device, samples: seen.extend(s.series_id for s in samples))
    try:
        run(plant, batch_for(plant, 1))
    finally:
        ingest.INGEST_HOOKS.pop()
    assert len(seen) == 6


def test_live_and_backlog_have_separate_budgets_named_in_the_refusal() -> None:
    plant = make_plant()
    live = ingest.LIMITS[False]
    ingest.check_rate(plant.device.pk, backlog=False, values=live.values_per_window, now=1000.0)
    with pytest.raises(RateLimitedError) as caught:
        ingest.check_rate(plant.device.pk, backlog=False, values=1, now=1001.0)
    assert caught.value.limit == "device_live"
    assert 1 <= caught.value.retry_after <= live.window_seconds + 1
    ingest.check_rate(plant.device.pk, backlog=True, values=1, now=1001.0)  # still allowed
    backlog = ingest.LIMITS[True]
    with pytest.raises(RateLimitedError) as caught:
        ingest.check_rate(
            plant.device.pk, backlog=True, values=backlog.values_per_window, now=1002.0
        )
    assert caught.value.limit == "device_backlog"


def _drop_cache_connections() -> None:
    # This thread's Redis pool would otherwise be garbage-collected with its socket open.
    for cache in caches.all(initialized_only=True):
        for pool in getattr(getattr(cache, "_cache", None), "_pools", {}).values():
            pool.disconnect()


@pytest.mark.django_db(transaction=True)
def test_concurrent_duplicates_store_one_batch() -> None:
    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        # Shared-cache in-memory SQLite locks whole tables without a busy timeout; the file
        # database the server uses serialises writers (BEGIN IMMEDIATE) instead.
        pytest.skip(
            "needs a file or PostgreSQL database: runs in the PostgreSQL pass, and on a file "
            "SQLite through the real server in test_https_ingest"
        )
    plant = make_plant()
    batch = batch_for(plant, 1, n=50)
    barrier = threading.Barrier(4)
    acks: list[Ack] = []
    errors: list[BaseException] = []

    def send() -> None:
        try:
            barrier.wait()
            status, payload, _ = handle_telemetry(plant.token, batch_bytes, "", "")
            acks.append((status, payload))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            close_old_connections()
            _drop_cache_connections()

    batch_bytes = encode_batch(batch)
    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert [status for status, _ in acks] == [200] * 4
    assert sum(b'"duplicate":false' in payload for _, payload in acks) == 1
    assert stored_count(plant) == 50
    assert connection.vendor in {"sqlite", "postgresql"}
