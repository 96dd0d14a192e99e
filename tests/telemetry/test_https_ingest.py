"""Telemetry over a real ``fieldlink serve``: real uvicorn, real TLS (the local test CA), a file
database (SQLite, or a fresh PostgreSQL database on the PostgreSQL pass).

The device is made in the server's own database by a subprocess with the server's environment;
the reads that check "stored once" go through the same door.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from fieldlink.protocol.telemetry import Batch, Value, encode_batch
from tests.plugins.log_canary import register_canary
from tests.support.server import RunningServer

pytestmark = [pytest.mark.backend]

PATH = "/edge/v1/telemetry"
TIMEOUT = httpx.Timeout(10.0)

_MAKE_PLANT = """
import json, secrets
from fieldlink.cli.main import _boot
_boot()
from django.db import transaction
from fieldlink.accounts.models import Organisation, Region
from fieldlink.devices import credentials
from fieldlink.devices.models import Asset, EdgeDevice, MeasuringPoint, Site
label = secrets.token_hex(3)
with transaction.atomic():
    org = Organisation.objects.create(name="HTTPS " + label, region=Region.EU_CENTRAL)
    site = Site.objects.create(organisation=org, name="Site " + label)
    asset = Asset.objects.create(organisation=org, site=site, tag="FIT-" + label)
    for key in ("flow", "temp"):
        MeasuringPoint.objects.create(organisation=org, asset=asset, key=key, unit="m3/h")
    device = EdgeDevice.objects.create(organisation=org, name="edge " + label)
    device.assets.add(asset)
    code = credentials.issue_enrollment_code(device).secret
with transaction.atomic():
    token = credentials.enroll(code).secret
print(json.dumps({"tag": asset.tag, "device": str(device.pk), "token": token}))
"""

_STORED = """
import json, sys
from fieldlink.cli.main import _boot
_boot()
from fieldlink.devices.models import MeasuringPoint
from fieldlink.telemetry import storage
from fieldlink.telemetry.models import BatchReceipt
tag = sys.argv[1]
points = MeasuringPoint.objects.filter(asset__tag=tag)
series = storage.series_of([p.pk for p in points])
rows = {p.key: storage.range(series[p.pk], 0, 2**62, limit=10**6) for p in points if p.pk in series}
receipts = BatchReceipt.objects.filter(device__assets__tag=tag).values_list("sequence", flat=True)
receipts = sorted(receipts)
print(json.dumps({"rows": rows, "receipts": receipts}))
"""


def _python(server: RunningServer, script: str, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=server.env,
        check=True,
        timeout=30,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _batch(tag: str, sequence: int, base: int, n: int = 20) -> bytes:
    values = [
        Value(f"{tag}/{'flow' if i % 2 else 'temp'}", base + i, float(i), 192) for i in range(n)
    ]
    return encode_batch(Batch(sequence=sequence, values=values))


def _post(client: httpx.Client, token: str, body: bytes, **headers: str) -> httpx.Response:
    return client.post(
        PATH,
        content=body,
        headers={"authorization": f"Bearer {token}", "content-type": "application/json", **headers},
    )


def _verified(server: RunningServer) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, verify=server.ssl_context(), timeout=TIMEOUT)


def _stamps(server: RunningServer, tag: str) -> tuple[list[int], list[int]]:
    """Stored timestamps of the asset's points (sorted, duplicates kept) and receipt sequences."""
    stored = _python(server, _STORED, tag)
    stamps = sorted(ts for rows in stored["rows"].values() for ts, _v, _q in rows)
    return stamps, stored["receipts"]


@dataclass(frozen=True)
class Plant:
    tag: str
    token: str = field(repr=False)
    base: int = field(default_factory=lambda: int(time.time() * 1000) - 60_000)


@pytest.fixture
def plant(server: RunningServer) -> Plant:
    made = _python(server, _MAKE_PLANT)
    return Plant(tag=made["tag"], token=register_canary(made["token"]))


def test_a_batch_over_verified_tls_is_acked(server: RunningServer, plant: Plant) -> None:
    with _verified(server) as client:
        reply = _post(client, plant.token, _batch(plant.tag, 1, plant.base))
    assert reply.status_code == 200, reply.text
    assert reply.headers["content-type"] == "application/json"
    assert reply.headers["strict-transport-security"].startswith("max-age=")
    assert reply.json() == {
        "acked_sequence": 1,
        "accepted": True,
        "duplicate": False,
        "desired_config_version": 0,
        "update_available": None,
        "rotate_credential": False,
    }
    assert _stamps(server, plant.tag) == ([plant.base + i for i in range(20)], [1])


def test_one_batch_from_four_connections_is_stored_once(
    server: RunningServer, plant: Plant
) -> None:
    body = _batch(plant.tag, 1, plant.base, n=40)
    barrier = threading.Barrier(4)
    replies: list[httpx.Response] = []
    errors: list[BaseException] = []

    def send() -> None:
        try:
            with _verified(server) as client:
                client.get("/healthz")  # the TLS connection is up before the race starts
                barrier.wait(timeout=10)
                replies.append(_post(client, plant.token, body))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert [r.status_code for r in replies] == [200] * 4, [r.text for r in replies]
    assert sorted(r.json()["duplicate"] for r in replies) == [False, True, True, True]
    assert {r.json()["acked_sequence"] for r in replies} == {1}
    assert _stamps(server, plant.tag) == ([plant.base + i for i in range(40)], [1])


def test_a_gzip_body_is_accepted(server: RunningServer, plant: Plant) -> None:
    body = gzip.compress(_batch(plant.tag, 1, plant.base))
    with _verified(server) as client:
        reply = _post(client, plant.token, body, **{"content-encoding": "gzip"})
    assert reply.status_code == 200, reply.text
    assert reply.json()["acked_sequence"] == 1
    assert _stamps(server, plant.tag) == ([plant.base + i for i in range(20)], [1])


def test_plain_http_is_refused_and_nothing_sent_in_the_clear_is_stored(
    server: RunningServer, plant: Plant
) -> None:
    body = _batch(plant.tag, 1, plant.base)
    auth = {"authorization": f"Bearer {plant.token}"}
    with httpx.Client(timeout=TIMEOUT) as insecure:
        # The TLS port does not speak plain HTTP: the connection ends without an answer.
        with pytest.raises(httpx.TransportError):
            insecure.post(f"http://127.0.0.1:{server.https_port}{PATH}", content=body, headers=auth)
        # The HTTP port (the redirect listener) refuses API paths without reading them.
        refused = insecure.post(f"{server.http_url}{PATH}", content=body, headers=auth)
    assert refused.status_code == 403
    assert refused.json()["code"] == "https_required"
    assert "location" not in refused.headers  # no redirect that would resend the credential
    assert _stamps(server, plant.tag) == ([], [])
    with _verified(server) as client:
        reply = _post(client, plant.token, body)
    assert (reply.json()["acked_sequence"], reply.json()["duplicate"]) == (1, False)


def test_the_credential_never_reaches_the_server_log(server: RunningServer, plant: Plant) -> None:
    with _verified(server) as client:
        assert _post(client, plant.token, _batch(plant.tag, 1, plant.base)).status_code == 200
        unknown = _post(client, plant.token, _batch("NO-SUCH-TAG", 2, plant.base))
        assert unknown.status_code == 422
        assert unknown.json()["code"] == "point_unknown"
        wrong = _post(client, plant.token + "x", _batch(plant.tag, 2, plant.base))
        assert wrong.status_code == 401
    with httpx.Client(timeout=TIMEOUT) as insecure, pytest.raises(httpx.TransportError):
        insecure.post(
            f"http://127.0.0.1:{server.https_port}{PATH}",
            content=b"{}",
            headers={"authorization": f"Bearer {plant.token}"},
        )
    log = server.log_text()
    assert "POST /edge/v1/telemetry" in log  # the access log is there, and was written
    for secret in (plant.token, plant.token + "x"):
        assert secret not in log
