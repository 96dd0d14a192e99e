"""Shared by the telemetry benchmarks: our own ``influxd``, a ``fieldlink serve``, a plant.

Everything is started on 127.0.0.1 in a temp directory and stopped by the context managers,
also on an error or Ctrl-C. Nothing here depends on a system service (the Debian
``influxdb`` unit may or may not be running; its port is not ours).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
for _path in (str(ROOT / "src"), str(ROOT)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from tests.support.server import RunningServer, free_port, run_server  # noqa: E402

INFLUXD = "/usr/bin/influxd"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"

__all__ = [
    "DEFAULT_POSTGRES",
    "Cpu",
    "Influx",
    "RunningServer",
    "django_script",
    "fieldlink_server",
    "free_port",
    "machine",
    "postgres_database",
]


# -- the machine and CPU use ---------------------------------------------------------------------


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Cpu:
    """CPU seconds a process (the server, influxd) used over a block, as cores of the wall time."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.cores = float("nan")

    def __enter__(self) -> Cpu:
        self._wall = time.perf_counter()
        self._cpu = _cpu_seconds(self.pid) if self.pid else 0.0
        return self

    def __exit__(self, *_: object) -> None:
        if self.pid:
            wall = time.perf_counter() - self._wall
            self.cores = (_cpu_seconds(self.pid) - self._cpu) / max(wall, 1e-9)


# -- InfluxDB 1.x ---------------------------------------------------------------------------------


class Influx:
    """Our own ``influxd`` (Debian's InfluxDB 1.x), HTTP on a free 127.0.0.1 port, no other port.

    Every listener it has is named here and bound to 127.0.0.1 or switched off: the HTTP API, the
    RPC port used by backup/restore, and the graphite/collectd/opentsdb/udp inputs.
    """

    def __init__(self, directory: Path, *, database: str = "bench") -> None:
        if not Path(INFLUXD).exists():
            raise RuntimeError(f"{INFLUXD} is missing: apt-get install influxdb (1.x)")
        self.database = database
        self.port = free_port()
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "influxdb.conf"
        config.write_text(
            textwrap.dedent(f"""\
                reporting-disabled = true
                bind-address = "127.0.0.1:{free_port()}"
                [meta]
                  dir = "{directory}/meta"
                [data]
                  dir = "{directory}/data"
                  wal-dir = "{directory}/wal"
                  query-log-enabled = false
                [retention]
                  enabled = false
                [monitor]
                  store-enabled = false
                [http]
                  enabled = true
                  bind-address = "127.0.0.1:{self.port}"
                  auth-enabled = false
                  log-enabled = false
                  pprof-enabled = false
                [subscriber]
                  enabled = false
                [[graphite]]
                  enabled = false
                [[collectd]]
                  enabled = false
                [[opentsdb]]
                  enabled = false
                [[udp]]
                  enabled = false
                [continuous_queries]
                  enabled = false
                """)
        )
        self.log = (directory / "influxd.log").open("wb")
        self.proc = subprocess.Popen(
            [INFLUXD, "-config", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C at the terminal reaches us; we stop it ourselves
        )
        self.url = f"http://127.0.0.1:{self.port}"
        self.http = httpx.Client(base_url=self.url, timeout=300)
        try:
            self._wait_ready()
            self.query(f'CREATE DATABASE "{database}"', post=True)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"influxd exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if self.http.get("/ping").status_code == 204:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("influxd did not start in 30 s")
            time.sleep(0.2)

    def write(self, body: bytes, client: httpx.Client | None = None) -> None:
        """One line-protocol write (precision ms); anything but 204 is an error."""
        response = (client or self.http).post(
            "/write", params={"db": self.database, "precision": "ms"}, content=body
        )
        if response.status_code != 204:
            raise RuntimeError(f"influx write: {response.status_code} {response.text[:200]}")

    def query(self, q: str, *, post: bool = False) -> Any:
        params = {"db": self.database, "q": q, "epoch": "ms"}
        if post:
            response = self.http.post("/query", params=params)
        else:
            response = self.http.get("/query", params=params)
        response.raise_for_status()
        result = response.json()["results"][0]
        if "error" in result:
            raise RuntimeError(f"influx query: {result['error']}")
        return result

    def count(self, measurement: str, field: str) -> int:
        q = f'SELECT count("{field}") FROM "{measurement}"'  # noqa: S608 -- our names, not input
        series = self.query(q).get("series", [])
        return int(series[0]["values"][0][1]) if series else 0

    def __enter__(self) -> Influx:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


# -- Fieldlink -------------------------------------------------------------------------------------


@contextlib.contextmanager
def fieldlink_server(var_dir: Path, postgres: str | None) -> Iterator[RunningServer]:
    """A real ``fieldlink serve`` (HTTPS, local CA, 127.0.0.1), on SQLite or on a throw-away
    PostgreSQL database (created for the run and dropped after, by ``run_server``).

    The task worker is off: its periodic tasks (retention, webhooks) would otherwise start at a
    random moment in the middle of a measurement. Rate limits use the in-process cache.
    """
    os.environ.setdefault("FIELDLINK_TEST_LOG_DIR", str(var_dir.parent))
    saved = os.environ.pop("FIELDLINK_DATABASE_URL", None)
    if postgres:
        # run_server makes its database next to the one this URL names.
        os.environ["FIELDLINK_DATABASE_URL"] = postgres
    try:
        with run_server(var_dir, {"FIELDLINK_RUN_WORKER": "false"}) as server:
            yield server
    finally:
        os.environ.pop("FIELDLINK_DATABASE_URL", None)
        if saved is not None:
            os.environ["FIELDLINK_DATABASE_URL"] = saved


def django_script(
    server: RunningServer, script: str, argument: str = "", *, timeout: float = 600
) -> Any:
    """Run ``script`` with Django set up on the server's database; its last stdout line as JSON.

    The script gets ``argument`` on stdin (never on the command line).
    """
    env = {**server.env, "DJANGO_SETTINGS_MODULE": "fieldlink.cloud.django_settings"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    prelude = "import django\ndjango.setup()\n"
    done = subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(script)],
        input=argument.encode(),
        env=env,
        check=False,
        timeout=timeout,
        capture_output=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"setup script failed:\n{done.stderr.decode()[-3000:]}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


@contextlib.contextmanager
def postgres_database(url: str, prefix: str) -> Iterator[str]:
    """A throw-away database on the server ``url`` names; its URL. Dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(3)}"
    admin = urllib.parse.urlsplit(url)._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # a name of ours: hex digits only
    try:
        yield urllib.parse.urlsplit(url)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
