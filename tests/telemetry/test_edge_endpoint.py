"""The edge endpoint through the real ASGI stack (guard, router, lean handler)."""

from __future__ import annotations

import asyncio
import gzip
import json

import httpx
import pytest
from django.utils import timezone

from fieldlink.cloud.asgi import application
from fieldlink.protocol.telemetry import encode_batch
from fieldlink.telemetry import ingest
from tests.telemetry.ingest_support import batch_for, make_plant

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.backend]

URL = "https://localhost/edge/v1/telemetry"


def post(
    body: bytes, token: str | None, *, headers: dict[str, str] | None = None, url: str = URL
) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=application)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport) as client:
            h = {"content-type": "application/json", **(headers or {})}
            if token is not None:
                h["authorization"] = f"Bearer {token}"
            return await client.post(url, content=body, headers=h)

    return asyncio.run(go())


def test_batch_is_acked_and_a_replay_is_a_duplicate() -> None:
    plant = make_plant()
    body = encode_batch(batch_for(plant, 1))
    first = post(body, plant.token)
    assert first.status_code == 200, first.text
    assert first.json() == {
        "acked_sequence": 1,
        "accepted": True,
        "duplicate": False,
        "desired_config_version": 0,
        "update_available": None,
        "rotate_credential": False,
    }
    assert first.headers["x-content-type-options"] == "nosniff"
    assert post(body, plant.token).json()["duplicate"] is True


def test_gzip_body_is_accepted_and_a_gzip_bomb_is_413() -> None:
    plant = make_plant()
    ok = post(
        gzip.compress(encode_batch(batch_for(plant, 1))),
        plant.token,
        headers={"content-encoding": "gzip"},
    )
    assert ok.status_code == 200
    bomb = gzip.compress(b" " * (9 * 1024 * 1024))
    refused = post(bomb, plant.token, headers={"content-encoding": "gzip"})
    assert (refused.status_code, refused.json()["code"]) == (413, "body_too_large")


def test_truncated_gzip_is_422() -> None:
    plant = make_plant()
    packed = gzip.compress(encode_batch(batch_for(plant, 1)))[:-5]
    r = post(packed, plant.token, headers={"content-encoding": "gzip"})
    assert (r.status_code, r.json()["code"]) == (422, "body_malformed")


def test_ten_megabyte_body_is_413() -> None:
    plant = make_plant()
    r = post(b"[" * (10 * 1024 * 1024), plant.token)
    assert r.status_code == 413


@pytest.mark.parametrize("token", [None, "", "fld_" + "x" * 43, "not-a-token"])
def test_missing_or_invalid_credential_is_401(token: str | None) -> None:
    plant = make_plant()
    r = post(encode_batch(batch_for(plant, 1)), token)
    assert (r.status_code, r.json()["code"]) == (401, "device_credential_invalid")


def test_revoked_credential_is_401() -> None:
    plant = make_plant()
    plant.device.revoked_at = timezone.now()
    plant.device.save(update_fields=["revoked_at"])
    r = post(encode_batch(batch_for(plant, 1)), plant.token)
    assert r.status_code == 401


def test_nan_value_is_422_naming_the_index_and_nothing_is_stored() -> None:
    plant = make_plant()
    doc = json.loads(encode_batch(batch_for(plant, 1)))
    text = json.dumps(doc).replace('"sequence": 1', '"sequence": 1').encode()
    body = text.replace(b"5.0", b"NaN")
    r = post(body, plant.token)
    assert r.status_code == 422
    assert r.json()["code"] in {"value_invalid", "body_malformed"}
    assert post(encode_batch(batch_for(plant, 1)), plant.token).json()["duplicate"] is False


def test_cross_tenant_ingestion_refused_over_http() -> None:
    mine, theirs = make_plant("mine"), make_plant("theirs")
    r = post(encode_batch(batch_for(theirs, 1)), mine.token)
    assert (r.status_code, r.json()["code"]) == (422, "point_unknown")


def test_rate_limited_batch_is_429_with_retry_after_naming_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plant = make_plant()
    monkeypatch.setitem(ingest.LIMITS, False, ingest.Limit("device_live", 5, 60))
    r = post(encode_batch(batch_for(plant, 1, n=6)), plant.token)
    assert r.status_code == 429
    assert r.json()["details"]["limit"] == "device_live"
    assert int(r.headers["retry-after"]) >= 1
    backlog = post(encode_batch(batch_for(plant, 1, n=6, backlog=True)), plant.token)
    assert backlog.status_code == 200


def test_plain_http_is_refused() -> None:
    plant = make_plant()
    r = post(
        encode_batch(batch_for(plant, 1)), plant.token, url="http://localhost/edge/v1/telemetry"
    )
    assert (r.status_code, r.json()["code"]) == (403, "https_required")
