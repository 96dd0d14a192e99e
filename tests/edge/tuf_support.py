"""A real TUF repository behind a real HTTPS server, for the agent's update tests.

``TufServer`` serves ``<root>/metadata/*`` under ``/edge/v1/tuf/metadata/`` and
``<root>/targets/*`` under ``/edge/v1/tuf/targets/`` on 127.0.0.1 over TLS (a test CA from
``pki_for``), answers only requests that carry the expected bearer credential, and can be told
to misbehave for one file: an endless body, a body dripped byte by byte, or other bytes than
the repository wrote (what an attacker on the server or the path would serve). Optional
``post`` handles the agent's POSTs (telemetry, announce, report) for the agent-level tests.

The repository is ``fieldlink.updates.tuf_repo.Repository``, the same code the cloud signs
with; ``publish`` writes it into the served directory.
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from securesystemslib.signer import Signer

from fieldlink.edge.enroll import write_credential
from fieldlink.edge.updater import EdgeUpdater, Limits
from fieldlink.kit.files import write_atomically
from fieldlink.protocol.edge import ENROLL_PATH
from fieldlink.protocol.updates import TUF_METADATA_PATH, TUF_TARGETS_PATH
from fieldlink.updates.tuf_repo import Repository, new_signer
from tests.edge.conftest import pki_for, tls_http_server
from tests.plugins.log_canary import register_canary

TOKEN = "fld_" + "t" * 43


@dataclass
class Keys:
    root: list[Signer]
    targets: list[Signer]
    release: list[Signer]
    snapshot: Signer
    timestamp: Signer
    config: Signer


def make_keys(*, release: int = 1) -> Keys:
    return Keys(
        root=[new_signer()],
        targets=[new_signer()],
        release=[new_signer() for _ in range(release)],
        snapshot=new_signer(),
        timestamp=new_signer(),
        config=new_signer(),
    )


def make_repo(
    keys: Keys, *, now: datetime | None = None, release_threshold: int = 1, bin_bits: int = 4
) -> Repository:
    # 16 bins instead of 256: the same code paths, a sixteenth of the signing time.
    return Repository.create(
        root=keys.root,
        targets=keys.targets,
        release=keys.release,
        snapshot=keys.snapshot,
        timestamp=keys.timestamp,
        config=keys.config,
        root_threshold=1,
        release_threshold=release_threshold,
        bin_bits=bin_bits,
        now=now or datetime.now(UTC),
    )


@dataclass
class Misbehave:
    endless: set[str] = field(default_factory=set)  # served names: a body that never ends
    drip: dict[str, float] = field(default_factory=dict)  # served name -> seconds per byte
    replace: dict[str, bytes] = field(default_factory=dict)  # served name -> these bytes
    missing: set[str] = field(default_factory=set)  # served name -> 404


PostHandler = Callable[[str, dict[str, str], bytes], tuple[int, bytes]]


class TufServer:
    """HTTPS on 127.0.0.1 serving a repository directory; see the module docstring."""

    def __init__(
        self,
        directory: Path,
        pki: tuple[Path, Path, Path],
        *,
        token: str = TOKEN,
        post: PostHandler | None = None,
    ) -> None:
        self.directory = directory
        self.ca, cert, key = pki
        self.token = token
        self.misbehave = Misbehave()
        self.gets: list[str] = []
        self.posts: list[tuple[str, bytes]] = []
        self.unauthorized = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _authorized(self) -> bool:
                if self.headers.get("authorization") == f"Bearer {server.token}":
                    return True
                server.unauthorized += 1
                self._reply(401, b'{"code": "unauthenticated"}')
                return False

            def _reply(self, status: int, body: bytes, *, close: bool = False) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                if close:
                    self.send_header("connection", "close")
                    self.close_connection = True
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    self.wfile.write(body)

            def do_GET(self) -> None:
                if not self._authorized():
                    return
                server.gets.append(self.path)
                for prefix, sub in ((TUF_METADATA_PATH, "metadata"), (TUF_TARGETS_PATH, "targets")):
                    if self.path.startswith(prefix):
                        name = self.path.removeprefix(prefix)
                        self._serve(sub, name)
                        return
                self._reply(404, b"{}")

            def _serve(self, sub: str, name: str) -> None:
                rules = server.misbehave
                if name in rules.missing:
                    self._reply(404, b"{}")
                    return
                if name in rules.endless:
                    self._endless()
                    return
                data = rules.replace.get(name)
                if data is None:
                    data = server.read(sub, name)
                if data is None:
                    self._reply(404, b"{}")
                    return
                if name in rules.drip:
                    self._drip(data, rules.drip[name])
                    return
                self._reply(200, data)

            def _endless(self) -> None:
                self.send_response(200)
                self.send_header("connection", "close")
                self.close_connection = True
                self.end_headers()
                block = b"{" + b" " * 65535
                deadline = time.monotonic() + 30
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    while time.monotonic() < deadline:
                        self.wfile.write(block)

            def _drip(self, data: bytes, per_byte: float) -> None:
                self.send_response(200)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                deadline = time.monotonic() + 30
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    for i in range(len(data)):
                        if time.monotonic() > deadline:
                            break
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                        time.sleep(per_byte)

            def do_POST(self) -> None:
                size = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(size)
                # Enrollment is the one request made before there is a credential.
                if self.path != ENROLL_PATH and not self._authorized():
                    return
                server.posts.append((self.path, body))
                if server.post is None:
                    self._reply(404, b"{}")
                    return
                status, answer = server.post(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                self._reply(status, answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.post = post
        self._server = tls_http_server(cert, key, Handler)
        self.port = int(self._server.server_address[1])
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def read(self, sub: str, name: str) -> bytes | None:
        base = (self.directory / sub).resolve()
        path = (base / name).resolve()
        if not path.is_relative_to(base) or not path.is_file():
            return None
        return path.read_bytes()

    def publish(self, repo: Repository) -> None:
        repo.write(self.directory)

    def put(self, sub: str, name: str, data: bytes) -> None:
        path = self.directory / sub / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def __enter__(self) -> TufServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


@dataclass
class Device:
    """An enrolled device's files: credential, CA, home with the pinned root."""

    home: Path
    ca: Path
    credential: Path
    device_id: str = "7c9e6679-7425-40de-944b-e07fc1f90ae7"

    def pin_root(self, repo: Repository) -> None:
        metadata = self.home / "tuf" / "metadata"
        metadata.mkdir(parents=True, exist_ok=True)
        write_atomically(metadata / "root.json", repo.metadata_files()["1.root.json"], 0o644)

    def updater(
        self, server: TufServer, *, version: str = "1.2.0", limits: Limits | None = None
    ) -> EdgeUpdater:
        return EdgeUpdater(
            server.url,
            home=self.home,
            ca_file=self.ca,
            credential_file=self.credential,
            software_version=version,
            limits=limits,
        )


def make_device(tmp_path: Path) -> tuple[Device, tuple[Path, Path, Path]]:
    pki = pki_for(tmp_path / "pki", "127.0.0.1")
    credential = tmp_path / "credential"
    write_credential(credential, register_canary(TOKEN))
    home = tmp_path / "home"
    home.mkdir()
    return Device(home, pki[0], credential), pki


def bundle_bytes(version: str, size: int = 2048) -> bytes:
    """Stand-in bundle content: TUF checks bytes, not what they are."""
    seed = f"fieldlink-agent-{version}\n".encode()
    return (seed * (size // len(seed) + 1))[:size]
