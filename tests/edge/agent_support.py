"""Helpers for the agent-level fault tests (``test_agent.py``): a cloud that can be stopped and
started again on the same ports and database, the agent as a real ``fieldlink edge run``
process, a watcher that records every value the agent's buffer held, and the cloud's view of
what it stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import psutil

from fieldlink.edge.enroll import write_credential
from fieldlink.edge.plant.catalog import MODELS
from fieldlink.protocol.telemetry import Batch
from tests.edge.conftest import run_in_cloud
from tests.plugins.log_canary import register_canary
from tests.support.server import (
    RunningServer,
    _wait_ready,
    free_port,
    postgres_database_for_server,
    subprocess_env,
)

Key = tuple[str, int]  # (point, ts): one value of one poll cycle

# -- the cloud ----------------------------------------------------------------------------------


class Cloud:
    """``fieldlink serve`` on fixed ports, var dir and database, so it can go down and come back.

    The agent pins the CA in ``var/tls``, which the first start creates and later starts reuse.
    """

    def __init__(self, var_dir: Path, database_url: str | None) -> None:
        self.var_dir = var_dir
        self.https_port, self.http_port = free_port(), free_port()
        self.log_dir = Path(os.environ["FIELDLINK_TEST_LOG_DIR"])
        self.env = subprocess_env(
            FIELDLINK_VAR_DIR=str(var_dir),
            FIELDLINK_BIND="127.0.0.1",
            FIELDLINK_HTTPS_PORT=str(self.https_port),
            FIELDLINK_HTTP_PORT=str(self.http_port),
            FIELDLINK_LOG_FILE=str(self.log_dir / f"cloud-{self.https_port}.log"),
        )
        if database_url:
            self.env["FIELDLINK_DATABASE_URL"] = database_url
        if os.environ.get("FIELDLINK_REDIS_URL"):
            self.env["FIELDLINK_REDIS_URL"] = os.environ["FIELDLINK_REDIS_URL"]
        self.server: RunningServer | None = None
        self.starts = 0

    def start(self) -> RunningServer:
        assert self.server is None
        self.starts += 1
        out = self.log_dir / f"cloud-{self.https_port}-{self.starts}.stdout"
        with out.open("wb") as stdout:
            process = subprocess.Popen(
                [sys.executable, "-m", "fieldlink.cli", "serve"],
                env=self.env,
                stdout=stdout,
                stderr=subprocess.STDOUT,
            )
        self.server = RunningServer(
            self.var_dir,
            self.https_port,
            self.http_port,
            "",
            Path(self.env["FIELDLINK_LOG_FILE"]),
            process,
            self.env,
        )
        try:
            _wait_ready(self.server)
        except BaseException:
            self.stop()
            raise
        return self.server

    def stop(self) -> None:
        if self.server is None:
            return
        process, self.server = self.server.process, None
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextlib.contextmanager
def restartable_cloud(var_dir: Path) -> Iterator[Cloud]:
    with postgres_database_for_server() as database_url:
        cloud = Cloud(var_dir, database_url)
        try:
            yield cloud
        finally:
            cloud.stop()


# -- a device and what the cloud stored for it ---------------------------------------------------

_BOOT = """
import json, sys
from fieldlink.cli.main import _boot
_boot()
"""

# The assets and points exist before the agent starts (an admin may create them; discovery then
# only fills in the instrument facts), so these tests do not depend on which of the agent's
# first two requests, announce or the first batch, the cloud sees first.
_MAKE_DEVICE = (
    _BOOT
    + """
from django.db import transaction
from fieldlink.accounts.models import Organisation, Region
from fieldlink.devices import credentials
from fieldlink.devices.models import Asset, EdgeDevice, MeasuringPoint, Site
label, instruments = sys.argv[1], json.loads(sys.argv[2])
with transaction.atomic():
    org = Organisation.objects.create(name="Agent " + label, region=Region.EU_CENTRAL)
    device = EdgeDevice.objects.create(organisation=org, name="agent-" + label)
    site = Site.objects.create(organisation=org, name="Site " + label)
    for tag, points in instruments:
        asset = Asset.objects.create(organisation=org, site=site, tag=tag)
        for key, unit in points:
            MeasuringPoint.objects.create(organisation=org, asset=asset, key=key, unit=unit)
        device.assets.add(asset)
    code = credentials.issue_enrollment_code(device).secret
    token = credentials.enroll(code).secret
print(json.dumps({"device": str(device.pk), "token": token}))
"""
)

# The SQL below is the cloud's own script text: table names are constants, ids are parameters.
_STORED = (
    _BOOT  # noqa: S608
    + """
from django.db import connection
from fieldlink.devices.models import EdgeDevice, MeasuringPoint
from fieldlink.telemetry import storage
from fieldlink.telemetry.models import BatchReceipt
device = EdgeDevice.objects.get(pk=sys.argv[1])
receipts = list(
    BatchReceipt.objects.filter(device=device).order_by("sequence")
    .values_list("sequence", "value_count")
)
points = {
    p.pk: f"{p.asset.tag}/{p.key}"
    for p in MeasuringPoint.objects.filter(asset__edge_devices=device).select_related("asset")
}
series = storage.series_of(list(points))
name = {s: points[p] for p, s in series.items()}
ids = sorted(name) or [-1]
marks = ", ".join(["%s"] * len(ids))
tables = ["telemetry_sample"]
if connection.vendor == "sqlite":
    # Until the next compaction a sample may sit in either table: both are counted.
    tables.append("telemetry_sample_hot")
rows = []
with connection.cursor() as cursor:
    for table in tables:
        cursor.execute(f"SELECT series, ts FROM {table} WHERE series IN ({marks})", ids)
        rows += [[name[s], ts] for s, ts in cursor.fetchall()]
    pg_rows = pg_distinct = 0
    if connection.vendor == "postgresql":
        # No unique index on the samples there (storage.py): count the rows themselves.
        cursor.execute(
            "SELECT count(*), count(DISTINCT (series, ts)) FROM telemetry_sample "
            f"WHERE series IN ({marks})",
            ids,
        )
        pg_rows, pg_distinct = cursor.fetchone()
gaps = list(device.gaps.values_list("reason", "count"))
print(json.dumps({
    "receipts": receipts, "acked": device.acked_sequence, "rows": rows, "gaps": gaps,
    "pg_rows": pg_rows, "pg_distinct": pg_distinct, "vendor": connection.vendor,
}))
"""
)


class Instrument(NamedTuple):
    tag: str
    model: str  # a simulator model: what it measures comes from the plant catalogue

    @property
    def points(self) -> list[tuple[str, str]]:
        return [(p.key, p.unit) for p in MODELS[self.model]]


def instruments_for(label: str) -> list[Instrument]:
    suffix = label.upper()
    return [
        Instrument(f"FIT-{suffix}", "flow"),
        Instrument(f"PIT-{suffix}", "pressure"),
        Instrument(f"LIT-{suffix}", "level"),
    ]


def point_names(instruments: Sequence[Instrument]) -> set[str]:
    return {f"{i.tag}/{key}" for i in instruments for key, _ in i.points}


@dataclass
class AgentDevice:
    id: str
    label: str
    instruments: list[Instrument]
    credential_file: Path
    token: str = field(repr=False)


def make_agent_device(server: RunningServer, directory: Path, label: str) -> AgentDevice:
    instruments = instruments_for(label)
    spec = json.dumps([[i.tag, i.points] for i in instruments])
    made = run_in_cloud(server, _MAKE_DEVICE, label, spec)
    token = register_canary(made["token"])
    credential = directory / "credential"
    write_credential(credential, token)
    return AgentDevice(made["device"], label, instruments, credential, token)


@dataclass(frozen=True)
class Stored:
    receipts: list[tuple[int, int]]  # (sequence, value_count)
    acked: int
    rows: list[Key]  # every stored sample row, duplicates included
    pg_rows: int
    pg_distinct: int
    vendor: str
    gaps: list[tuple[str, int]]  # (reason, count) the agent reported


def stored(server: RunningServer, device: AgentDevice) -> Stored:
    got = run_in_cloud(server, _STORED, device.id)
    return Stored(
        [(int(s), int(n)) for s, n in got["receipts"]],
        int(got["acked"]),
        [(str(p), int(ts)) for p, ts in got["rows"]],
        int(got["pg_rows"]),
        int(got["pg_distinct"]),
        str(got["vendor"]),
        [(str(r), int(n)) for r, n in got["gaps"]],
    )


# -- the agent as a process ------------------------------------------------------------------


def edge_toml(
    *,
    url: str,
    ca: Path,
    credential: Path,
    buffer: Path,
    instruments: Sequence[Instrument],
    poll_ms: int = 100,
) -> str:
    lines = [
        "[cloud]",
        f'url = "{url}"',
        f'ca = "{ca}"',
        f'credential_file = "{credential}"',
        "[buffer]",
        f'path = "{buffer}"',
        "[[sources]]",
        'name = "sim"',
        'kind = "simulator"',
        f"poll_ms = {poll_ms}",
    ]
    for instrument in instruments:
        lines += ["[[sources.instruments]]", f'tag = "{instrument.tag}"']
        lines.append(f'model = "{instrument.model}"')
    return "\n".join(lines) + "\n"


def sockets_open_for_others(process: psutil.Process) -> list[Any]:
    """Listening TCP/Unix sockets and bound UDP sockets of ``process`` and its children.

    Threads share their process's sockets, so the process and its descendants are all there is.
    """
    found = []
    for proc in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            for conn in proc.net_connections(kind="all"):
                udp = conn.type == 2 and bool(conn.laddr)  # SOCK_DGRAM with a local address
                if conn.status == psutil.CONN_LISTEN or udp:
                    found.append(conn)
    return found


def connections_to(process: psutil.Process, port: int) -> int:
    with contextlib.suppress(psutil.NoSuchProcess):
        return sum(
            1
            for c in process.net_connections(kind="tcp")
            if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
        )
    return 0


class AgentProcess:
    """One ``fieldlink edge run`` process; stdout and stderr go to a file the log canary sweeps."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fieldlink.cli", "edge", "run", "--config", str(config)],
                env=subprocess_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.psutil = psutil.Process(self.process.pid)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill9(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise

    def cleanup(self) -> None:
        if self.alive:
            for child in self.psutil.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            self.kill9()

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    out.append(doc)
        return out


# -- watching the buffer from outside ------------------------------------------------------------


@dataclass
class BufferView:
    pending: int = 0
    formed: int = 0
    next_sequence: int = 0
    oldest_ts: int | None = None


class BufferWatch:
    """Reads the agent's buffer file from another connection every few milliseconds and keeps
    every value it ever saw there, pending or in a formed batch.

    What it saw was durably committed by the agent: the cloud must end up with each of those
    values exactly once. WAL mode lets this reader look while the agent writes; it never writes.
    """

    def __init__(self, path: Path, every_s: float = 0.02) -> None:
        self.path = path
        self.every_s = every_s
        self.seen: set[Key] = set()
        self.view = BufferView()
        self.snapshots = 0
        self._decoded: dict[tuple[int, int], list[Key]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._lock = threading.Lock()
        self.error: BaseException | None = None

    def __enter__(self) -> BufferWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self.path.exists():
                    self._watch()
                self._stop.wait(self.every_s)
        except BaseException as exc:  # noqa: BLE001 - handed to the test through .error
            self.error = exc

    def _watch(self) -> None:
        db = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        try:
            db.execute("PRAGMA query_only = 1")
            while not self._stop.is_set():
                # Locked while the agent recovers its WAL after a kill: the next round sees it.
                with contextlib.suppress(sqlite3.OperationalError):
                    self.snapshot(db)
                self._stop.wait(self.every_s)
        finally:
            db.close()

    def snapshot(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN")  # one read transaction: a consistent picture
        try:
            if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'batches'").fetchone() is None:
                return
            pending = db.execute("SELECT point, ts FROM pending").fetchall()
            batches = db.execute("SELECT sequence, payload FROM batches").fetchall()
            row = db.execute("SELECT value FROM meta WHERE key = 'next_sequence'").fetchone()
        finally:
            db.execute("COMMIT")
        keys = {(str(p), int(t)) for p, t in pending}
        for sequence, payload in batches:
            cached = (int(sequence), hash(bytes(payload)))
            if cached not in self._decoded:
                body = b'{"sequence":%d,%s' % (sequence, bytes(payload))
                batch = msgspec.json.decode(body, type=Batch)
                self._decoded[cached] = [(v.point, v.ts) for v in batch.values]
            keys.update(self._decoded[cached])
        stamps = [t for _, t in keys]
        with self._lock:
            self.seen |= keys
            self.view = BufferView(
                len(pending),
                len(batches),
                int(row[0]) if row else 0,
                min(stamps) if stamps else None,
            )
            self.snapshots += 1

    def current(self) -> BufferView:
        with self._lock:
            return self.view

    def wait_for(self, check: Any, within: float, what: str) -> BufferView:
        deadline = time.monotonic() + within
        while True:
            view = self.current()
            if self.error is not None:
                raise self.error
            if check(view):
                return view
            assert time.monotonic() < deadline, f"{what}: not within {within}s ({view})"
            time.sleep(0.01)
