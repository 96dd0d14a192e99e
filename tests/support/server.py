"""Start a real ``fieldlink serve`` process on loopback ports for tests, and stop it."""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

from tests.plugins.log_canary import register_canary

START_TIMEOUT = 60.0


def subprocess_env(**overrides: str) -> dict[str, str]:
    """This environment without the suite's own FIELDLINK_* settings (the log dir stays)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FIELDLINK_") or k == "FIELDLINK_TEST_LOG_DIR"
    }
    env.update(overrides)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    var_dir: Path
    https_port: int
    http_port: int
    metrics_token: str
    log_file: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str] = field(default_factory=dict)
    trusted_ca: Path | None = None

    @property
    def ca_cert(self) -> Path:
        return self.trusted_ca or self.var_dir / "tls" / "ca.pem"

    @property
    def server_cert(self) -> Path:
        return self.var_dir / "tls" / "server.pem"

    @property
    def base_url(self) -> str:
        return f"https://localhost:{self.https_port}"

    @property
    def http_url(self) -> str:
        return f"http://localhost:{self.http_port}"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, verify=self.ssl_context(), timeout=10, **kwargs)  # type: ignore[arg-type]

    def log_text(self) -> str:
        return self.log_file.read_text() if self.log_file.exists() else ""


@contextlib.contextmanager
def postgres_database_for_server() -> Iterator[str | None]:
    """A throw-away PostgreSQL database when the suite runs on PostgreSQL, else None (SQLite)."""
    url = os.environ.get("FIELDLINK_DATABASE_URL")
    if not url:
        yield None
        return
    name = f"fieldlink_srv_{secrets.token_hex(4)}"
    admin = urllib.parse.urlsplit(url)._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urllib.parse.urlsplit(url)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def run_server(
    var_dir: Path, extra_env: Mapping[str, str] | None = None, *, ca_cert: Path | None = None
) -> Iterator[RunningServer]:
    log_dir = Path(os.environ["FIELDLINK_TEST_LOG_DIR"])
    https_port, http_port = free_port(), free_port()
    token = register_canary("metrics-token-" + secrets.token_urlsafe(24))
    log_file = log_dir / f"server-{https_port}.log"
    with postgres_database_for_server() as database_url:
        env = subprocess_env(
            FIELDLINK_VAR_DIR=str(var_dir),
            FIELDLINK_BIND="127.0.0.1",
            FIELDLINK_HTTPS_PORT=str(https_port),
            FIELDLINK_HTTP_PORT=str(http_port),
            FIELDLINK_METRICS_TOKEN=token,
            FIELDLINK_LOG_FILE=str(log_file),
        )
        if database_url:
            env["FIELDLINK_DATABASE_URL"] = database_url
        if os.environ.get("FIELDLINK_REDIS_URL"):
            env["FIELDLINK_REDIS_URL"] = os.environ["FIELDLINK_REDIS_URL"]
        env.update(extra_env or {})
        stdout = (log_dir / f"server-{https_port}.stdout").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "fieldlink.cli", "serve"],
            env=env,
            stdout=stdout,
            stderr=subprocess.STDOUT,
        )
        server = RunningServer(
            var_dir, https_port, http_port, token, log_file, process, env, trusted_ca=ca_cert
        )
        try:
            _wait_ready(server)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
            stdout.close()


def _wait_ready(server: RunningServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"fieldlink serve exited with {server.process.returncode}:\n"
                + server.log_text()[-4000:]
            )
        if server.ca_cert.exists():
            try:
                with server.client() as client:
                    if client.get("/healthz").status_code == 200:
                        return
            except (httpx.HTTPError, ssl.SSLError, OSError):
                pass
        time.sleep(0.2)
    raise RuntimeError(
        "fieldlink serve did not become healthy in time:\n" + server.log_text()[-4000:]
    )
