"""Shared fixtures of the accounts tests: users with a verified address, HTTPS test clients.

``make_user(email, password=PASSWORD, verified=True, **fields)`` creates a user whose e-mail
address is known to allauth (verified unless told otherwise); users with the same password share
one bcrypt hash, so creating many costs one hash. ``make_client(user_agent=..., ip=...,
enforce_csrf_checks=...)`` gives a Django test ``Client`` that speaks HTTPS on every request (the
app is HTTPS-only and its cookies are ``Secure``/``__Host-``). ``sign_in``/``sign_out`` drive
allauth's own pages; ``found_in_database``/``found_in_cache`` say where a string is stored raw.
The cache (rate-limit counters) is cleared around every test here.

Every secret used here is registered with the log canary, so the session-end sweep checks it."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest
from allauth.account.models import EmailAddress
from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.core import mail
from django.core.cache import cache, caches
from django.core.cache.backends.locmem import LocMemCache
from django.core.cache.backends.redis import RedisCache
from django.db import connection
from django.test import Client

from fieldlink.accounts.models import User
from fieldlink.accounts.passwords import MIN_LENGTH as SINGLE_FACTOR_MIN_LENGTH
from tests.plugins.log_canary import register_canary

# Passes the policy: long, not on a blocklist, zxcvbn score >= 3, nothing personal.
PASSWORD = register_canary("violet-harbor-quantum-lantern-97")
OTHER_PASSWORD = register_canary("copper-meadow-glacier-sonnet-41")
THIRD_PASSWORD = register_canary("amber-tundra-falcon-riddle-58")

FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)

# bcrypt at cost 12 costs ~0.25 s per hash: users sharing a password share one hash (each has
# its own salt in production; for tests the cost, not the salt, is what matters).
_hashes: dict[str, str] = {}
_CANARY_MIN_LENGTH = 12


def _register(secret: str) -> None:
    # Shorter strings cannot be canaries (they would turn up by coincidence).
    if len(secret) >= _CANARY_MIN_LENGTH:
        register_canary(secret)


class SecureClient(Client):
    """A test client whose every request arrives over HTTPS (redirects followed included)."""

    def generic(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["secure"] = True
        return super().generic(*args, **kwargs)


class MakeUser(Protocol):
    def __call__(
        self, email: str, password: str | None = ..., *, verified: bool = ..., **fields: Any
    ) -> User: ...


class MakeClient(Protocol):
    def __call__(
        self, *, user_agent: str = ..., ip: str = ..., enforce_csrf_checks: bool = ...
    ) -> SecureClient: ...


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    # Rate-limit counters live in the cache; one test's failures must not limit the next.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def make_user(db: None) -> MakeUser:
    def make(
        email: str, password: str | None = PASSWORD, *, verified: bool = True, **fields: Any
    ) -> User:
        user = User(email=User.objects.normalize_email(email), **fields)
        if password is None:
            user.set_unusable_password()
        else:
            _register(password)
            if password not in _hashes:
                _hashes[password] = make_password(password)
            user.password = _hashes[password]
            user.password_ok_without_mfa = len(password) >= SINGLE_FACTOR_MIN_LENGTH
        user.save()
        EmailAddress.objects.create(user=user, email=user.email, verified=verified, primary=True)
        return user

    return make


@pytest.fixture
def make_client() -> MakeClient:
    def make(
        *,
        user_agent: str = FIREFOX_LINUX,
        ip: str = "127.0.0.1",
        enforce_csrf_checks: bool = False,
    ) -> SecureClient:
        return SecureClient(
            enforce_csrf_checks=enforce_csrf_checks, HTTP_USER_AGENT=user_agent, REMOTE_ADDR=ip
        )

    return make


@pytest.fixture
def web(make_client: MakeClient) -> SecureClient:
    return make_client()


def sign_in(client: Client, email: str, password: str = PASSWORD) -> Any:
    response = client.post("/accounts/login/", {"login": email, "password": password})
    session = client.cookies.get(settings.SESSION_COOKIE_NAME)
    if session is not None:
        _register(session.value)  # a session id is as good as the password
    return response


def sign_out(client: Client) -> Any:
    return client.post("/accounts/logout/")


def is_signed_in(client: Client) -> bool:
    return bool(client.get("/api/v1/me").status_code == 200)


_LINK = re.compile(r"https://[^\s\"'<>]+")


def links_in(mail_or_text: mail.EmailMessage | str) -> list[str]:
    text = mail_or_text if isinstance(mail_or_text, str) else str(mail_or_text.body)
    return _LINK.findall(text)


def link_in(mail_or_text: mail.EmailMessage | str, containing: str) -> str:
    found = [link for link in links_in(mail_or_text) if containing in link]
    assert found, f"no link containing {containing!r} in the mail"
    return found[0]


def path_of(url: str) -> str:
    return re.sub(r"^https://[^/]+", "", url)


Canary = Callable[[str], str]


def _as_text(value: object) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def found_in_database(needle: str) -> list[str]:
    """Every ``table.column`` of every table whose stored value contains ``needle``."""
    found = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            columns = [
                column.name
                for column in connection.introspection.get_table_description(cursor, table)
            ]
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608 -- names from introspection
            for row in cursor.fetchall():
                found += [
                    f"{table}.{column}"
                    for column, value in zip(columns, row, strict=True)
                    if value is not None and needle in _as_text(value)
                ]
    return found


def found_in_cache(needle: str) -> list[str]:
    """Every cache key whose raw stored value (as pickled by the backend) contains ``needle``."""
    raw = needle.encode()
    backend = caches["default"]
    if isinstance(backend, LocMemCache):
        entries = list(backend._cache.items())  # type: ignore[attr-defined]
    elif isinstance(backend, RedisCache):
        client = backend._cache.get_client()
        entries = [(key.decode(), client.get(key)) for key in client.scan_iter()]
    else:  # pragma: no cover - only the two configured backends exist
        raise TypeError(f"cannot read raw entries of {type(backend).__name__}")
    return [str(key) for key, value in entries if value is not None and raw in value]
