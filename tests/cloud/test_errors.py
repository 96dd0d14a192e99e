"""The one HTTP mapping of errors: stable codes, one body shape, no echoed secrets."""

from __future__ import annotations

from typing import get_args

import pytest
from ninja import NinjaAPI, Schema
from ninja.testing import TestClient

from fieldlink.cloud.errors import STATUS_BY_KIND, install_api_error_handlers
from fieldlink.kit.errors import ErrorKind, NotFoundError, RateLimitedError


class PasswordIn(Schema):
    email: str
    password: str
    count: int


def _api() -> NinjaAPI:
    api = NinjaAPI(urls_namespace="errors-test")
    install_api_error_handlers(api)

    @api.post("/signup")
    def signup(request: object, payload: PasswordIn) -> dict[str, str]:
        return {"ok": "yes"}

    @api.get("/missing")
    def missing(request: object) -> None:
        raise NotFoundError("No such asset.")

    @api.get("/slow-down")
    def slow_down(request: object) -> None:
        raise RateLimitedError("Too many attempts.", retry_after=30, limit="sign_in_per_account")

    @api.get("/boom")
    def boom(request: object) -> None:
        raise RuntimeError("internal detail that must not leak")

    return api


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(_api())


def test_validation_error_names_fields_but_never_echoes_the_submitted_password(
    client: TestClient, canary: object
) -> None:
    secret = canary("password")  # type: ignore[operator]
    response = client.post(
        "/signup", json={"email": "a@b.example", "password": secret, "count": "not-a-number"}
    )
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "validation_error"
    assert body["details"]["errors"][0]["field"].endswith("count")
    assert secret not in response.content.decode()
    assert "not-a-number" not in response.content.decode()


def test_fieldlink_error_maps_to_its_status_with_a_stable_code(client: TestClient) -> None:
    response = client.get("/missing")
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "message": "No such asset.", "details": {}}


def test_rate_limited_error_says_retry_after_and_names_the_limit(client: TestClient) -> None:
    response = client.get("/slow-down")
    assert response.status_code == 429
    assert response["Retry-After"] == "30"
    assert response.json()["details"] == {"limit": "sign_in_per_account"}


def test_unexpected_exception_is_500_without_internals(client: TestClient) -> None:
    response = client.get("/boom")
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    assert "internal detail" not in response.content.decode()


def test_every_error_kind_has_exactly_one_status() -> None:
    assert set(get_args(ErrorKind)) == set(STATUS_BY_KIND)
