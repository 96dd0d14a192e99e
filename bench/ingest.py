"""Ingestion benchmark: values/s through the real HTTPS edge endpoint against its peers.

In one run, on this machine, 127.0.0.1 only, everything started here and stopped at the end:

  fieldlink   a real ``fieldlink serve`` (HTTPS with its local CA, throw-away var dir), first on
              SQLite, then on a throw-away PostgreSQL database. A plant of ``SERIES`` measuring
              points (10 assets of 100) served by ``DEVICES`` edge devices. Each batch holds one
              timestamp across all 1000 series (5 timestamps for a batch of 5000), as an edge
              device sends it; timestamps advance. httpx posts the batches (JSON, no gzip) with
              the server's CA verified, over 1 or 4 connections; every answer must be 200 with
              ``duplicate: false`` or the run stops.
  references  the same rows, the same batch size and number of connections, one commit per
              batch, measured interleaved with the Fieldlink runs (F R F R …, one round each):
              on SQLite raw ``sqlite3.executemany`` into a ``(ts, series)`` WITHOUT ROWID table
              (the reference: the layout Fieldlink's hot table appends to) and, for reading,
              into a ``(series, ts)`` one; on PostgreSQL psycopg binary COPY into a plain table;
              and on both InfluxDB 1.x (our own ``influxd``) line-protocol ``/write``,
              precision=ms, the same points and timestamps.

Each row of the table is the median over ``--rounds`` rounds; the ratio is the median of the
per-round ratios Fieldlink / peer. Stored counts are checked in every engine at the end.

    .venv/bin/python bench/ingest.py [--quick] [--rounds 3] [--values 200000] [--no-postgres]

Devices: a device's live budget is 600,000 values a minute (``telemetry.ingest.LIMITS``); the
plant has ``DEVICES`` devices serving the same points and the batches go round-robin over
them, so no device comes near its budget and none is refused (a refusal stops the run).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _telemetry_support import (
    DEFAULT_POSTGRES,
    Cpu,
    Influx,
    RunningServer,
    django_script,
    fieldlink_server,
    machine,
    postgres_database,
    remove,
)
from fieldlink.protocol.telemetry import Batch, Value, encode_batch

ASSETS = 10
POINTS_PER_ASSET = 100
SERIES = ASSETS * POINTS_PER_ASSET
DEVICES = 24
QUALITY = 192
TELEMETRY = "/edge/v1/telemetry"

Row = tuple[int, int, float, int]  # (series 1…SERIES, ts_ms, value, quality)

PLANT_SCRIPT = """
import json, sys
from django.db import transaction
from fieldlink.accounts.models import Organisation, Region
from fieldlink.devices import credentials
from fieldlink.devices.models import Asset, EdgeDevice, MeasuringPoint, Site

assets_n, points_n, devices_n = (int(x) for x in sys.stdin.read().split())
org = Organisation.objects.create(name="Bench plant", region=Region.EU_CENTRAL)
site = Site.objects.create(organisation=org, name="Site")
assets = [
    Asset.objects.create(organisation=org, site=site, tag=f"A{a:02d}") for a in range(assets_n)
]
MeasuringPoint.objects.bulk_create(
    MeasuringPoint(organisation=org, asset=asset, key=f"p{p:03d}", unit="bar")
    for asset in assets
    for p in range(points_n)
)
tokens = []
for d in range(devices_n):
    device = EdgeDevice.objects.create(organisation=org, name=f"edge {d}")
    device.assets.add(*assets)
    code = credentials.issue_enrollment_code(device)
    with transaction.atomic():
        tokens.append(credentials.enroll(code.secret).secret)
print(json.dumps({"tokens": tokens}))
"""


def point_names() -> list[str]:
    return [f"A{a:02d}/p{p:03d}" for a in range(ASSETS) for p in range(POINTS_PER_ASSET)]


# -- the workload ---------------------------------------------------------------------------------


class Clock:
    """Timestamps for ticks (one timestamp across all series); never reused in a run."""

    def __init__(self) -> None:
        # A week back: far enough from "now" for the 5-minutes-ahead rule, inside retention.
        self.next_ms = (int(time.time()) - 7 * 86_400) * 1000

    def ticks(self, n: int) -> list[int]:
        first = self.next_ms
        self.next_ms += n * 1000
        return [first + i * 1000 for i in range(n)]


def make_batches(clock: Clock, values: int, batch_size: int) -> list[list[Row]]:
    """``values`` rows in batches of ``batch_size``: each batch is whole ticks of every series."""
    per_batch = batch_size // SERIES
    batches = []
    for _ in range(values // batch_size):
        rows: list[Row] = []
        for ts in clock.ticks(per_batch):
            k = ts // 1000
            rows.extend(
                (s + 1, ts, ((k * 31 + s * 17) % 10_000) / 100.0, QUALITY) for s in range(SERIES)
            )
        batches.append(rows)
    return batches


def split(jobs: Sequence[Any], connections: int) -> list[list[Any]]:
    return [list(jobs[c::connections]) for c in range(connections)]


# -- a timed run over N connections ---------------------------------------------------------------


@dataclass
class Lane:
    """One connection's work: open it (untimed), send every job on it, close it."""

    open: Callable[[], Any]
    send: Callable[[Any, Any], None]
    close: Callable[[Any], None]
    jobs: list[Any]


def timed_lanes(lanes: list[Lane], cpu_pid: int | None) -> tuple[float, float]:
    """Wall seconds from all lanes ready to all done, and the CPU cores ``cpu_pid`` used."""
    ready = threading.Barrier(len(lanes) + 1)
    errors: list[BaseException] = []

    def run(lane: Lane) -> None:
        handle = None
        try:
            handle = lane.open()
        except Exception as exc:  # noqa: BLE001 -- re-raised by the main thread
            errors.append(exc)
            ready.abort()
            return
        try:
            ready.wait()
            for job in lane.jobs:
                lane.send(handle, job)
        except Exception as exc:  # noqa: BLE001 -- re-raised by the main thread
            errors.append(exc)
        finally:
            lane.close(handle)

    threads = [threading.Thread(target=run, args=(lane,), daemon=True) for lane in lanes]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a lane failed: reported below
        ready.wait()
    with Cpu(cpu_pid) as cpu:
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    return wall, cpu.cores


# -- the engines ----------------------------------------------------------------------------------


class Fieldlink:
    name = "fieldlink"

    def __init__(self, server: RunningServer, tokens: list[str]) -> None:
        self.server = server
        self.tokens = tokens
        self.sequence = dict.fromkeys(range(len(tokens)), 0)
        self.names = point_names()
        self.sent = 0

    def run(self, batches: list[list[Row]], connections: int) -> tuple[float, float]:
        names = self.names
        lanes = []
        for c, part in enumerate(split(batches, connections)):
            devices = list(range(len(self.tokens)))[c::connections]
            jobs = []
            for m, rows in enumerate(part):
                device = devices[m % len(devices)]
                self.sequence[device] += 1
                body = encode_batch(
                    Batch(
                        sequence=self.sequence[device],
                        values=[Value(names[s - 1], ts, v, q) for s, ts, v, q in rows],
                    )
                )
                jobs.append((self.tokens[device], body))
            lanes.append(Lane(self._open, self._send, _close, jobs))
        wall, cores = timed_lanes(lanes, self.server.process.pid)
        self.sent += sum(len(b) for b in batches)
        return wall, cores

    def _open(self) -> httpx.Client:
        client = httpx.Client(
            base_url=self.server.base_url, verify=self.server.ssl_context(), timeout=120
        )
        client.get("/healthz").raise_for_status()  # TLS handshake and connection: not timed
        return client

    @staticmethod
    def _send(client: httpx.Client, job: tuple[str, bytes]) -> None:
        token, body = job
        response = client.post(
            TELEMETRY,
            content=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        ack = response.json() if response.status_code == 200 else {}
        if response.status_code != 200 or ack.get("duplicate") or not ack.get("accepted"):
            raise RuntimeError(f"batch refused: {response.status_code} {response.text[:300]}")

    def stored(self) -> int:
        database = self.server.env.get("FIELDLINK_DATABASE_URL")
        if database:
            with psycopg.connect(database) as conn:
                row = conn.execute("SELECT count(*) FROM telemetry_sample").fetchone()
                return int(row[0]) if row else 0
        with sqlite3.connect(self.server.var_dir / "fieldlink.sqlite3") as conn:
            return sum(
                int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])  # noqa: S608
                for t in ("telemetry_sample", "telemetry_sample_hot")
            )


def _close(handle: Any) -> None:
    if handle is not None:
        handle.close()


class RawSqlite:
    """``executemany`` into a bare WITHOUT ROWID table, the pragmas Fieldlink's SQLite uses."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.table = "raw_" + key.replace(", ", "_")
        self.name = f"sqlite3 ({key})"
        with sqlite3.connect(path) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} (series INTEGER NOT NULL, "
                "ts INTEGER NOT NULL, value REAL NOT NULL, quality INTEGER NOT NULL, "
                f"PRIMARY KEY ({key})) WITHOUT ROWID"
            )
        self.sent = 0

    def run(self, batches: list[list[Row]], connections: int) -> tuple[float, float]:
        lanes = [Lane(self._open, self._send, _close, p) for p in split(batches, connections)]
        self.sent += sum(len(b) for b in batches)
        return timed_lanes(lanes, None)

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=20, isolation_level=None)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _send(self, conn: sqlite3.Connection, rows: list[Row]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            f"INSERT INTO {self.table} (series, ts, value, quality) VALUES (?, ?, ?, ?)",  # noqa: S608
            rows,
        )
        conn.execute("COMMIT")

    def stored(self) -> int:
        with sqlite3.connect(self.path) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {self.table}").fetchone()[0])  # noqa: S608


class RawCopy:
    """psycopg binary COPY into a plain table (no index, no partitions), a commit per batch."""

    name = "psycopg COPY"

    def __init__(self, url: str) -> None:
        self.url = url
        with psycopg.connect(url) as conn:
            conn.execute(
                "CREATE TABLE raw_copy (series int4 NOT NULL, ts int8 NOT NULL, "
                "value float8 NOT NULL, quality int2 NOT NULL)"
            )
        self.sent = 0

    def run(self, batches: list[list[Row]], connections: int) -> tuple[float, float]:
        lanes = [Lane(self._open, self._send, _close, p) for p in split(batches, connections)]
        self.sent += sum(len(b) for b in batches)
        return timed_lanes(lanes, None)

    def _open(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.url)

    @staticmethod
    def _send(conn: psycopg.Connection[Any], rows: list[Row]) -> None:
        with (
            conn.cursor() as cursor,
            cursor.copy(
                "COPY raw_copy (series, ts, value, quality) FROM STDIN (FORMAT BINARY)"
            ) as copy,
        ):
            copy.set_types(["int4", "int8", "float8", "int2"])
            for row in rows:
                copy.write_row(row)
        conn.commit()

    def stored(self) -> int:
        with psycopg.connect(self.url) as conn:
            row = conn.execute("SELECT count(*) FROM raw_copy").fetchone()
            return int(row[0]) if row else 0


class InfluxWrites:
    """Line protocol over HTTP ``/write`` (precision=ms): ``m,point=A00/p000 v=…,q=192i <ts>``."""

    name = "influxdb 1.x"

    def __init__(self, influx: Influx) -> None:
        self.influx = influx
        self.names = point_names()
        self.sent = 0

    def run(self, batches: list[list[Row]], connections: int) -> tuple[float, float]:
        names = self.names
        bodies = [
            "\n".join(
                f"m,point={names[s - 1]} v={v!r},q={q}i {ts}" for s, ts, v, q in rows
            ).encode()
            for rows in batches
        ]
        lanes = [Lane(self._open, self._send, _close, p) for p in split(bodies, connections)]
        self.sent += sum(len(b) for b in batches)
        return timed_lanes(lanes, self.influx.proc.pid)

    def _open(self) -> httpx.Client:
        client = httpx.Client(base_url=self.influx.url, timeout=120)
        client.get("/ping")
        return client

    def _send(self, client: httpx.Client, body: bytes) -> None:
        self.influx.write(body, client)

    def stored(self) -> int:
        return self.influx.count("m", "v")


# -- measuring and printing -----------------------------------------------------------------------


@dataclass
class Result:
    backend: str
    batch: int
    connections: int
    engine: str
    rates: list[float] = field(default_factory=list)
    cores: list[float] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # fieldlink / this, per round


def measure(
    backend: str,
    fieldlink: Fieldlink,
    peers: list[Any],
    clock: Clock,
    *,
    values: int,
    rounds: int,
    configs: list[tuple[int, int]],
) -> list[Result]:
    results = []
    for batch_size, connections in configs:
        mine = Result(backend, batch_size, connections, fieldlink.name)
        theirs = [Result(backend, batch_size, connections, p.name) for p in peers]
        for _ in range(rounds):
            batches = make_batches(clock, values, batch_size)
            n = sum(len(b) for b in batches)
            wall, cores = fieldlink.run(batches, connections)
            mine.rates.append(n / wall)
            mine.cores.append(cores)
            for peer, result in zip(peers, theirs, strict=True):
                wall, cores = peer.run(batches, connections)
                result.rates.append(n / wall)
                result.cores.append(cores)
                result.ratios.append(mine.rates[-1] / result.rates[-1])
        print(
            f"  {backend:10s} batch {batch_size:5d} x {connections} conn: fieldlink "
            f"{statistics.median(mine.rates):9,.0f} values/s; "
            + "; ".join(
                f"{r.engine} {statistics.median(r.rates):9,.0f} "
                f"({statistics.median(r.ratios):.2f}x)"
                for r in theirs
            ),
            flush=True,
        )
        results += [mine, *theirs]
    return results


def check_counts(engines: list[Any]) -> None:
    for engine in engines:
        stored = engine.stored()
        if stored != engine.sent:
            raise AssertionError(f"{engine.name}: sent {engine.sent} values, {stored} stored")
        print(f"  {engine.name}: {stored:,} values stored = sent", flush=True)


def print_table(results: list[Result], rounds: int) -> None:
    print(f"\nvalues/s, median of {rounds} rounds; ratio = median of per-round fieldlink/peer")
    print(
        f"{'backend':10s} {'batch':>5s} {'conn':>4s}  {'engine':24s} {'median/s':>10s} "
        f"{'min/s':>10s} {'max/s':>10s} {'fieldlink ÷':>11s} {'cores':>5s}"
    )
    for r in results:
        ratio = f"{statistics.median(r.ratios):.2f}x" if r.ratios else "—"
        cores = statistics.median(r.cores)
        shown = "" if math.isnan(cores) else f"{cores:.2f}"
        print(
            f"{r.backend:10s} {r.batch:5d} {r.connections:4d}  {r.engine:24s} "
            f"{statistics.median(r.rates):10,.0f} {min(r.rates):10,.0f} {max(r.rates):10,.0f} "
            f"{ratio:>11s} {shown:>5s}"
        )
    print("cores: CPU of the fieldlink server process / of influxd during the timed window")


def backend_phase(
    backend: str,
    tmp: Path,
    *,
    influx_peer: InfluxWrites,
    clock: Clock,
    args: argparse.Namespace,
    configs: list[tuple[int, int]],
) -> list[Result]:
    postgres = args.postgres if backend == "postgresql" else None
    print(f"\n{backend}: starting fieldlink serve …", flush=True)
    with fieldlink_server(tmp / f"var-{backend}", postgres) as server:
        plant = django_script(server, PLANT_SCRIPT, f"{ASSETS} {POINTS_PER_ASSET} {DEVICES}")
        fieldlink = Fieldlink(server, plant["tokens"])
        if postgres:
            with postgres_database(postgres, "fieldlink_bench") as url:
                peers: list[Any] = [RawCopy(url), influx_peer]
                results = measure(
                    backend,
                    fieldlink,
                    peers,
                    clock,
                    values=args.values,
                    rounds=args.rounds,
                    configs=configs,
                )
                check_counts([fieldlink, peers[0]])
        else:
            raw = tmp / "raw.sqlite3"
            peers = [RawSqlite(raw, "ts, series"), RawSqlite(raw, "series, ts"), influx_peer]
            results = measure(
                backend,
                fieldlink,
                peers,
                clock,
                values=args.values,
                rounds=args.rounds,
                configs=configs,
            )
            check_counts([fieldlink, *peers[:2]])
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds each")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (≥ 3)")
    parser.add_argument("--values", type=int, default=100_000, help="values per timed run")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="PostgreSQL server URL")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.values = 20_000
    if args.rounds < 3:
        parser.error("--rounds must be at least 3")
    if args.values % 20_000:
        parser.error("--values must be a multiple of 20000 (5000-value batches x 4 connections)")
    configs = [(1000, 1), (1000, 4), (5000, 1), (5000, 4)]
    began = time.monotonic()
    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"{SERIES} series, {DEVICES} devices, {args.values:,} values per run, JSON, no gzip")
    tmp = Path(tempfile.mkdtemp(prefix="fieldlink-bench-ingest-"))
    results: list[Result] = []
    influx: Influx | None = None
    try:
        influx = Influx(tmp / "influx")
        influx_peer = InfluxWrites(influx)
        clock = Clock()
        backends = ["sqlite"] if args.no_postgres else ["sqlite", "postgresql"]
        for backend in backends:
            results += backend_phase(
                backend, tmp, influx_peer=influx_peer, clock=clock, args=args, configs=configs
            )
        check_counts([influx_peer])
    finally:
        if influx is not None:
            influx.close()
        remove(tmp)
    print_table(results, args.rounds)
    print(f"\ntotal {time.monotonic() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
