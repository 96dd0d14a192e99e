"""The whole agent under faults: ``fieldlink edge run`` as a real process, the real cloud over
HTTPS (``fieldlink serve``, its own database: SQLite, or PostgreSQL on the backend pass).

The field is the agent's in-process simulator (``kind = "simulator"``, 100 ms poll): every
cycle yields one value per point, all with the cycle's timestamp, for as long as the process
runs, with no field server that could itself hiccup or need restarting after a kill. What is
under test is buffer → uplink → cloud; the Modbus and OPC UA drivers have their own tests.

"No loss, no duplicate" is checked three ways, each of which fails on its own:

- every value a watcher saw in the agent's buffer file (pending or in a formed batch, i.e.
  committed) is stored in the cloud;
- the cloud's receipts are exactly 1..acked_sequence, their value counts add up to the stored
  rows, each (point, ts) is stored once (on PostgreSQL also counted in SQL), and every stored
  timestamp is a complete poll cycle (a lost or split batch would leave part of one);
- the stored cycles have no hole longer than ``HOLE_S`` except across a moment the test killed
  the agent (the plant never stopped producing while the agent ran).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fieldlink.edge.buffer import Buffer
from fieldlink.edge.uplink import Uplink
from tests.edge.agent_support import (
    AgentDevice,
    AgentProcess,
    BufferView,
    BufferWatch,
    Key,
    Stored,
    connections_to,
    edge_toml,
    instruments_for,
    make_agent_device,
    point_names,
    restartable_cloud,
    sockets_open_for_others,
    stored,
)
from tests.edge.conftest import STUB_TOKEN, Received, Reply, StubCloud, ack_body, pki_for
from tests.support.server import RunningServer, subprocess_env

POLL_MS = 100
# The longest pause between two stored cycles of a running agent that is still "no hole": the
# poll interval with its jitter plus a loaded machine's scheduling (measured: 112 ms at most).
# A lost batch (one idle period of the uplink, 0.5 s, ~5 cycles) leaves a longer one.
HOLE_S = 0.4
KILLS = 20


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def log_dir() -> Path:
    return Path(os.environ["FIELDLINK_TEST_LOG_DIR"])


def write_config(directory: Path, url: str, ca: Path, device: AgentDevice) -> Path:
    config = directory / "edge.toml"
    config.write_text(
        edge_toml(
            url=url,
            ca=ca,
            credential=device.credential_file,
            buffer=directory / "buffer.sqlite",
            instruments=device.instruments,
            poll_ms=POLL_MS,
        )
    )
    return config


def sent_in_this_run(start: BufferView) -> Callable[[BufferView], bool]:
    return lambda view: view.next_sequence > start.next_sequence


async def drain(server: RunningServer, device: AgentDevice, path: Path) -> None:
    """Send what a graceful stop left in the buffer (the values of its last poll cycles)."""
    buffer = Buffer(path)
    uplink = Uplink(
        server.base_url,
        ca_file=server.ca_cert,
        credential_file=device.credential_file,
        buffer=buffer,
        idle_s=0.05,
    )
    task = asyncio.create_task(uplink.run())
    # Let run() begin before any stop(): run() clears a stop requested before it started.
    await asyncio.sleep(0)
    deadline = time.monotonic() + 30
    try:
        while True:
            stats = buffer.stats()
            if stats.depth == 0 and stats.batches_in_flight == 0 and stats.gaps_pending == 0:
                break
            assert time.monotonic() < deadline, f"not drained: {stats}, {uplink.status}"
            assert not task.done(), task.exception()
            await asyncio.sleep(0.02)
    finally:
        uplink.stop()
        await task
        await uplink.aclose()
        buffer.close()


def assert_buffer_clean(path: Path) -> None:
    with Buffer(path) as buffer:
        stats = buffer.stats()
        assert stats.depth == 0, stats
        assert buffer.formed() == []
        assert buffer.gaps() == []
        assert stats.dropped_total == 0, stats
        assert stats.quarantined_total == 0, buffer.quarantined()[:5]


def assert_each_value_stored_once(
    got: Stored, seen: set[Key], points: set[str], *, kills_ms: Iterable[int] = ()
) -> list[int]:
    """The checks of the module docstring; the stored cycle timestamps, sorted."""
    sequences = [s for s, _ in got.receipts]
    assert sequences == list(range(1, got.acked + 1)), "receipts are not 1..acked_sequence"
    twice = [key for key, n in Counter(got.rows).items() if n > 1]
    assert twice == [], f"stored more than once: {twice[:5]}"
    assert sum(n for _, n in got.receipts) == len(got.rows), "a value was counted in two batches"
    if got.vendor == "postgresql":
        assert got.pg_rows == got.pg_distinct == len(got.rows)
    assert got.gaps == [], "the agent reported values it had to drop"
    rows = set(got.rows)
    missing = seen - rows
    assert not missing, (
        f"{len(missing)} committed values never reached the cloud: {sorted(missing)[:5]}"
    )
    cycles: dict[int, set[str]] = defaultdict(set)
    for point, ts in rows:
        cycles[ts].add(point)
    partial = {ts: sorted(points - names) for ts, names in cycles.items() if names != points}
    assert partial == {}, f"cycles with values missing: {list(partial.items())[:3]}"
    stamps = sorted(cycles)
    kills = sorted(kills_ms)
    holes = [
        (a, b)
        for a, b in itertools.pairwise(stamps)
        if b - a > HOLE_S * 1000 and not any(a < k < b for k in kills)
    ]
    assert holes == [], f"cycles missing between stored ones (ms): {holes[:5]}"
    return stamps


# -- 2: kill -9 at random moments while sending ------------------------------------------------


@pytest.mark.backend
def test_kill_9_twenty_times_while_sending_loses_nothing_and_duplicates_nothing(
    server: RunningServer, tmp_path: Path
) -> None:
    started = time.monotonic()
    device = make_agent_device(server, tmp_path, "k" + str(random.randrange(16**6)))  # noqa: S311
    config = write_config(tmp_path, server.base_url, server.ca_cert, device)
    logs = log_dir()
    rng = random.Random()  # noqa: S311 - kill moments, not secrets
    kills_ms: list[int] = []
    agent: AgentProcess | None = None
    with BufferWatch(tmp_path / "buffer.sqlite") as watch:
        try:
            for round_ in range(KILLS + 1):
                before = watch.current()
                agent = AgentProcess(config, logs / f"agent-{device.label}-{round_}.log")
                watch.wait_for(sent_in_this_run(before), 20, f"run {round_} sending")
                assert sockets_open_for_others(agent.psutil) == []
                if round_ == KILLS:
                    break
                time.sleep(rng.uniform(0.2, 1.2))
                assert agent.alive, agent.log.read_text()[-2000:]
                kills_ms.append(now_ms())
                agent.kill9()
            # The last run ends gracefully, once it is caught up.
            assert agent is not None
            watch.wait_for(lambda v: v.formed == 0 and v.pending < 20, 20, "caught up")
            assert agent.terminate() == 0, agent.log.read_text()[-2000:]
        finally:
            if agent is not None:
                agent.cleanup()
        time.sleep(0.1)  # one more look at what the stopped agent left behind
    asyncio.run(drain(server, device, tmp_path / "buffer.sqlite"))

    assert_buffer_clean(tmp_path / "buffer.sqlite")
    got = stored(server, device)
    stamps = assert_each_value_stored_once(
        got, watch.seen, point_names(device.instruments), kills_ms=kills_ms
    )
    assert len(watch.seen) > 300
    assert len(got.receipts) > KILLS  # every run sent
    assert stamps[0] < kills_ms[0] < kills_ms[-1] < stamps[-1]
    assert time.monotonic() - started < 90


# -- 1: the cloud goes away for a while -------------------------------------------------------

OUTAGE_S = 20.0


@pytest.mark.backend
def test_a_cloud_outage_while_the_plant_produces_loses_nothing_and_stores_each_value_once(
    tmp_path: Path,
) -> None:
    with restartable_cloud(tmp_path / "cloud-var") as cloud:
        server = cloud.start()
        device = make_agent_device(server, tmp_path, "o" + str(random.randrange(16**6)))  # noqa: S311
        config = write_config(tmp_path, server.base_url, server.ca_cert, device)
        agent = AgentProcess(config, log_dir() / f"agent-{device.label}.log")
        with BufferWatch(tmp_path / "buffer.sqlite") as watch:
            try:
                watch.wait_for(lambda v: v.next_sequence > 3 and v.formed == 0, 20, "online")
                cloud.stop()
                went_down = now_ms()
                time.sleep(OUTAGE_S)
                during = watch.current()
                # Kept producing and keeping: ~10 cycles a second, all of it still on disk.
                points = len(point_names(device.instruments))
                assert during.pending > OUTAGE_S * 10 * points * 0.8, during
                assert during.oldest_ts is not None
                assert during.oldest_ts <= went_down + 1000
                server = cloud.start()
                back = now_ms()
                # Everything from before the end of the outage leaves the buffer (full-jitter
                # backoff, capped at 60 s, decides when the agent tries again).
                watch.wait_for(
                    lambda v: v.formed == 0 and v.oldest_ts is not None and v.oldest_ts > back,
                    90,
                    "backlog drained",
                )
                assert agent.alive
                assert agent.terminate() == 0
            finally:
                agent.cleanup()
            time.sleep(0.1)
        asyncio.run(drain(server, device, tmp_path / "buffer.sqlite"))
        assert_buffer_clean(tmp_path / "buffer.sqlite")
        got = stored(server, device)

    stamps = assert_each_value_stored_once(got, watch.seen, point_names(device.instruments))
    assert stamps[0] < went_down
    assert stamps[-1] > back
    assert len([t for t in stamps if went_down < t < back]) > OUTAGE_S * 10 * 0.8
    events = [e["event"] for e in agent.events()]
    assert events.count("uplink.unreachable") == 1, events
    assert events.count("uplink.online") == 2, events  # at start and once after the outage


# -- 3: refused transports ---------------------------------------------------------------------


def test_an_http_url_is_refused_at_start_with_a_clear_message(
    tmp_path: Path, stub_pki: tuple[Path, Path, Path], stub_credential: Path
) -> None:
    with StubCloud(stub_pki[1], stub_pki[2], lambda _: Reply(200, ack_body(1))) as stub:
        config = tmp_path / "edge.toml"
        config.write_text(
            edge_toml(
                url=f"http://127.0.0.1:{stub.port}",
                ca=stub_pki[0],
                credential=stub_credential,
                buffer=tmp_path / "buffer.sqlite",
                instruments=instruments_for("h"),
            )
        )
        done = subprocess.run(
            [sys.executable, "-m", "fieldlink.cli", "edge", "run", "--config", str(config)],
            env=subprocess_env(),
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert done.returncode == 2
    assert "https://" in done.stderr
    assert "http is refused" in done.stderr
    assert "Traceback" not in done.stderr
    assert stub.received == []
    assert stub.handshakes_failed == 0  # not even a connection
    assert not (tmp_path / "buffer.sqlite").exists()


def _wrong_ca(directory: Path) -> tuple[Path, Path, Path]:
    trusted = pki_for(directory / "trusted", "127.0.0.1")
    other = pki_for(directory / "other", "127.0.0.1")
    return trusted[0], other[1], other[2]


def _expired(directory: Path) -> tuple[Path, Path, Path]:
    return pki_for(directory, "127.0.0.1", expired=True)


def _wrong_host(directory: Path) -> tuple[Path, Path, Path]:
    return pki_for(directory, "elsewhere.example")


TLS_FAULTS = {
    "wrong-ca": (_wrong_ca, "unable to get local issuer certificate"),
    "expired-certificate": (_expired, "certificate has expired"),
    "wrong-host-name": (_wrong_host, "IP address mismatch"),
}


@dataclass
class TlsRun:
    received: list[Received]
    handshakes_failed: int
    grown: int  # values added to the buffer while we watched
    seen: int
    depth: int
    dropped: int
    events: list[dict[str, Any]]
    text: str


def run_against_tls_fault(
    fault: str, tmp_path: Path, credential: Path, *, watch_s: float = 2.0
) -> TlsRun:
    make, _ = TLS_FAULTS[fault]
    ca, cert, key = make(tmp_path / "pki")
    with StubCloud(cert, key, lambda got: Reply(200, ack_body(got.batch["sequence"]))) as stub:
        config = tmp_path / "edge.toml"
        config.write_text(
            edge_toml(
                url=f"https://127.0.0.1:{stub.port}",
                ca=ca,
                credential=credential,
                buffer=tmp_path / "buffer.sqlite",
                instruments=instruments_for("t"),
                poll_ms=POLL_MS,
            )
        )
        agent = AgentProcess(config, log_dir() / f"agent-tls-{fault}-{stub.port}.log")
        try:
            with BufferWatch(tmp_path / "buffer.sqlite") as watch:
                # Both clients (telemetry and discovery) have tried and failed.
                watch.wait_for(lambda _: stub.handshakes_failed >= 2, 20, "tried to connect")
                first = watch.current()
                time.sleep(watch_s)
                later = watch.current()
            assert agent.alive, agent.log.read_text()[-2000:]
            assert sockets_open_for_others(agent.psutil) == []
            assert agent.terminate() == 0
        finally:
            agent.cleanup()
    # A formed batch holds at most what was pending; counting it as one value is the lower bound.
    grown = (later.pending + later.formed) - (first.pending + first.formed)
    with Buffer(tmp_path / "buffer.sqlite") as buffer:
        stats = buffer.stats()
    return TlsRun(
        list(stub.received),
        stub.handshakes_failed,
        grown,
        len(watch.seen),
        stats.depth,
        stats.dropped_total,
        agent.events(),
        agent.log.read_text(),
    )


@pytest.mark.parametrize("fault", list(TLS_FAULTS))
def test_a_tls_problem_sends_nothing_keeps_buffering_and_is_logged_once(
    fault: str, tmp_path: Path, stub_credential: Path
) -> None:
    run = run_against_tls_fault(fault, tmp_path, stub_credential)

    assert run.received == []  # not one request byte got past the handshake
    assert run.handshakes_failed >= 2
    # Still reading and keeping: ~20 cycles of 4 points in those 2 s, nothing dropped.
    assert run.grown > 40
    assert run.depth >= run.seen > 60
    assert run.dropped == 0
    # Sending waits for discovery, so the first request to hit the fault is the announcement:
    # the problem is logged once, naming the cause, by whichever part met it.
    problems = [e for e in run.events if e["event"] in {"uplink.unreachable", "announce_failed"}]
    assert len(problems) == 1, [e["event"] for e in run.events]
    assert TLS_FAULTS[fault][1] in problems[0]["error"]
    warnings = {e["event"] for e in run.events if e.get("level") in {"warning", "error"}}
    assert warnings <= {"uplink.unreachable", "announce_failed"}
    assert STUB_TOKEN not in run.text
    assert "Traceback" not in run.text


def test_discovery_logs_a_tls_problem_once_naming_it_not_on_every_retry(
    tmp_path: Path, stub_credential: Path
) -> None:
    # 4.5 s: discovery retries after 1-2 s, then 2-4 s later: at least two retries.
    run = run_against_tls_fault("wrong-ca", tmp_path, stub_credential, watch_s=4.5)
    failed = [e for e in run.events if e["event"] == "announce_failed"]
    assert len(failed) == 1, failed
    assert TLS_FAULTS["wrong-ca"][1] in failed[0]["error"]


# -- 4: nothing listens ------------------------------------------------------------------------


@pytest.mark.backend
def test_the_running_agent_listens_on_nothing_while_it_sends(
    server: RunningServer, tmp_path: Path
) -> None:
    device = make_agent_device(server, tmp_path, "l" + str(random.randrange(16**6)))  # noqa: S311
    config = write_config(tmp_path, server.base_url, server.ca_cert, device)
    agent = AgentProcess(config, log_dir() / f"agent-{device.label}.log")
    open_for_others: list[object] = []
    samples = sending = 0
    try:
        with BufferWatch(tmp_path / "buffer.sqlite") as watch:
            start = watch.current()
            watch.wait_for(sent_in_this_run(start), 20, "sending")
            deadline = time.monotonic() + 3.0
            while time.monotonic() < deadline:
                open_for_others += sockets_open_for_others(agent.psutil)
                sending += connections_to(agent.psutil, server.https_port) > 0
                samples += 1
                time.sleep(0.02)
            assert agent.alive
            acked = watch.current().next_sequence - start.next_sequence
        assert agent.terminate() == 0
    finally:
        agent.cleanup()
    assert open_for_others == []
    assert samples > 20
    assert sending > samples // 2  # it was connected to the cloud while we looked
    assert acked > 3
    assert stored(server, device).acked >= acked - 1
