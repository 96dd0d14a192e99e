"""Query benchmark: downsample 30 days of 1-second data (2,592,000 values) into 1000 buckets.

Side by side, on the same values, in one run, on this machine, 127.0.0.1 only:

  storage   Fieldlink ``telemetry.storage.buckets`` (the SQL the chart uses), in a worker
            process with Django set up on the server's database: SQLite, then PostgreSQL;
  api       the chart endpoint over HTTPS, ``GET /api/v1/orgs/{org}/points/{point}/series
            ?start&end&max_points=1000`` with a read-only API key, through a real
            ``fieldlink serve`` on the same database (``services.chart``: a raw-range probe
            of 1000 values, then ``storage.buckets``, then JSON);
  influx    InfluxDB 1.x (our own ``influxd``, HTTP on a free 127.0.0.1 port)
            ``SELECT min(v), max(v), mean(v), count(v) … GROUP BY time(2592000ms)``, JSON.

Each engine is loaded once, queried once untimed (warm-up), then ``--runs`` times interleaved
(influx, sqlite storage, sqlite api, postgresql storage, postgresql api, influx, …). The median
is printed with its ratio to InfluxDB's median. Every answer is checked against InfluxDB's:
1000 buckets, the same counts (adding up to every value), the same min/max/avg.

    .venv/bin/python bench/query.py [--quick] [--runs 5] [--no-postgres]

``--quick`` loads one day (86,400 values) instead of 30.
"""

# The worker imports Django only once its settings are chosen:
# ruff: noqa: PLC0415
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _telemetry_support import (
    DEFAULT_POSTGRES,
    ROOT,
    Influx,
    RunningServer,
    fieldlink_server,
    machine,
    remove,
)

BUCKETS = 1000
LOAD_CHUNK = 100_000
Bucket = tuple[int, float, float, float, int]  # (start_ms, min, max, avg, count)


class Data:
    """``days`` of one value a second, aligned so that InfluxDB's epoch-aligned ``GROUP BY
    time()`` buckets and Fieldlink's ``start``-aligned ones are the same buckets."""

    def __init__(self, days: int) -> None:
        self.days = days
        self.points = days * 86_400
        self.width_ms = days * 86_400_000 // BUCKETS
        self.start_ms = (1_767_225_600_000 // self.width_ms) * self.width_ms  # ~2026-01-01
        self.end_ms = self.start_ms + self.points * 1000

    @staticmethod
    def value_at(i: int) -> float:
        # Deterministic, not constant: a daily ramp plus a small saw tooth.
        return round(50.0 + 10.0 * ((i % 86_400) / 86_400.0) + (i % 7) * 0.1, 3)

    def samples(self) -> Iterator[tuple[int, float]]:
        for i in range(self.points):
            yield self.start_ms + i * 1000, self.value_at(i)


# -- worker: Fieldlink storage, in a process of its own with Django on the server's database -----


def worker(days: int) -> None:
    import django

    django.setup()
    from django.db import connection, transaction

    from fieldlink.accounts import services as accounts
    from fieldlink.accounts.access import Principal
    from fieldlink.accounts.models import ApiKeyScope, User
    from fieldlink.devices.models import Asset, MeasuringPoint, Site
    from fieldlink.telemetry import storage

    data = Data(days)
    user = User.objects.create_user(email="bench@plant.example")
    with transaction.atomic():
        org = accounts.create_organisation(
            Principal(user, "session"), name="Bench", region="eu-central"
        ).organisation
        key = accounts.create_api_key(user, name="bench", scope=ApiKeyScope.READ).secret
    site = Site.objects.create(organisation=org, name="Site")
    asset = Asset.objects.create(organisation=org, site=site, tag="FIT-1")
    point = MeasuringPoint.objects.create(organisation=org, asset=asset, key="flow", unit="m3/h")
    series = storage.ensure_series([point])[point.pk]
    began = time.perf_counter()
    chunk: list[storage.Row] = []
    for ts, value in data.samples():
        chunk.append((series, ts, value, 192))
        if len(chunk) >= LOAD_CHUNK:
            with transaction.atomic():
                storage.write_samples(chunk)
            chunk = []
    if chunk:
        with transaction.atomic():
            storage.write_samples(chunk)
    loaded = time.perf_counter() - began
    with connection.cursor() as cursor:
        # What autovacuum (PostgreSQL) would have done by the time anyone charts a month.
        cursor.execute("ANALYZE")
    hello = {"loaded_s": loaded, "org": str(org.pk), "point": str(point.pk), "key": key}
    print(json.dumps(hello), flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        began = time.perf_counter()
        rows = storage.buckets(series, data.start_ms, data.end_ms, BUCKETS)
        seconds = time.perf_counter() - began
        print(json.dumps({"s": seconds, "rows": rows}), flush=True)


class StorageEngine:
    """``storage.buckets`` timed inside the worker (no HTTP, no JSON in the time)."""

    def __init__(self, backend: str, server: RunningServer, days: int) -> None:
        self.name = f"{backend} storage.buckets"
        env = {**server.env, "DJANGO_SETTINGS_MODULE": "fieldlink.cloud.django_settings"}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", str(days)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = self._read()
        self.loaded_s: float = hello["loaded_s"]
        self.org, self.point, self.key = hello["org"], hello["point"], hello["key"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.name} worker stopped (exit {self.proc.wait()})")
        result: dict[str, Any] = json.loads(line)
        return result

    def run(self) -> tuple[float, list[Bucket]]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("run\n")
        self.proc.stdin.flush()
        answer = self._read()
        return answer["s"], [tuple(r) for r in answer["rows"]]  # type: ignore[misc]

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


class ApiEngine:
    """The chart endpoint over HTTPS, the server's CA verified; timed as the client sees it."""

    def __init__(self, backend: str, server: RunningServer, data: Data, loaded: StorageEngine):
        import httpx

        self.name = f"{backend} HTTPS api"
        self.data = data
        self.path = f"/api/v1/orgs/{loaded.org}/points/{loaded.point}/series"
        self.client = httpx.Client(
            base_url=server.base_url,
            verify=server.ssl_context(),
            timeout=120,
            headers={"Authorization": f"Bearer {loaded.key}"},
        )
        self.client.get("/healthz").raise_for_status()  # the TLS connection, not timed

    def run(self) -> tuple[float, list[Bucket]]:
        params = {
            "start": str(self.data.start_ms),
            "end": str(self.data.end_ms),
            "max_points": str(BUCKETS),
        }
        began = time.perf_counter()
        response = self.client.get(self.path, params=params)
        response.raise_for_status()
        body = response.json()
        seconds = time.perf_counter() - began
        if body["mode"] != "buckets":
            raise AssertionError(f"{self.name}: mode {body['mode']}")
        rows = [
            (t, lo, hi, avg, n)
            for t, lo, hi, avg, n in zip(
                body["t"], body["min"], body["max"], body["avg"], body["count"], strict=True
            )
            if n
        ]
        return seconds, rows

    def close(self) -> None:
        self.client.close()


class InfluxEngine:
    name = "influxdb 1.x GROUP BY time()"

    def __init__(self, influx: Influx, data: Data) -> None:
        self.influx = influx
        self.data = data
        began = time.perf_counter()
        lines: list[str] = []
        for ts, value in data.samples():
            lines.append(f"m,point=flow v={value!r} {ts}")
            if len(lines) >= 50_000:
                influx.write("\n".join(lines).encode())
                lines = []
        if lines:
            influx.write("\n".join(lines).encode())
        self.loaded_s = time.perf_counter() - began

    def run(self) -> tuple[float, list[Bucket]]:
        d = self.data
        query = (  # InfluxQL from our own integers, not input
            "SELECT min(v), max(v), mean(v), count(v) FROM m "  # noqa: S608
            f"WHERE time >= {d.start_ms}ms AND time < {d.end_ms}ms GROUP BY time({d.width_ms}ms)"
        )
        began = time.perf_counter()
        response = self.influx.http.get(
            "/query", params={"db": self.influx.database, "q": query, "epoch": "ms"}
        )
        response.raise_for_status()
        values = response.json()["results"][0]["series"][0]["values"]
        seconds = time.perf_counter() - began
        rows = [(int(t), lo, hi, avg, int(n)) for t, lo, hi, avg, n in values if n]
        return seconds, rows

    def close(self) -> None:
        pass


def same_answer(name: str, rows: list[Bucket], reference: list[Bucket], points: int) -> None:
    """The same 1000 buckets as InfluxDB's, every value counted once."""
    if len(rows) != BUCKETS or sum(r[4] for r in rows) != points:
        raise AssertionError(f"{name}: {len(rows)} buckets, {sum(r[4] for r in rows)} values")
    for mine, theirs in zip(rows, reference, strict=True):
        same = mine[0] == theirs[0] and mine[4] == theirs[4]
        close = all(
            math.isclose(a, b, rel_tol=1e-9) for a, b in zip(mine[1:4], theirs[1:4], strict=True)
        )
        if not (same and close):
            raise AssertionError(f"{name}: bucket {mine} differs from InfluxDB's {theirs}")


def measure(
    engines: list[Any],
    influx: Influx,
    servers: list[tuple[str, RunningServer]],
    data: Data,
    *,
    runs: int,
) -> dict[str, list[float]]:
    """Load every engine, check its answer, then time ``runs`` interleaved rounds."""
    engines.append(InfluxEngine(influx, data))
    loads = [(engines[0].name, engines[0].loaded_s)]
    for backend, server in servers:
        storage_engine = StorageEngine(backend, server, data.days)
        engines.append(storage_engine)
        engines.append(ApiEngine(backend, server, data, storage_engine))
        loads.append((f"fieldlink {backend}", storage_engine.loaded_s))
    for name, seconds in loads:
        print(f"  {name:32s} loaded in {seconds:6.1f} s", flush=True)
    _, reference = engines[0].run()  # warm-up, and the answer everyone must give
    for engine in engines:
        _, rows = engine.run()  # warm-up
        same_answer(engine.name, rows, reference, data.points)
    times: dict[str, list[float]] = {e.name: [] for e in engines}
    for _ in range(runs):
        for engine in engines:
            seconds, rows = engine.run()
            same_answer(engine.name, rows, reference, data.points)
            times[engine.name].append(seconds)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", type=int, metavar="DAYS", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="one day of data, not 30")
    parser.add_argument("--runs", type=int, default=5, help="timed queries per engine (≥ 5)")
    parser.add_argument("--postgres", default=DEFAULT_POSTGRES, help="PostgreSQL server URL")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker)
        return 0
    if args.runs < 5:
        parser.error("--runs must be at least 5")
    days = 1 if args.quick else 30
    data = Data(days)
    began = time.monotonic()
    print(f"machine: {machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(f"loading {data.points:,} values ({days} days at 1 s) into each engine …", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="fieldlink-bench-query-"))
    engines: list[Any] = []
    try:
        with Influx(tmp / "influx") as influx, _Servers(tmp, args) as servers:
            try:
                times = measure(engines, influx, servers, data, runs=args.runs)
            finally:
                for engine in engines:
                    engine.close()
    finally:
        remove(tmp)
    influx_median = statistics.median(times[InfluxEngine.name])
    print(f"\n{data.points:,} values -> {BUCKETS} buckets (min/max/avg/count), {args.runs} runs")
    print(f"{'engine':32s} {'median ms':>10s} {'runs ms':>34s} {'vs influx':>10s}")
    for name, runs in times.items():
        median = statistics.median(runs)
        shown = " ".join(f"{r * 1000:.0f}" for r in runs)
        print(f"{name:32s} {median * 1000:10.1f} {shown:>34s} {median / influx_median:9.2f}x")
    print("(vs influx: time / InfluxDB's time; below 1 is faster than InfluxDB)")
    print(f"\ntotal {time.monotonic() - began:.0f} s")
    return 0


class _Servers:
    """The ``fieldlink serve`` processes (SQLite, PostgreSQL) for the run, stopped together."""

    def __init__(self, tmp: Path, args: argparse.Namespace) -> None:
        self.tmp = tmp
        self.backends = [("sqlite", None)]
        if not args.no_postgres:
            self.backends.append(("postgresql", args.postgres))
        self.stack: Any = None

    def __enter__(self) -> list[tuple[str, RunningServer]]:
        import contextlib

        self.stack = contextlib.ExitStack()
        try:
            return [
                (name, self.stack.enter_context(fieldlink_server(self.tmp / f"var-{name}", url)))
                for name, url in self.backends
            ]
        except BaseException:
            self.stack.close()
            raise

    def __exit__(self, *_: object) -> None:
        self.stack.close()


if __name__ == "__main__":
    raise SystemExit(main())
