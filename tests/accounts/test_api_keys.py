"""Personal API keys: shown once, stored as a hash, scoped, expiring, revocable, rotatable."""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from fieldlink.accounts import services
from fieldlink.accounts.auth import API_KEY_FAILURE_RATE
from fieldlink.accounts.models import ApiKey, ApiKeyScope, SecurityEvent, SecurityEventKind, User
from tests.accounts.conftest import (
    SAFARI_IPHONE,
    MakeClient,
    MakeUser,
    SecureClient,
    found_in_cache,
    found_in_database,
)
from tests.plugins.log_canary import register_canary

pytestmark = [pytest.mark.backend, pytest.mark.django_db]

KEYS = "/api/v1/me/api-keys"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _create(client: SecureClient, *, scope: str = "read", name: str = "scada export") -> Any:
    response = client.post(
        KEYS, {"name": name, "scope": scope, "lifetime_days": 30}, content_type="application/json"
    )
    assert response.status_code == 201, response.content
    created = response.json()
    register_canary(created["key"])
    return created


@pytest.fixture
def owner(make_user: MakeUser) -> User:
    return make_user("key.owner@plant.example")


@pytest.fixture
def session(make_client: MakeClient, owner: User) -> SecureClient:
    # force_login: these tests are about keys, not passwords (and bcrypt is slow on purpose).
    client = make_client(ip="198.51.100.5", user_agent=SAFARI_IPHONE)
    client.force_login(owner)
    return client


@pytest.fixture
def script(make_client: MakeClient) -> SecureClient:
    """A client with no session at all: it has only whatever key it presents."""
    return make_client(ip="203.0.113.5", user_agent="fieldlink-export/1.0 python-httpx/0.28")


def _assert_error(response: Any, status: int, code: str) -> None:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["code"] == code
    assert isinstance(body["message"], str)
    assert body["message"]


def test_api_key_is_shown_once(session: SecureClient) -> None:
    created = _create(session, scope="read_write")
    key = created["key"]
    assert key.startswith(created["prefix"] + "_")
    assert created["prefix"].startswith("flk_")
    assert created["scope"] == "read_write"

    listed = session.get(KEYS)
    assert listed.status_code == 200
    (item,) = listed.json()
    assert item["id"] == created["id"]
    assert item["prefix"] == created["prefix"]
    assert "key" not in item
    assert key not in listed.content.decode()
    assert key not in session.get("/me/api-keys/").content.decode()


def test_api_key_is_stored_only_as_hash(session: SecureClient, script: SecureClient) -> None:
    created = _create(session)
    key = created["key"]
    assert script.get("/api/v1/me", headers=_bearer(key)).status_code == 200
    random_part = key.removeprefix(created["prefix"] + "_")
    assert len(random_part) >= 43  # 32 random bytes
    digest = hashlib.sha256(key.encode()).hexdigest()
    for needle in (key, random_part):
        assert found_in_database(needle) == []
        assert found_in_cache(needle) == []
    assert found_in_database(digest) == ["accounts_apikey.digest"]


def test_api_key_authenticates_and_records_last_use(
    session: SecureClient, script: SecureClient, owner: User
) -> None:
    created = _create(session)
    assert ApiKey.objects.get(id=created["id"]).last_used_at is None

    response = script.get("/api/v1/me", headers=_bearer(created["key"]))
    assert response.status_code == 200
    me = response.json()
    assert me["authenticated_via"] == "api_key"
    assert me["email"] == owner.email

    used = ApiKey.objects.get(id=created["id"])
    assert used.last_used_at is not None
    assert timezone.now() - used.last_used_at < timedelta(minutes=1)
    assert used.last_used_ip == "203.0.113.5"
    listed = session.get(KEYS).json()[0]
    assert listed["last_used_ip"] == "203.0.113.5"


def test_read_only_api_key_cannot_write(session: SecureClient, script: SecureClient) -> None:
    created = _create(session, scope="read")
    key = created["key"]
    assert script.get(KEYS, headers=_bearer(key)).status_code == 200
    wrote = script.post(
        KEYS, {"name": "escalate"}, content_type="application/json", headers=_bearer(key)
    )
    _assert_error(wrote, 403, "api_key_scope")
    deleted = script.delete(f"{KEYS}/{created['id']}", headers=_bearer(key))
    _assert_error(deleted, 403, "api_key_scope")
    assert ApiKey.objects.count() == 1
    assert ApiKey.objects.get().revoked_at is None


def test_read_write_api_key_can_write(session: SecureClient, script: SecureClient) -> None:
    key = _create(session, scope="read_write")["key"]
    # No session, hence no CSRF token: a key is not ambient authority a browser could replay.
    second = script.post(
        KEYS,
        {"name": "made by a script", "scope": "read"},
        content_type="application/json",
        headers=_bearer(key),
    )
    assert second.status_code == 201
    register_canary(second.json()["key"])


def test_expired_api_key_is_refused(session: SecureClient, script: SecureClient) -> None:
    created = _create(session)
    ApiKey.objects.filter(id=created["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    _assert_error(script.get("/api/v1/me", headers=_bearer(created["key"])), 401, "unauthenticated")
    rotated = session.post(
        f"{KEYS}/{created['id']}/rotate", {"overlap_hours": 1}, content_type="application/json"
    )
    _assert_error(rotated, 422, "api_key_invalid")


def test_revoked_api_key_is_refused_and_both_events_are_recorded(
    session: SecureClient, script: SecureClient, owner: User
) -> None:
    created = _create(session)
    assert script.get("/api/v1/me", headers=_bearer(created["key"])).status_code == 200
    revoked = session.delete(f"{KEYS}/{created['id']}")
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    _assert_error(script.get("/api/v1/me", headers=_bearer(created["key"])), 401, "unauthenticated")

    events = {
        e.kind: e
        for e in SecurityEvent.objects.filter(
            user=owner,
            kind__in=[SecurityEventKind.API_KEY_CREATED, SecurityEventKind.API_KEY_REVOKED],
        )
    }
    assert set(events) == {SecurityEventKind.API_KEY_CREATED, SecurityEventKind.API_KEY_REVOKED}
    for event in events.values():
        assert event.ip == "198.51.100.5"
        assert event.device == "Mobile Safari on iOS"
        assert event.details["key_prefix"] == created["prefix"]
        assert created["key"] not in str(event.details)


def test_rotated_key_keeps_the_old_one_only_for_the_overlap(
    session: SecureClient, script: SecureClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = _create(session, scope="read_write")
    rotated = session.post(
        f"{KEYS}/{old['id']}/rotate", {"overlap_hours": 1}, content_type="application/json"
    )
    assert rotated.status_code == 201
    new = rotated.json()
    register_canary(new["key"])
    assert new["key"] != old["key"]
    assert new["scope"] == old["scope"]
    assert new["name"] == old["name"]

    for key in (old["key"], new["key"]):
        assert script.get("/api/v1/me", headers=_bearer(key)).status_code == 200

    # Time passes beyond the overlap (everything that asks for "now" sees the later time).
    later = timezone.now() + timedelta(hours=1, minutes=1)
    monkeypatch.setattr(timezone, "now", lambda: later)
    _assert_error(script.get("/api/v1/me", headers=_bearer(old["key"])), 401, "unauthenticated")
    assert script.get("/api/v1/me", headers=_bearer(new["key"])).status_code == 200


def test_rotation_with_zero_overlap_ends_the_old_key_at_once(
    session: SecureClient, script: SecureClient
) -> None:
    old = _create(session)
    rotated = session.post(
        f"{KEYS}/{old['id']}/rotate", {"overlap_hours": 0}, content_type="application/json"
    )
    assert rotated.status_code == 201
    new_key = register_canary(rotated.json()["key"])
    _assert_error(script.get("/api/v1/me", headers=_bearer(old["key"])), 401, "unauthenticated")
    assert script.get("/api/v1/me", headers=_bearer(new_key)).status_code == 200


def test_keys_whose_random_part_holds_underscores_authenticate(
    owner: User, script: SecureClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # token_urlsafe draws "_" and "-" too: about half of all real keys have one after the prefix.
    monkeypatch.setattr(secrets, "token_urlsafe", lambda n: ("Ab_c-" * 20)[: (4 * n + 2) // 3])
    issued = services.create_api_key(owner, name="underscored", scope=ApiKeyScope.READ)
    register_canary(issued.secret)
    assert "_" in issued.secret.removeprefix(issued.key.prefix + "_")
    assert "_" not in issued.key.prefix.removeprefix("flk_")
    response = script.get("/api/v1/me", headers=_bearer(issued.secret))
    assert response.status_code == 200
    assert response.json()["authenticated_via"] == "api_key"


def test_wrong_key_with_a_valid_prefix_is_refused(
    session: SecureClient, script: SecureClient
) -> None:
    created = _create(session)
    forged = register_canary(f"{created['prefix']}_{secrets.token_urlsafe(32)}")
    _assert_error(script.get("/api/v1/me", headers=_bearer(forged)), 401, "unauthenticated")
    # Nor does the prefix alone, or the key with its secret part cut short.
    for guess in (created["prefix"], created["key"][:-1]):
        _assert_error(script.get("/api/v1/me", headers=_bearer(guess)), 401, "unauthenticated")


def test_api_key_of_other_user_cannot_be_revoked(
    session: SecureClient, make_user: MakeUser, make_client: MakeClient, script: SecureClient
) -> None:
    victim_key = _create(session, scope="read_write")
    attacker = make_client(ip="192.0.2.66")
    attacker.force_login(make_user("attacker@elsewhere.example"))

    _assert_error(attacker.delete(f"{KEYS}/{victim_key['id']}"), 404, "api_key_not_found")
    rotate = attacker.post(
        f"{KEYS}/{victim_key['id']}/rotate", {"overlap_hours": 0}, content_type="application/json"
    )
    _assert_error(rotate, 404, "api_key_not_found")
    assert attacker.post(f"/me/api-keys/{victim_key['id']}/revoke/").status_code == 404
    page_rotate = attacker.post(f"/me/api-keys/{victim_key['id']}/rotate/", {"overlap_hours": "0"})
    assert page_rotate.status_code == 404
    assert attacker.get(KEYS).json() == []

    assert ApiKey.objects.get(id=victim_key["id"]).revoked_at is None
    assert script.get("/api/v1/me", headers=_bearer(victim_key["key"])).status_code == 200


def test_invalid_api_keys_are_rate_limited_per_ip(
    session: SecureClient, make_client: MakeClient
) -> None:
    allowed = int(API_KEY_FAILURE_RATE["api_key_failed"].split(",")[0].split("/")[0])
    good_key = _create(session)["key"]
    guesser = make_client(ip="203.0.113.66")
    for attempt in range(allowed):
        guess = f"flk_guess{attempt:04d}_{secrets.token_urlsafe(32)}"
        _assert_error(guesser.get("/api/v1/me", headers=_bearer(guess)), 401, "unauthenticated")

    limited = guesser.get("/api/v1/me", headers=_bearer("flk_guessmore_x" + "y" * 40))
    _assert_error(limited, 429, "rate_limited")
    assert int(limited["Retry-After"]) > 0
    # A forged X-Forwarded-For from an untrusted peer is no way around the limit.
    spoofed = guesser.get(
        "/api/v1/me",
        headers={**_bearer("flk_guessmore_z" + "y" * 40), "X-Forwarded-For": "10.9.8.7"},
    )
    _assert_error(spoofed, 429, "rate_limited")

    # The limit is the guesser's address, not everyone's.
    elsewhere = make_client(ip="203.0.113.67")
    assert elsewhere.get("/api/v1/me", headers=_bearer(good_key)).status_code == 200


def test_api_key_lifetime_is_bounded(session: SecureClient) -> None:
    for days in (0, 367):
        response = session.post(
            KEYS, {"name": "forever", "lifetime_days": days}, content_type="application/json"
        )
        _assert_error(response, 422, "validation_error")
    assert ApiKey.objects.count() == 0


def test_session_write_to_the_api_needs_the_csrf_token(
    make_client: MakeClient, owner: User
) -> None:
    browser = make_client(enforce_csrf_checks=True)
    browser.force_login(owner)
    payload = {"name": "from the browser"}
    same_origin = {"Referer": "https://testserver/me/api-keys/"}
    forged = browser.post(KEYS, payload, content_type="application/json", headers=same_origin)
    assert forged.status_code == 403
    assert ApiKey.objects.count() == 0

    assert browser.get("/me/api-keys/").status_code == 200  # sets the CSRF cookie
    token = browser.cookies["__Host-fieldlink-csrf"].value
    created = browser.post(
        KEYS,
        payload,
        content_type="application/json",
        headers={**same_origin, "X-CSRFToken": token},
    )
    assert created.status_code == 201
    register_canary(created.json()["key"])


def test_api_keys_page_shows_a_new_key_once(session: SecureClient) -> None:
    page = session.post(
        "/me/api-keys/", {"name": "historian", "scope": "read", "lifetime_days": "30"}
    )
    assert page.status_code == 200
    key = ApiKey.objects.get()
    issued = page.context["issued"]
    secret = register_canary(issued.secret)
    html = page.content.decode()
    assert secret in html
    assert "Copy your new key now" in html
    assert "shown only once" in html
    assert page["Cache-Control"].startswith("max-age=0") or "no-store" in page["Cache-Control"]

    again = session.get("/me/api-keys/").content.decode()
    assert secret not in again
    assert key.prefix in again
