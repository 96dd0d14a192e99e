"""The profile (web and GET /api/v1/me) and the REST API's one rule: no credentials, no data."""

from __future__ import annotations

import base64
import re
import uuid
from datetime import datetime
from typing import Any

import pytest

from fieldlink.accounts.models import SecurityEventKind
from fieldlink.cloud.api import api
from tests.accounts.conftest import (
    FIREFOX_LINUX,
    SAFARI_IPHONE,
    MakeClient,
    MakeUser,
    SecureClient,
    sign_in,
)
from tests.plugins.log_canary import register_canary

# Operations anyone may call; every other one needs a session, a session token or an API key.
PUBLIC_OPERATIONS = {("GET", "/api/v1/ops/version")}
HTTP_METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value)


@pytest.mark.backend
@pytest.mark.django_db
def test_profile_and_me_api_show_last_and_previous_sign_in(
    make_user: MakeUser, make_client: MakeClient
) -> None:
    user = make_user("profile@plant.example")
    desk = make_client(user_agent=FIREFOX_LINUX, ip="198.51.100.1")
    assert sign_in(desk, user.email).status_code == 302
    first = desk.get("/api/v1/me").json()
    assert first["authenticated_via"] == "session"
    assert first["last_sign_in"]["ip"] == "198.51.100.1"
    assert first["previous_sign_in"] is None

    phone = make_client(user_agent=SAFARI_IPHONE, ip="198.51.100.2")
    assert sign_in(phone, user.email).status_code == 302
    me = phone.get("/api/v1/me").json()
    last, previous = me["last_sign_in"], me["previous_sign_in"]
    assert (last["ip"], last["device"]) == ("198.51.100.2", "Mobile Safari on iOS")
    assert (previous["ip"], previous["device"]) == ("198.51.100.1", "Firefox on Linux")
    assert _at(previous["at"]) <= _at(last["at"])
    for when in (last["at"], previous["at"]):
        assert _at(when).utcoffset() is not None
        assert _at(when).utcoffset().total_seconds() == 0  # type: ignore[union-attr]

    # The desk session sees the same two sign-ins: they belong to the account, not the session.
    assert desk.get("/api/v1/me").json()["last_sign_in"] == last

    page = phone.get("/me/")
    assert page.status_code == 200
    assert page.context["last_sign_in"].ip == "198.51.100.2"
    assert page.context["previous_sign_in"].ip == "198.51.100.1"
    html = page.content.decode()
    for shown in (last, previous):
        assert shown["ip"] in html
        assert shown["device"] in html
        assert _at(shown["at"]).strftime("%Y-%m-%d %H:%M") in html
    assert "UTC" in html


@pytest.mark.backend
@pytest.mark.django_db
def test_security_history_api_lists_events_with_ip_and_device(
    make_user: MakeUser, make_client: MakeClient
) -> None:
    user = make_user("history.api@plant.example")
    client = make_client(user_agent=SAFARI_IPHONE, ip="192.0.2.9")
    client.force_login(user)
    created = client.post("/api/v1/me/api-keys", {"name": "n"}, content_type="application/json")
    secret = register_canary(created.json()["key"])
    response = client.get("/api/v1/me/security-history")
    assert response.status_code == 200
    events = response.json()
    assert events[0]["kind"] == SecurityEventKind.API_KEY_CREATED
    assert events[0]["ip"] == "192.0.2.9"
    assert events[0]["device"] == "Mobile Safari on iOS"
    assert {"at", "kind", "ip", "device"} == set(events[0])
    assert secret not in response.content.decode()


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    schema = api.get_openapi_schema()
    found = []
    for path, item in schema["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                found.append((method.upper(), path, item[method]))
    return found


def _concrete(path: str) -> str:
    # Any well-formed id will do: the request must be refused before anything is looked up.
    return re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)


def _assert_unauthenticated(response: Any, what: str) -> None:
    assert response.status_code == 401, f"{what}: {response.status_code}"
    assert response["Content-Type"].startswith("application/json"), what
    body = response.json()
    assert body["code"] == "unauthenticated", what
    assert body["message"], what
    assert set(body) == {"code", "message", "details"}, what


def _call(
    client: SecureClient, method: str, path: str, ip: str = "127.0.0.1", **headers: str
) -> Any:
    return client.generic(
        method,
        _concrete(path),
        data="{}",
        content_type="application/json",
        headers=headers,
        REMOTE_ADDR=ip,
    )


def test_the_api_has_only_the_known_public_operations() -> None:
    public = {(method, path) for method, path, op in _operations() if not op.get("security")}
    assert public == PUBLIC_OPERATIONS


@pytest.mark.backend
@pytest.mark.django_db
def test_every_rest_endpoint_requires_authentication(make_client: MakeClient) -> None:
    operations = [(m, p) for m, p, _ in _operations() if (m, p) not in PUBLIC_OPERATIONS]
    assert ("GET", "/api/v1/me") in operations
    assert len(operations) >= 6
    # A browser with a stale cookie is no better off than one with none.
    stale = make_client()
    stale.cookies["__Host-fieldlink-session"] = "x" * 32
    for client in (make_client(), stale):
        for method, path in operations:
            _assert_unauthenticated(_call(client, method, path), f"{method} {path}")


@pytest.mark.backend
@pytest.mark.django_db
def test_foreign_or_garbage_credentials_are_401_everywhere(make_client: MakeClient) -> None:
    basic = base64.b64encode(b"admin@fieldlink.example:correct-horse-battery").decode()
    attempts: list[dict[str, str]] = [
        {"Authorization": f"Basic {basic}"},
        {"Authorization": "Bearer not-a-fieldlink-key-at-all"},
        {"Authorization": "Bearer "},
        {"Authorization": "Token flk_abcdefgh_0123456789012345678901234567890123"},
        {"Authorization": "flk_abcdefgh_0123456789012345678901234567890123"},
        {"Authorization": "Digest username=admin, response=0000"},
        {"X-Session-Token": "0" * 32},
        {"X-Api-Key": "flk_abcdefgh_0123456789012345678901234567890123"},
    ]
    operations = [(m, p) for m, p, _ in _operations() if (m, p) not in PUBLIC_OPERATIONS]
    client = make_client()
    for number, (headers, (method, path)) in enumerate(
        (h, op) for h in attempts for op in operations
    ):
        # A fresh address per call keeps the invalid-key limit (429) out of this test.
        address = f"10.77.{number // 250}.{number % 250 + 1}"
        response = _call(client, method, path, address, **headers)
        _assert_unauthenticated(response, f"{headers} {method} {path}")


@pytest.mark.backend
@pytest.mark.django_db
def test_public_version_endpoint_needs_no_credentials(make_client: MakeClient) -> None:
    response = make_client().get("/api/v1/ops/version")
    assert response.status_code == 200
    assert response.json()["api"] == "1"
