"""Mobile apps: allauth headless (app client) sign-in, then the REST API by session token."""

from __future__ import annotations

import json

import pytest
from allauth.mfa.totp.internal.auth import TOTP, generate_totp_secret

from tests.accounts.conftest import PASSWORD, MakeClient, MakeUser
from tests.plugins.log_canary import register_canary

pytestmark = [pytest.mark.django_db, pytest.mark.backend]

LOGIN = "/_allauth/app/v1/auth/login"


def _post_json(client: object, path: str, body: dict[str, str], **headers: str) -> object:
    return client.post(  # type: ignore[attr-defined]
        path, data=json.dumps(body), content_type="application/json", headers=headers
    )


def test_app_signs_in_and_calls_the_api_with_its_session_token(
    make_user: MakeUser, make_client: MakeClient
) -> None:
    make_user("mobile@plant.example")
    app = make_client(enforce_csrf_checks=True)  # an app has no CSRF cookie; none is needed
    response = _post_json(app, LOGIN, {"email": "mobile@plant.example", "password": PASSWORD})
    assert response.status_code == 200  # type: ignore[attr-defined]
    token = register_canary(response.json()["meta"]["session_token"])  # type: ignore[attr-defined]

    me = app.get("/api/v1/me", headers={"X-Session-Token": token})
    assert me.status_code == 200
    assert me.json()["authenticated_via"] == "session_token"
    assert me.json()["last_sign_in"] is not None

    out = app.delete("/_allauth/app/v1/auth/session", headers={"X-Session-Token": token})
    assert out.status_code == 401  # allauth: "no longer authenticated"
    assert app.get("/api/v1/me", headers={"X-Session-Token": token}).status_code == 401


def test_forged_session_token_is_refused(make_client: MakeClient) -> None:
    app = make_client()
    response = app.get("/api/v1/me", headers={"X-Session-Token": "forged-token-0123456789"})
    assert response.status_code == 401
    assert response.json()["code"] == "unauthenticated"


def test_app_sign_in_with_totp_needs_the_second_step(
    make_user: MakeUser, make_client: MakeClient
) -> None:
    user = make_user("mobile-mfa@plant.example")
    TOTP.activate(user, register_canary(generate_totp_secret()))
    app = make_client()
    response = _post_json(app, LOGIN, {"email": user.email, "password": PASSWORD})
    assert response.status_code == 401  # type: ignore[attr-defined]
    body = response.json()  # type: ignore[attr-defined]
    pending = [flow["id"] for flow in body["data"]["flows"] if flow.get("is_pending")]
    assert pending == ["mfa_authenticate"]
    token = register_canary(body["meta"]["session_token"])
    # The half-finished sign-in grants nothing yet.
    assert app.get("/api/v1/me", headers={"X-Session-Token": token}).status_code == 401


def test_app_wrong_password_and_unknown_user_look_the_same(
    make_user: MakeUser, make_client: MakeClient
) -> None:
    make_user("known@plant.example")
    wrong = _post_json(
        make_client(ip="10.1.0.1"),
        LOGIN,
        {"email": "known@plant.example", "password": "not-the-password-at-all"},
    )
    unknown = _post_json(
        make_client(ip="10.1.0.2"),
        LOGIN,
        {"email": "nobody@plant.example", "password": "not-the-password-at-all"},
    )
    assert wrong.status_code == unknown.status_code == 400  # type: ignore[attr-defined]
    assert wrong.json() == unknown.json()  # type: ignore[attr-defined]
