"""``fieldlink edge enroll`` against the real cloud over real TLS.

The code is made in the server's own database (a subprocess with the server's environment);
the agent side is the real CLI in a subprocess, so what an installer types is what is tested.
"""

from __future__ import annotations

import json
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fieldlink.edge.enroll import EnrollmentError, enroll, read_credential, write_credential
from fieldlink.kit.tls import ensure_local_pki
from tests.edge.conftest import pki_for
from tests.plugins.log_canary import register_canary
from tests.support.server import RunningServer

pytestmark = [pytest.mark.backend]

_MAKE_DEVICE = """
import json, secrets, sys
from fieldlink.cli.main import _boot
_boot()
from django.db import transaction
from fieldlink.accounts.models import Organisation, Region
from fieldlink.devices import credentials
from fieldlink.devices.models import EdgeDevice
with transaction.atomic():
    org = Organisation.objects.create(
        name="Enroll " + secrets.token_hex(3), region=Region.EU_CENTRAL
    )
    device = EdgeDevice.objects.create(organisation=org, name="gateway-" + secrets.token_hex(3))
    code = credentials.issue_enrollment_code(device).secret
print(json.dumps({"device": str(device.pk), "code": code}))
"""


def new_code(server: RunningServer) -> tuple[str, str]:
    done = subprocess.run(
        [sys.executable, "-c", _MAKE_DEVICE],
        env=server.env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    made = json.loads(done.stdout.strip().splitlines()[-1])
    register_canary(made["code"])
    return made["device"], made["code"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fieldlink.cli", "edge", *args],
        check=False,
        timeout=60,
        capture_output=True,
        text=True,
    )


def test_enroll_stores_a_private_credential_that_the_cloud_accepts(
    server: RunningServer, tmp_path: Path
) -> None:
    device_id, code = new_code(server)
    credential = tmp_path / "edge" / "credential"
    done = cli(
        "enroll",
        "--url",
        server.base_url,
        "--code",
        code,
        "--ca",
        str(server.ca_cert),
        "--credential-file",
        str(credential),
    )
    assert done.returncode == 0, done.stderr
    assert device_id in done.stdout
    assert stat.S_IMODE(credential.stat().st_mode) == 0o600
    token = read_credential(credential)
    register_canary(token)
    assert token not in done.stdout + done.stderr
    # The credential works: an empty batch is acknowledged.
    with server.client() as client:
        ack = client.post(
            "/edge/v1/telemetry",
            content=b'{"sequence": 1}',
            headers={"authorization": f"Bearer {token}"},
        )
    assert ack.status_code == 200, ack.text
    again = cli(
        "enroll",
        "--url",
        server.base_url,
        "--code",
        code,
        "--ca",
        str(server.ca_cert),
        "--credential-file",
        str(tmp_path / "second"),
    )
    assert again.returncode == 1
    assert "refused" in again.stderr
    assert not (tmp_path / "second").exists()


def test_wrong_ca_sends_nothing_and_leaves_the_code_usable(
    server: RunningServer, tmp_path: Path
) -> None:
    _, code = new_code(server)
    other = ensure_local_pki(tmp_path / "other-ca", ["localhost"])
    with pytest.raises(EnrollmentError, match="certificate verify failed"):
        enroll(server.base_url, code, ca_file=other.ca_cert, credential_file=tmp_path / "cred")
    assert not (tmp_path / "cred").exists()
    # The TLS handshake failed before the request was sent: the code still works.
    done = enroll(server.base_url, code, ca_file=server.ca_cert, credential_file=tmp_path / "cred")
    register_canary(read_credential(done.credential_file))


def test_wrong_host_name_is_refused_before_the_code_is_sent(tmp_path: Path) -> None:
    # A TLS server on loopback with a valid certificate from a trusted CA — for another host.
    ca, cert, key = pki_for(tmp_path / "pki", "elsewhere.example")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    received: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve_once() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5)
        try:
            with context.wrap_socket(conn, server_side=True) as tls:
                received.append(tls.recv(65536))
        except (ssl.SSLError, OSError):
            pass  # the client hangs up during the handshake: what we want

    thread = threading.Thread(target=serve_once, daemon=True)
    thread.start()
    try:
        with pytest.raises(EnrollmentError, match="mismatch"):
            enroll(
                f"https://127.0.0.1:{port}",
                "fle_" + "x" * 43,
                ca_file=ca,
                credential_file=tmp_path / "cred",
            )
    finally:
        thread.join(10)
        listener.close()
    assert received == []  # not one byte of the request (and its code) left the agent
    assert not (tmp_path / "cred").exists()


def test_plain_http_url_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    done = cli(
        "enroll",
        "--url",
        "http://localhost:8080",
        "--code",
        "fle_" + "y" * 43,
        "--ca",
        str(tmp_path / "missing.pem"),
        "--credential-file",
        str(tmp_path / "c"),
    )
    assert done.returncode == 1
    assert "https://" in done.stderr


def test_a_credential_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "credential"
    write_credential(path, "fld_" + "k" * 43)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)
    with pytest.raises(EnrollmentError, match="chmod 600"):
        read_credential(path)
