"""Helpers for the agent's buffer and uplink tests: devices in the real cloud's database, and a
tiny loopback TLS server for the faults the real cloud cannot produce on demand."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import ssl
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fieldlink.edge.enroll import write_credential
from fieldlink.edge.model import Reading
from fieldlink.protocol.telemetry import Ack
from tests.plugins.log_canary import register_canary
from tests.support.server import RunningServer

# -- the real cloud's database (a subprocess with the server's environment) ---------------------

_BOOT = """
import json, secrets, sys
from fieldlink.cli.main import _boot
_boot()
"""

_MAKE_DEVICE = (
    _BOOT
    + """
from django.db import transaction
from fieldlink.accounts.models import Organisation, Region
from fieldlink.devices import credentials
from fieldlink.devices.models import Asset, EdgeDevice, MeasuringPoint, Site
tag = "FIT-" + secrets.token_hex(4)
with transaction.atomic():
    org = Organisation.objects.create(name="Uplink " + tag, region=Region.EU_CENTRAL)
    site = Site.objects.create(organisation=org, name="Site " + tag)
    asset = Asset.objects.create(organisation=org, site=site, tag=tag)
    for key in ("flow", "pressure"):
        MeasuringPoint.objects.create(organisation=org, asset=asset, key=key, unit="m3/h")
    device = EdgeDevice.objects.create(organisation=org, name="edge-" + tag)
    device.assets.add(asset)
    code = credentials.issue_enrollment_code(device).secret
    token = credentials.enroll(code).secret
print(json.dumps({"device": str(device.pk), "tag": tag, "token": token}))
"""
)

_COUNT = (
    _BOOT
    + """
from fieldlink.devices.models import EdgeDevice, MeasuringPoint
from fieldlink.telemetry import storage
from fieldlink.telemetry.models import BatchReceipt
device = EdgeDevice.objects.get(pk=sys.argv[1])
receipts = list(
    BatchReceipt.objects.filter(device=device)
    .order_by("sequence")
    .values_list("sequence", "value_count", "backlog")
)
points = MeasuringPoint.objects.filter(asset__edge_devices=device)
series = storage.series_of([p.pk for p in points])
samples = sum(len(storage.range(s, 0, 2**62, limit=10**7)) for s in series.values())
print(json.dumps({"receipts": receipts, "samples": samples, "acked": device.acked_sequence}))
"""
)

_REVOKE = (
    _BOOT
    + """
from django.utils import timezone
from fieldlink.devices.models import EdgeDevice
EdgeDevice.objects.filter(pk=sys.argv[1]).update(
    revoked_at=timezone.now(), credential_digest="", previous_credential_digest=""
)
print("{}")
"""
)


def tls_http_server(
    cert: Path,
    key: Path,
    handler: type[BaseHTTPRequestHandler],
    *,
    on_handshake_failure: Callable[[], None] | None = None,
) -> ThreadingHTTPServer:
    """A threaded HTTPS server on 127.0.0.1 (a free port), the TLS handshake done per request
    thread so one stuck client never holds the accept loop."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def get_request(self) -> tuple[Any, Any]:
            sock, address = self.socket.accept()
            return context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            ), address

        def finish_request(self, request: Any, client_address: Any) -> None:
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError):
                if on_handshake_failure is not None:
                    on_handshake_failure()
                return
            super().finish_request(request, client_address)

    return Server(("127.0.0.1", 0), handler)


def run_in_cloud(server: RunningServer, script: str, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=server.env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class CloudDevice:
    id: str
    tag: str
    credential_file: Path
    token: str = field(repr=False)

    def point(self, key: str = "flow") -> str:
        return f"{self.tag}/{key}"


def make_device(server: RunningServer, directory: Path) -> CloudDevice:
    made = run_in_cloud(server, _MAKE_DEVICE)
    register_canary(made["token"])
    credential = directory / f"credential-{made['tag']}"
    write_credential(credential, made["token"])
    return CloudDevice(made["device"], made["tag"], credential, made["token"])


@dataclass(frozen=True)
class CloudCounts:
    receipts: list[tuple[int, int, bool]]
    samples: int
    acked: int

    @property
    def values(self) -> int:
        return sum(r[1] for r in self.receipts)


def cloud_counts(server: RunningServer, device: CloudDevice) -> CloudCounts:
    got = run_in_cloud(server, _COUNT, device.id)
    return CloudCounts([tuple(r) for r in got["receipts"]], got["samples"], got["acked"])


def revoke(server: RunningServer, device: CloudDevice) -> None:
    run_in_cloud(server, _REVOKE, device.id)


# -- readings -------------------------------------------------------------------------------


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def readings(
    point: str, n: int, *, start_ms: int, step_ms: int = 1, first: int = 0
) -> list[Reading]:
    """``n`` readings of ``point`` at distinct times; value = its index (to find it again)."""
    return [Reading(point, start_ms + i * step_ms, float(first + i), 192) for i in range(n)]


def ack(acked: int, *, accepted: bool = True, duplicate: bool = False) -> Ack:
    return Ack(
        acked_sequence=acked,
        accepted=accepted,
        duplicate=duplicate,
        desired_config_version=0,
        update_available=None,
        rotate_credential=False,
    )


def listening_sockets() -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process().net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


# -- certificates -------------------------------------------------------------------------


def pki_for(directory: Path, host: str, *, expired: bool = False) -> tuple[Path, Path, Path]:
    """A CA and a server certificate naming only ``host`` (ca.pem, server.pem, server.key).

    ``expired``: the server certificate ran out yesterday; everything else is right.
    """
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Test CA {host}")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        name: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        name = x509.DNSName(host)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=10) if expired else now - timedelta(minutes=5))
        .not_valid_after(now - timedelta(days=1) if expired else now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([name]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = (directory / "ca.pem", directory / "server.pem", directory / "server.key")
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(leaf.public_bytes(pem))
    paths[2].write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths


STUB_TOKEN = "fld_" + "s" * 43


# -- the fault-injection stub -----------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    length: bool = True  # send Content-Length (else: body until the connection closes)


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes  # as sent (gzip)

    @property
    def batch(self) -> dict[str, Any]:
        plain = zlib.decompress(self.body, 16 + zlib.MAX_WBITS)
        doc: dict[str, Any] = json.loads(plain)
        return doc


class StubCloud:
    """A loopback HTTPS server answering telemetry posts with scripted replies.

    For faults only (429/503, malformed, oversized, slow answers): everything the real cloud
    can do on demand is tested against the real cloud.
    """

    def __init__(self, cert: Path, key: Path, script: Callable[[Received], Reply]) -> None:
        self.received: list[Received] = []
        self.handshakes_failed = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                size = int(self.headers.get("content-length", "0"))
                got = Received(
                    {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(size)
                )
                stub.received.append(got)
                reply = script(got)
                time.sleep(reply.delay)
                self.send_response(reply.status)
                for name, value in reply.headers:
                    self.send_header(name, value)
                if reply.length:
                    self.send_header("content-length", str(len(reply.body)))
                else:
                    self.send_header("connection", "close")
                    self.close_connection = True
                self.end_headers()
                # The client may stop reading: what a size cap does.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                    self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        def failed() -> None:
            stub.handshakes_failed += 1

        self._server = tls_http_server(cert, key, Handler, on_handshake_failure=failed)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> StubCloud:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


def ack_body(acked: int, *, duplicate: bool = False) -> bytes:
    return json.dumps(
        {
            "acked_sequence": acked,
            "accepted": True,
            "duplicate": duplicate,
            "desired_config_version": 0,
            "update_available": None,
            "rotate_credential": False,
        }
    ).encode()


@pytest.fixture
def stub_pki(tmp_path: Path) -> tuple[Path, Path, Path]:
    return pki_for(tmp_path / "stub-pki", "127.0.0.1")


@pytest.fixture
def stub_credential(tmp_path: Path) -> Path:
    path = tmp_path / "stub-credential"
    write_credential(path, register_canary(STUB_TOKEN))
    return path
