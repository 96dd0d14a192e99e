"""The durable buffer: lanes, acknowledgement, sequences, the disk bound, refusals, kill -9.

Power loss is not testable here (it needs a machine whose power can be cut, or a block device
that drops unsynced writes); the policy (WAL, synchronous=FULL, one commit per append) is
documented in the module and the kill -9 test covers process death.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fieldlink.edge.buffer import Buffer
from fieldlink.edge.model import HealthReading, Reading
from fieldlink.protocol.telemetry import MIN_TS_MS, Gap, decode_batch
from tests.edge.conftest import ack, now_ms, readings

HOUR_MS = 3_600_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make(tmp_path: Path, clock: Clock) -> Iterator[Callable[..., Buffer]]:
    opened: list[Buffer] = []

    def open_buffer(name: str = "buffer.sqlite", **kw: int) -> Buffer:
        buffer = Buffer(tmp_path / name, now_ms=clock, **kw)
        opened.append(buffer)
        return buffer

    yield open_buffer
    for buffer in opened:
        buffer.close()


def values_of(buffer: Buffer, lane: str, **kw: object) -> tuple[int, bool, list[float]]:
    batch = buffer.next_batch(lane, **kw)  # type: ignore[arg-type]
    assert batch is not None
    decoded = batch.decode()
    return batch.sequence, decoded.backlog, [v.value for v in decoded.values]


def test_lanes_live_newest_first_backlog_oldest_first(
    make: Callable[..., Buffer], clock: Clock
) -> None:
    buffer = make(batch_values=3, live_window_ms=30_000)
    now = clock.now
    buffer.append(readings("A/x", 5, start_ms=now - HOUR_MS, first=0))  # 0..4: old
    buffer.append(readings("A/x", 5, start_ms=now - 5_000, first=10))  # 10..14: live

    assert values_of(buffer, "live") == (1, False, [12.0, 13.0, 14.0])
    assert values_of(buffer, "backlog") == (2, True, [0.0, 1.0, 2.0])
    # One batch per lane until it is acknowledged: the same one again, no new one.
    assert values_of(buffer, "live") == (1, False, [12.0, 13.0, 14.0])
    assert buffer.next_batch("live", exclude={1}) is None
    buffer.ack(ack(0), 1)
    buffer.ack(ack(0), 2)
    assert values_of(buffer, "live") == (3, False, [10.0, 11.0])
    assert values_of(buffer, "backlog") == (4, True, [3.0, 4.0])
    buffer.ack(ack(4), 4)  # everything up to 4 is stored: both go
    assert buffer.formed() == []
    assert buffer.next_batch("live") is None
    assert buffer.next_batch("backlog") is None


def test_interleaved_old_and_new_values_each_reach_their_lane(
    make: Callable[..., Buffer], clock: Clock
) -> None:
    # Two sources with different timestamps in one cycle, and a clock step ahead: no lane
    # may stall on a value of the other lane.
    buffer = make(batch_values=10, live_window_ms=30_000)
    now = clock.now
    rows = [Reading("A/x", now - (HOUR_MS if i % 2 else 0), float(i), 192) for i in range(8)]
    rows.append(Reading("A/x", now + HOUR_MS, 99.0, 192))
    buffer.append(rows)
    assert values_of(buffer, "live") == (1, False, [0.0, 2.0, 4.0, 6.0])
    assert values_of(buffer, "backlog") == (2, True, [1.0, 3.0, 5.0, 7.0, 99.0])
    assert buffer.stats().unsent == 0


def test_values_age_from_live_into_backlog(make: Callable[..., Buffer], clock: Clock) -> None:
    buffer = make(live_window_ms=30_000)
    buffer.append(readings("A/x", 4, start_ms=clock.now))
    assert buffer.next_batch("backlog") is None
    clock.now += 31_000  # the uplink was away: they are backlog now
    assert values_of(buffer, "backlog") == (1, True, [0.0, 1.0, 2.0, 3.0])
    assert buffer.next_batch("live") is None


def test_ack_deletes_the_accepted_batch_and_all_at_or_below_acked_sequence(
    make: Callable[..., Buffer], clock: Clock
) -> None:
    buffer = make()
    buffer.append(readings("A/x", 3, start_ms=clock.now - HOUR_MS))
    buffer.append(readings("A/x", 3, start_ms=clock.now))
    backlog, live = buffer.next_batch("backlog"), buffer.next_batch("live")
    assert backlog is not None
    assert live is not None
    # A status answer (nothing accepted) with nothing acknowledged: nothing goes.
    assert buffer.ack(ack(0, accepted=False), live.sequence) == 0
    # Sequence 2 stored, but 1 not yet (the cloud's acked_sequence stays at 0): only 2 goes.
    assert buffer.ack(ack(0), live.sequence) == 1
    assert [b.sequence for b in buffer.formed()] == [backlog.sequence]
    assert buffer.stats().depth == 3
    # Now 1 is known stored too.
    assert buffer.ack(ack(2, accepted=False), 99) == 1
    assert buffer.formed() == []


def test_acked_sequence_covers_batches_of_both_lanes(
    make: Callable[..., Buffer], clock: Clock
) -> None:
    buffer = make()
    buffer.append(readings("A/x", 3, start_ms=clock.now - HOUR_MS))
    buffer.append(readings("A/x", 3, start_ms=clock.now))
    backlog = buffer.next_batch("backlog")
    live = buffer.next_batch("live")
    assert backlog is not None
    assert live is not None
    # The live answer arrives first and says both are stored.
    assert buffer.ack(ack(live.sequence), live.sequence) == 2
    assert buffer.formed() == []
    assert buffer.stats().depth == 0


def test_sequences_are_never_reused_even_when_everything_was_acknowledged(
    make: Callable[..., Buffer], clock: Clock
) -> None:
    buffer = make()
    buffer.append(readings("A/x", 3, start_ms=clock.now))
    assert values_of(buffer, "live")[0] == 1
    # Accepted, while the cloud's acked_sequence has not moved (it cannot tell us the number).
    assert buffer.ack(ack(0), 1) == 1
    buffer.close()
    again = make()
    assert again.stats().depth == 0
    again.append(readings("A/x", 3, start_ms=clock.now + 10))
    assert values_of(again, "live")[0] == 2


def test_a_formed_batch_is_resent_byte_for_byte_after_a_restart(
    make: Callable[..., Buffer], clock: Clock
) -> None:
    buffer = make()
    buffer.append(readings("A/x", 3, start_ms=clock.now), [HealthReading("A", "ok", clock.now)])
    first = buffer.next_batch("live")
    assert first is not None
    buffer.close()
    again = make()
    again.append(readings("A/x", 3, start_ms=clock.now + 100, first=10))
    resent = again.next_batch("live")
    assert resent is not None
    assert (resent.sequence, resent.body) == (first.sequence, first.body)
    assert resent.attempts == 2
    decoded = decode_batch(resent.body, now_ms=clock.now)
    assert [h.status for h in decoded.health] == ["ok"]


def test_a_duplicate_on_the_first_attempt_renumbers_instead_of_dropping(
    make: Callable[..., Buffer], clock: Clock
) -> None:
    buffer = make()
    buffer.append(readings("A/x", 3, start_ms=clock.now))
    first = buffer.next_batch("live")
    assert first is not None
    # The cloud already holds 1..40 from a previous buffer file of this device.
    assert buffer.ack(ack(40, duplicate=True), first.sequence) == 0
    renumbered = buffer.next_batch("live")
    assert renumbered is not None
    assert renumbered.sequence == 41
    assert renumbered.payload == first.payload
    # A duplicate on a resend is the normal case (the first attempt was stored): it goes.
    resent = buffer.next_batch("live")
    assert resent is not None
    assert (resent.sequence, resent.attempts) == (41, 2)
    assert buffer.ack(ack(41, duplicate=True), 41) == 1
    assert buffer.stats().depth == 0


def test_overflow_drops_the_oldest_unsent_values_and_reports_a_gap_until_acked(
    make: Callable[..., Buffer], clock: Clock
) -> None:
    buffer = make(max_bytes=256 * 1024, batch_values=100)
    start = clock.now - HOUR_MS
    buffer.append(readings("A/x", 100, start_ms=start))
    in_flight = buffer.next_batch("backlog")  # values 0..99 are formed: never dropped
    assert in_flight is not None
    for chunk in range(30):
        buffer.append(
            readings("A/x", 500, start_ms=start + 1000 * (chunk + 1), first=1000 * (chunk + 1))
        )
    stats = buffer.stats()
    assert stats.data_bytes <= 256 * 1024
    assert stats.dropped_total > 0
    assert stats.depth == 100 + 30 * 500 - stats.dropped_total
    (gap,) = buffer.gaps()
    assert gap.count == stats.dropped_total
    assert gap.reason == "buffer_full"
    assert gap.from_ts == start + 1000  # the oldest unsent value went first
    kept = {r.value for r in buffer.unsent()}
    assert 30_499.0 in kept  # the newest stayed
    assert min(kept) > 1000.0
    assert buffer.formed()[0].body == in_flight.body

    # The gap rides on the next batch and is gone only when that batch is acknowledged.
    buffer.ack(ack(1), 1)
    batch = buffer.next_batch("backlog")
    assert batch is not None
    assert batch.decode().gaps == [gap]
    assert buffer.gaps() == []
    buffer.close()
    reopened = make()
    (still,) = reopened.formed()
    assert still.decode().gaps == [gap]
    reopened.ack(ack(2), 2)
    assert reopened.stats().gaps_pending == 0
    assert reopened.stats().dropped_total == gap.count


def test_values_the_cloud_would_refuse_are_counted_as_a_gap_not_stored(
    make: Callable[..., Buffer], clock: Clock
) -> None:
    buffer = make()
    good = Reading("A/x", clock.now, 1.0, 192)
    bad = [
        Reading("A/x", clock.now, float("nan"), 192),
        Reading("A/x", clock.now, float("inf"), 192),
        Reading("no-slash", clock.now, 1.0, 192),
        Reading("A/x", MIN_TS_MS - 1, 1.0, 192),
        Reading("A/x", clock.now, 1.0, 7),
        Reading("A/" + "x" * 200, clock.now, 1.0, 192),
    ]
    assert buffer.append([good, *bad]) == 1
    assert buffer.unsent() == [good]
    (gap,) = buffer.gaps()
    assert (gap.count, gap.reason) == (6, "value_invalid")
    stats = buffer.stats()
    assert stats.dropped_total == 6
    batch = buffer.next_batch("live")
    assert batch is not None
    decode_batch(batch.body, now_ms=clock.now)  # the cloud's own check passes


def test_stats(make: Callable[..., Buffer], clock: Clock) -> None:
    buffer = make(batch_values=4)
    empty = buffer.stats()
    assert (empty.depth, empty.oldest_unsent_age_s, empty.batches_in_flight) == (0, 0, 0)
    buffer.append(readings("A/x", 10, start_ms=clock.now - 90_000))
    buffer.next_batch("backlog")
    clock.now += 10_000
    stats = buffer.stats()
    assert stats.depth == 10
    assert stats.unsent == 6
    assert stats.batches_in_flight == 1
    assert stats.oldest_unsent_age_s == 100
    assert stats.file_bytes >= stats.data_bytes > 0


def test_a_batch_too_large_is_split_under_the_same_then_a_new_sequence(
    make: Callable[..., Buffer], clock: Clock
) -> None:
    buffer = make()
    buffer.append(readings("A/x", 9, start_ms=clock.now - HOUR_MS))
    batch = buffer.next_batch("backlog")
    assert batch is not None
    rework = buffer.refuse(1, status=413, code="batch_too_large", message="", index=None)
    assert (rework.action, rework.new_sequence) == ("split", 2)
    assert values_of(buffer, "backlog") == (1, True, [0.0, 1.0, 2.0, 3.0])
    assert values_of(buffer, "backlog", exclude={1}) == (2, True, [4.0, 5.0, 6.0, 7.0, 8.0])


def test_refused_values_are_quarantined_and_reported_the_rest_resent(
    make: Callable[..., Buffer], clock: Clock
) -> None:
    buffer = make()
    now = clock.now
    rows = [
        Reading("A/x" if i % 3 else "A/gone", now - HOUR_MS + i, float(i), 192) for i in range(9)
    ]
    buffer.append(rows)
    assert buffer.next_batch("backlog") is not None
    rework = buffer.refuse(
        1, status=422, code="point_unknown", message="values[3]: no measuring point", index=3
    )
    assert (rework.action, rework.quarantined) == ("quarantined", 3)
    seq, _, kept = values_of(buffer, "backlog")
    assert (seq, kept) == (1, [1.0, 2.0, 4.0, 5.0, 7.0, 8.0])
    (gap,) = buffer.formed()[0].decode().gaps
    assert gap == Gap(now - HOUR_MS, now - HOUR_MS + 6, 3, "point_unknown")
    assert sorted(v.value for _, v, _ in buffer.quarantined()) == [0.0, 3.0, 6.0]

    # Nothing pointed at: the content is quarantined, the sequence goes out empty.
    rework = buffer.refuse(1, status=422, code="batch_invalid", message="odd", index=None)
    assert rework.action == "emptied"
    emptied = buffer.formed()[0].decode()
    assert (emptied.sequence, emptied.values, emptied.gaps[0].count) == (1, [], 6)
    assert buffer.stats().quarantined_total == 9
    buffer.refuse(1, status=422, code="gap_invalid", message="gaps[0]", index=0)
    assert buffer.formed()[0].decode().gaps == []
    assert buffer.refuse(1, status=422, code="x", message="", index=None).action == "dropped"
    assert buffer.formed() == []


# -- kill -9 ------------------------------------------------------------------------------------

# The agent's side (append, form, ack) and a fake cloud that stores each sequence once and
# writes what it stored to the journal *before* the buffer hears about it: a kill between the
# two is exactly the case that must lead to a resend of the same sequence with the same values.
CHILD = r"""
import json, random, sys, time
from pathlib import Path
from fieldlink.edge.buffer import Buffer
from fieldlink.edge.model import Reading
from fieldlink.protocol.telemetry import Ack

path, journal_path, seed = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
stored, next_id = set(), 0
for line in journal_path.read_text().splitlines() if journal_path.exists() else []:
    try:
        entry = json.loads(line)
    except ValueError:
        continue
    if entry[0] == "T":
        next_id = max(next_id, entry[2])
    elif entry[0] == "S":
        stored.add(entry[1])
journal = journal_path.open("a", buffering=1)
buffer = Buffer(path, batch_values=rng.choice([7, 50, 400]))
print("ready", flush=True)
while True:
    now = time.time_ns() // 1_000_000
    n = rng.randint(1, 300)
    journal.write(json.dumps(["T", next_id, next_id + n]) + "\n")
    rows = [
        Reading("A/x", now - (600_000 if i % 3 else 0), float(i), 192)
        for i in range(next_id, next_id + n)
    ]
    buffer.append(rows)
    journal.write(json.dumps(["C", next_id, next_id + n]) + "\n")
    next_id += n
    for lane in rng.sample(["live", "backlog"], 2):
        if rng.random() < 0.5:
            continue
        batch = buffer.next_batch(lane)
        if batch is None:
            continue
        ids = [int(v.value) for v in batch.decode().values]
        duplicate = batch.sequence in stored
        journal.write(json.dumps(["S", batch.sequence, ids]) + "\n")
        stored.add(batch.sequence)
        acked = 0
        while acked + 1 in stored:
            acked += 1
        if rng.random() < 0.8:
            buffer.ack(Ack(acked, True, duplicate, 0, None, False), batch.sequence)
"""


def _check(path: Path, journal: Path) -> tuple[int, int]:
    committed: set[int] = set()
    attempted = 0
    cloud: dict[int, list[int]] = {}
    for line in journal.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # the line the kill cut short
        if entry[0] == "C":
            committed.update(range(entry[1], entry[2]))
        elif entry[0] == "T":
            attempted = max(attempted, entry[2])
        elif entry[0] == "S":
            # The same sequence is only ever resent with the same values.
            assert cloud.setdefault(entry[1], entry[2]) == entry[2], entry[1]
    with Buffer(path) as buffer:
        pending = [int(r.value) for r in buffer.unsent()]
        formed = {b.sequence: [int(v.value) for v in b.decode().values] for b in buffer.formed()}
    for sequence, ids in formed.items():
        if sequence in cloud:
            assert cloud[sequence] == ids, f"sequence {sequence} changed its values"
    batches = {**cloud, **formed}
    owner: dict[int, int] = {}
    for sequence, ids in batches.items():
        for i in ids:
            assert owner.setdefault(i, sequence) == sequence, f"value {i} in two batches"
    assert len(pending) == len(set(pending))
    assert not set(pending) & owner.keys(), "a value both unsent and in a batch"
    everywhere = set(pending) | owner.keys()
    assert committed <= everywhere, f"lost: {sorted(committed - everywhere)[:10]}"
    assert max(everywhere, default=-1) < attempted
    # Sequences come from one counter: no holes the cloud could never close.
    assert sorted(batches) == list(range(1, len(batches) + 1))
    return len(committed), len(batches)


def test_kill_9_at_random_moments_loses_nothing_committed_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    path, journal = tmp_path / "buffer.sqlite", tmp_path / "journal"
    rng = random.Random(6)  # noqa: S311 - kill moments, not secrets
    for round_ in range(12):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(journal), str(round_)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n", child.stderr.read() if child.stderr else ""
        time.sleep(rng.uniform(0.05, 0.5))
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        child.stdout.close()
        if child.stderr:
            child.stderr.close()
        committed, batches = _check(path, journal)
    assert committed > 1000
    assert batches > 20


def test_now_ms_default_is_wall_clock(tmp_path: Path) -> None:
    with Buffer(tmp_path / "b.sqlite") as buffer:
        buffer.append(readings("A/x", 1, start_ms=now_ms() - 1000))
        assert buffer.next_batch("live") is not None
