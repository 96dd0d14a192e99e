"""Edge agent benchmark: backlog drain to the real cloud, agent footprint, Modbus poll cycle.

Everything runs on this machine, on 127.0.0.1 only, with the project's real components:

  drain   a real ``fieldlink serve`` (HTTPS, throw-away var dir, SQLite file; ``--postgres`` also
          PostgreSQL), a device serving ``--series`` points in its database, and a ``Buffer``
          pre-filled with ``--values`` backlog values (one timestamp across every series per
          step, so a batch of 10,000 holds a few timestamps of many series). The real ``Uplink``
          drains it: buffer → gzip → HTTPS → decode → cloud commit → ack → delete, until the
          buffer is empty; the cloud's stored count is checked afterwards. Reference, in the same
          run and interleaved (raw, drain, raw, drain, …): raw ``sqlite3`` ``executemany`` of the
          same rows into a bare table in one transaction (WAL, synchronous=FULL). Median ratio.
  agent   ``fieldlink edge run`` as its own process, reading 10,000 float32 points from 10
          Modbus TCP devices (1,000 points each, ``poll_ms`` 10,000: 1,000 values/s) and sending
          them to the same cloud. After a warm-up, its RSS and CPU are sampled with psutil every
          second; median and max are printed, with the values the cloud received meanwhile.
  modbus  one poll cycle of a 992-register map (8 requests of 124 registers, 496 float32
          points) with the agent's ``ModbusDriver.read()`` against the raw pymodbus
          ``AsyncModbusTcpClient`` reading the same ranges, interleaved A B A B; then the
          ``Poller`` reading 4 devices at once against 1 (back-to-back cycles), without and with
          a device answer time (``--device-latency-ms``, as a real device or gateway takes).
          Every Modbus device is its own process.

    .venv/bin/python bench/edge.py [--quick] [--postgres] [--only drain,agent,modbus]

``--quick`` (50,000 values, shorter windows) finishes in under a minute; the full run in under
ten. Every phase is bounded by its count or its time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import secrets
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pymodbus.client import AsyncModbusTcpClient  # noqa: E402
from tests.support.server import RunningServer, run_server  # noqa: E402 -- needs the path above

from _edge_support import cloud_counts, make_device, modbus_devices  # noqa: E402
from fieldlink.edge.buffer import Buffer  # noqa: E402
from fieldlink.edge.config import ModbusSource  # noqa: E402
from fieldlink.edge.drivers.modbus import ModbusDriver, ReadRequest  # noqa: E402
from fieldlink.edge.enroll import write_credential  # noqa: E402
from fieldlink.edge.model import HealthReading, Reading  # noqa: E402
from fieldlink.edge.poller import Poller  # noqa: E402
from fieldlink.edge.uplink import Uplink  # noqa: E402
from fieldlink.protocol.telemetry import Ack  # noqa: E402

PG_URL = "postgresql://postgres@127.0.0.1:5432/fieldlink"
DAY_MS = 86_400_000


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, {platform.system()} {platform.release()}"
    )


@contextmanager
def cloud(directory: Path, *, postgres: bool) -> Iterator[RunningServer]:
    """A real ``fieldlink serve`` on SQLite (its var dir) or a throw-away PostgreSQL database."""
    saved = os.environ.get("FIELDLINK_DATABASE_URL")
    if postgres:
        os.environ["FIELDLINK_DATABASE_URL"] = saved or PG_URL
    else:
        os.environ.pop("FIELDLINK_DATABASE_URL", None)
    try:
        with run_server(directory / "var") as server:
            yield server
    finally:
        if saved is None:
            os.environ.pop("FIELDLINK_DATABASE_URL", None)
        else:
            os.environ["FIELDLINK_DATABASE_URL"] = saved


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# -- drain ---------------------------------------------------------------------------------------


def backlog_rows(points: Sequence[str], n: int, start_ms: int) -> list[Reading]:
    width = len(points)
    return [
        Reading(points[i % width], start_ms + (i // width) * 1000, 20.0 + (i % 997) * 0.01, 192)
        for i in range(n)
    ]


def raw_insert(path: Path, rows: Sequence[Reading]) -> float:
    started = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, point TEXT, ts INTEGER, value REAL, quality INT)"
    )
    db.execute("BEGIN")
    db.executemany("INSERT INTO t (point, ts, value, quality) VALUES (?, ?, ?, ?)", rows)
    db.execute("COMMIT")
    db.close()
    return len(rows) / (time.perf_counter() - started)


class TimedBuffer(Buffer):
    """The real buffer, with the time its calls take on the uplink's path added up."""

    forming = 0.0
    acking = 0.0

    def next_batch(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return super().next_batch(*args, **kwargs)
        finally:
            self.forming += time.perf_counter() - started

    def ack(self, ack: Ack, sequence: int) -> int:
        started = time.perf_counter()
        try:
            return super().ack(ack, sequence)
        finally:
            self.acking += time.perf_counter() - started


@dataclass
class Drain:
    values: int
    seconds: float
    batches: int
    requests: int
    forming: float
    acking: float
    agent_cpu: float
    server_cpu: float
    rate_limited: int

    @property
    def rate(self) -> float:
        return self.values / self.seconds


async def _drain(
    server: RunningServer, credential: Path, buffer: TimedBuffer, deadline: float
) -> tuple[float, int, int, int]:
    done = asyncio.Event()
    acks = 0
    limited = 0

    def on_ack(_: Ack) -> None:
        nonlocal acks
        acks += 1
        if buffer.stats().depth == 0:
            done.set()

    uplink = Uplink(
        server.base_url,
        ca_file=server.ca_cert,
        credential_file=credential,
        buffer=buffer,
        software_version="bench",
        on_ack=on_ack,
    )
    started = time.perf_counter()
    task = asyncio.create_task(uplink.run())
    try:
        while not done.is_set():
            if task.done():
                task.result()
                raise RuntimeError("the uplink stopped before the buffer was empty")
            if uplink.status.state == "rate_limited":
                limited += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"drain not finished in time: {uplink.status}")
            with_timeout = asyncio.wait_for(done.wait(), 0.5)
            try:
                await with_timeout
            except TimeoutError:
                continue
        seconds = time.perf_counter() - started
    finally:
        uplink.stop()
        await task
        await uplink.aclose()
    return seconds, acks, uplink.status.requests, limited


def drain_once(
    server: RunningServer, buffer: TimedBuffer, credential: Path, deadline: float
) -> Drain:
    """Drain what ``buffer`` holds into the cloud; the buffer is empty afterwards."""
    values = buffer.stats().depth
    buffer.forming = buffer.acking = 0.0
    agent0, server0 = cpu_seconds(os.getpid()), cpu_seconds(server.process.pid)
    seconds, batches, requests, limited = asyncio.run(_drain(server, credential, buffer, deadline))
    return Drain(
        values,
        seconds,
        batches,
        requests,
        buffer.forming,
        buffer.acking,
        cpu_seconds(os.getpid()) - agent0,
        cpu_seconds(server.process.pid) - server0,
        limited,
    )


def bench_drain(
    server: RunningServer, directory: Path, args: argparse.Namespace, label: str
) -> None:
    assets = max(1, args.series // 200)
    device = make_device(server.env, "D" + secrets.token_hex(3).upper(), assets, 200)
    points = device.points()[: args.series]
    credential = directory / f"credential-{device.id}"
    write_credential(credential, device.token)
    deadline = time.monotonic() + args.drain_deadline
    print(
        f"\n[drain, {label}] {args.values:,} backlog values over {len(points):,} series, "
        f"{args.pairs} pairs (raw sqlite3, drain) interleaved"
    )
    ratios: list[float] = []
    drains: list[Drain] = []
    before = cloud_counts(server.env, device)
    # One buffer file for every pair, as on a device: its sequence counter carries on.
    with TimedBuffer(directory / f"buffer-{label}.sqlite") as buffer:
        for pair in range(args.pairs):
            # Each pair sends other timestamps, so the cloud stores new samples every time.
            start_ms = time.time_ns() // 1_000_000 - (pair + 2) * DAY_MS
            rows = backlog_rows(points, args.values, start_ms)
            raw_path = directory / f"raw-{pair}.sqlite"
            raw = raw_insert(raw_path, rows)
            for suffix in ("", "-wal", "-shm"):
                raw_path.with_name(raw_path.name + suffix).unlink(missing_ok=True)
            buffer.append(rows)
            del rows
            drained = drain_once(server, buffer, credential, deadline)
            drains.append(drained)
            ratios.append(drained.rate / raw)
            print(
                f"  pair {pair + 1}: raw {raw:>10,.0f} values/s | drain {drained.rate:>8,.0f} "
                f"values/s ({drained.seconds:5.1f} s, {drained.batches} batches, "
                f"{drained.requests} requests) | drain/raw {drained.rate / raw:6.1%}"
            )
            if drained.rate_limited:
                print("  !! the uplink was rate limited by the cloud during this drain")
    after = cloud_counts(server.env, device)
    sent = sum(d.values for d in drains)
    stored = after["values"] - before["values"]
    print(
        f"  the cloud stored {stored:,} of {sent:,} values in {after['batches']} batches "
        f"(acknowledged up to sequence {after['acked']})"
        + ("" if stored == sent else "   !! values missing")
    )
    last = drains[-1]
    per_batch = last.seconds / max(1, last.batches) * 1000
    print(
        f"  per batch (last pair): {per_batch:.1f} ms wall; agent: form "
        f"{last.forming / last.batches * 1000:.1f} ms, ack {last.acking / last.batches * 1000:.1f}"
        f" ms; CPU over the drain: agent {last.agent_cpu / last.seconds:.2f} cores "
        f"({last.agent_cpu / last.batches * 1000:.0f} ms per batch), server "
        f"{last.server_cpu / last.seconds:.2f} cores ({last.server_cpu / last.batches * 1000:.0f}"
        " ms per batch)"
    )
    print(f"  median drain/raw {median(ratios):6.1%}   (aim: >= 30 %)")


# -- the agent as a process -----------------------------------------------------------------------


def agent_toml(
    server: RunningServer, directory: Path, credential: Path, ports: Sequence[int], tags: list[str]
) -> str:
    lines = [
        "[cloud]",
        f'url = "{server.base_url}"',
        f'ca = "{server.ca_cert}"',
        f'credential_file = "{credential}"',
        "[buffer]",
        f'path = "{directory / "agent-buffer.sqlite"}"',
        "max_mb = 512",
    ]
    per_source = len(tags) // len(ports)
    for s, port in enumerate(ports):
        lines += [
            "[[sources]]",
            f'name = "modbus-{s}"',
            'kind = "modbus"',
            'host = "127.0.0.1"',
            f"port = {port}",
            "poll_ms = 10000",
        ]
        for i, tag in enumerate(tags[s * per_source : (s + 1) * per_source]):
            lines += ["[[sources.instruments]]", f'tag = "{tag}"']
            for k in range(200):
                register = (i * 200 + k) * 2
                lines += [
                    "[[sources.instruments.points]]",
                    f'key = "p{k:03d}"',
                    'unit = "m3/h"',
                    f"register = {register}",
                ]
    return "\n".join(lines) + "\n"


# What ``fieldlink edge run`` has loaded before its first poll: its imports, then its config.
_FLOOR = """
import sys
from pathlib import Path
import psutil
def rss():
    return psutil.Process().memory_info().rss / 1e6
bare = rss()
import fieldlink.cli.main, fieldlink.edge.agent, fieldlink.edge.drivers.modbus
imported = rss()
from fieldlink.edge.config import load_config
config = load_config(Path(sys.argv[1]))
heavy = ",".join(m for m in ("rich", "pygments", "cryptography", "typer") if m in sys.modules)
print(f"{bare:.1f} {imported:.1f} {rss():.1f} {len(sys.modules)} {heavy}")
"""


def import_floor(config: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _FLOOR, str(config)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    bare, imported, configured, modules, heavy = done.stdout.split()
    return (
        f"bare interpreter {bare} MB; after the agent's imports {imported} MB ({modules} "
        f"modules, including {heavy}); after loading this edge.toml {configured} MB"
    )


def bench_agent(server: RunningServer, directory: Path, args: argparse.Namespace) -> None:
    sources, points = 10, 10_000
    per_source = points // sources
    device = make_device(server.env, "A" + secrets.token_hex(3).upper(), points // 200, 200)
    credential = directory / "agent-credential"
    write_credential(credential, device.token)
    print(
        f"\n[agent] fieldlink edge run: {points:,} points on {sources} Modbus devices "
        f"(poll_ms 10000: {points / 10:,.0f} values/s), warm-up {args.warmup:.0f} s, "
        f"sampled {args.sample:.0f} s"
    )
    with modbus_devices(sources, per_source * 2, per_process=sources) as ports:
        config = directory / "edge.toml"
        config.write_text(agent_toml(server, directory, credential, ports, device.tags))
        log = (directory / "agent.log").open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FIELDLINK_")}
        agent = subprocess.Popen(
            [sys.executable, "-m", "fieldlink.cli", "edge", "run", "--config", str(config)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            process = psutil.Process(agent.pid)
            time.sleep(args.warmup)
            if agent.poll() is not None:
                raise RuntimeError(f"the agent exited: {(directory / 'agent.log').read_text()}")
            counted = cloud_counts(server.env, device)
            rss: list[float] = []
            cpu: list[float] = []
            process.cpu_percent(None)
            cpu0, wall0 = cpu_seconds(agent.pid), time.monotonic()
            while time.monotonic() - wall0 < args.sample:
                time.sleep(1.0)
                cpu.append(process.cpu_percent(None))
                rss.append(process.memory_info().rss / 1e6)
            mean_cpu = (cpu_seconds(agent.pid) - cpu0) / (time.monotonic() - wall0) * 100
            uss = process.memory_full_info().uss / 1e6
            after = cloud_counts(server.env, device)
            window = time.monotonic() - wall0
        finally:
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(timeout=30)
            log.close()
    with sqlite3.connect(directory / "agent-buffer.sqlite") as db:
        left = {
            table: db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # noqa: S608
            for table in ("pending", "batches", "quarantine")
        }
    received = after["values"] - counted["values"]
    print(
        f"  RSS: median {median(rss):.1f} MB, max {max(rss):.1f} MB (USS at the end "
        f"{uss:.1f} MB)   (aim: <= 60 MB)"
    )
    print(
        f"  CPU: median {median(cpu):.1f} %, max {max(cpu):.1f} % of one core "
        f"(1 s samples); mean over the window {mean_cpu:.1f} %"
    )
    print(
        f"  the cloud received {received:,} values in {window:.0f} s "
        f"({received / window:,.0f} values/s; {after['batches'] - counted['batches']} batches); "
        f"total {after['values']:,}"
    )
    print(f"  agent exit code {code} after SIGTERM; left in its buffer: {left}")
    print(f"  RSS floor (a process that only imports and loads the config): {import_floor(config)}")


# -- Modbus ----------------------------------------------------------------------------------------


def modbus_source(port: int, points: int, *, name: str = "bench", poll_ms: int = 1000) -> Any:
    instruments = [
        {
            "tag": f"{name.upper()}-{first // 100:03d}",
            "points": [
                {"key": f"p{k:03d}", "unit": "m3/h", "register": (first + k) * 2}
                for k in range(min(100, points - first))
            ],
        }
        for first in range(0, points, 100)
    ]
    source = msgspec.convert(
        {
            "name": name,
            "kind": "modbus",
            "host": "127.0.0.1",
            "port": port,
            "instruments": instruments,
        },
        ModbusSource,
    )
    # Below the configuration's 100 ms floor (validated when an edge.toml is read, not here):
    # cycles back to back, so the figure is what the poller can do, not what it is asked to do.
    return msgspec.structs.replace(source, poll_ms=poll_ms)


async def driver_cycles(driver: ModbusDriver, cycles: int) -> float:
    started = time.perf_counter()
    for _ in range(cycles):
        await driver.read()
    return cycles / (time.perf_counter() - started)


async def raw_cycles(client: AsyncModbusTcpClient, plan: list[ReadRequest], cycles: int) -> float:
    started = time.perf_counter()
    for _ in range(cycles):
        for request in plan:
            response = await client.read_holding_registers(
                request.start, count=request.length, device_id=1
            )
            assert len(response.registers) == request.length
    return cycles / (time.perf_counter() - started)


async def driver_vs_raw(port: int, points: int, cycles: int, pairs: int) -> None:
    driver = ModbusDriver(modbus_source(port, points))
    plan = driver.plan
    await driver.connect()
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=0, reconnect_delay=0)
    await client.connect()
    try:
        readings, _ = await driver.read()
        assert len(readings) == points
        assert all(r.quality == 192 for r in readings)
        await raw_cycles(client, plan, 3)  # warm both connections
        print(
            f"\n[modbus] one poll cycle: {points} float32 points, {len(plan)} requests of "
            f"{'/'.join(str(r.length) for r in plan)} registers, {cycles} cycles per run"
        )
        ratios = []
        for pair in range(pairs):
            raw = await raw_cycles(client, plan, cycles)
            ours = await driver_cycles(driver, cycles)
            ratios.append(ours / raw)
            print(
                f"  pair {pair + 1}: raw pymodbus {1000 / raw:6.2f} ms/cycle | ModbusDriver.read "
                f"{1000 / ours:6.2f} ms/cycle | driver/raw throughput {ours / raw:6.1%}"
            )
        print(f"  median driver/raw {median(ratios):6.1%}   (aim: >= 50 %)")
    finally:
        await driver.close()
        client.close()


async def poller_throughput(sources: list[Any], seconds: float) -> float:
    got = 0

    def count(readings: list[Reading], _: list[HealthReading]) -> None:
        nonlocal got
        got += len(readings)

    poller = Poller(sources, count)
    task = asyncio.create_task(poller.run())
    await asyncio.sleep(0.3)  # connected and past the first cycle
    got = 0
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    rate = got / (time.perf_counter() - started)
    poller.stop()
    await task
    return rate


def poller_scaling(points: int, seconds: float, pairs: int, latency_ms: float) -> None:
    with modbus_devices(4, points * 2, latency_ms) as ports:
        sources = [
            modbus_source(port, points, name=f"dev{i}", poll_ms=1) for i, port in enumerate(ports)
        ]
        ratios = []
        print(
            f"  device answer time {latency_ms:g} ms "
            f"({len(ModbusDriver(sources[0]).plan)} requests per cycle):"
        )
        for pair in range(pairs):
            one = asyncio.run(poller_throughput(sources[:1], seconds))
            four = asyncio.run(poller_throughput(sources, seconds))
            ratios.append(four / one)
            print(
                f"    pair {pair + 1}: 1 device {one:>9,.0f} values/s | 4 devices "
                f"{four:>9,.0f} values/s | 4/1 {four / one:4.2f}x"
            )
        print(f"    median 4/1 {median(ratios):4.2f}x   (aim: >= 3x)")


def bench_modbus(args: argparse.Namespace) -> None:
    points = 496  # 992 registers: 8 requests of 124 (a float32 never straddles two requests)
    with modbus_devices(1, points * 2) as ports:
        asyncio.run(driver_vs_raw(ports[0], points, args.cycles, args.pairs))
    print(f"\n[modbus] the Poller, 4 devices at once vs 1, {args.poll_seconds:g} s per run")
    for latency in (0.0, args.device_latency_ms):
        poller_scaling(points, args.poll_seconds, args.pairs, latency)


# -- main -----------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run, under a minute")
    parser.add_argument("--postgres", action="store_true", help="also drain into PostgreSQL")
    parser.add_argument("--only", default="drain,agent,modbus", help="comma-separated phases")
    parser.add_argument("--values", type=int, help="backlog values per drain (1,000,000)")
    parser.add_argument("--series", type=int, default=1000, help="points the backlog spans")
    parser.add_argument("--pairs", type=int, help="interleaved A/B pairs (3)")
    parser.add_argument("--warmup", type=float, help="agent warm-up seconds (15)")
    parser.add_argument("--sample", type=float, help="agent sampling seconds (30)")
    parser.add_argument("--cycles", type=int, help="Modbus cycles per run (200)")
    parser.add_argument("--poll-seconds", type=float, help="Poller run length (3)")
    parser.add_argument("--device-latency-ms", type=float, default=10.0)
    parser.add_argument("--drain-deadline", type=float, default=420.0, help="seconds, all drains")
    args = parser.parse_args()
    quick = args.quick
    defaults = {
        "values": 50_000 if quick else 1_000_000,
        "pairs": 3,
        "warmup": 6.0 if quick else 15.0,
        "sample": 10.0 if quick else 30.0,
        "cycles": 40 if quick else 200,
        "poll_seconds": 1.0 if quick else 3.0,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    phases = set(args.only.split(","))
    started = time.monotonic()
    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")

    with tempfile.TemporaryDirectory(prefix="fieldlink-edge-bench-") as tmp:
        directory = Path(tmp)
        os.environ.setdefault("FIELDLINK_TEST_LOG_DIR", tmp)
        if phases & {"drain", "agent"}:
            with cloud(directory / "sqlite", postgres=False) as server:
                print(f"cloud: {server.base_url} (pid {server.process.pid}), SQLite")
                if "drain" in phases:
                    bench_drain(server, directory, args, "SQLite")
                if "agent" in phases:
                    bench_agent(server, directory, args)
        if "drain" in phases and args.postgres:
            with cloud(directory / "pg", postgres=True) as server:
                print(f"\ncloud: {server.base_url} (pid {server.process.pid}), PostgreSQL")
                bench_drain(server, directory, args, "PostgreSQL")
        if "modbus" in phases:
            bench_modbus(args)
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
