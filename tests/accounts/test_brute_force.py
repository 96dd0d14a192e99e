"""Password guessing: limits per account and per client IP, no enumeration, reset while limited.

The limits are allauth's (``ACCOUNT_RATE_LIMITS``), kept in the Django cache; the adapter turns
a refusal into 429 with ``Retry-After``. Every accepted failure costs a bcrypt hash (~0.25 s), so
each test counts its failures with care.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from pathlib import Path
from typing import Any

import pytest
from allauth.account import app_settings as account_settings
from allauth.core.internal import ratelimit as allauth_ratelimit
from allauth.mfa.totp.internal.auth import (
    TOTP,
    format_hotp_value,
    generate_totp_secret,
    hotp_value,
)
from django.contrib.sessions.models import Session
from django.core import mail
from django.core.cache import cache
from django.test import Client
from django.test.utils import override_settings
from redis.exceptions import RedisError

from fieldlink.accounts import adapters
from fieldlink.accounts.models import ApiKeyScope, User
from fieldlink.accounts.services import create_api_key
from tests.accounts.conftest import (
    OTHER_PASSWORD,
    PASSWORD,
    MakeClient,
    MakeUser,
    SecureClient,
    link_in,
    path_of,
    sign_in,
)
from tests.accounts.test_rate_limit_processes import sign_in_over_https
from tests.plugins.log_canary import register_canary
from tests.support.server import free_port, run_server

pytestmark = [pytest.mark.backend, pytest.mark.django_db]

WRONG_PASSWORD = register_canary("wrong-guess-saffron-orbit-1234")

ACCOUNT_LIMIT = 5  # "5/5m/key"
IP_LIMIT = 10  # "10/m/ip"
HOURLY_ACCOUNT_LIMIT = 10  # "10/h/key"
POLICY_MAX_FAILURES_PER_ACCOUNT_PER_HOUR = 100
HOUR = 3600.0

ALICE = "alice@plant.example"
NOBODY = "nobody@plant.example"

_ip_counter = 0


def fresh_ip() -> str:
    """A client address not used before in this session: per-IP limits stay out of the way."""
    global _ip_counter  # noqa: PLW0603 -- one counter for the whole session is the point
    _ip_counter += 1
    return f"10.{(_ip_counter >> 16) & 255}.{(_ip_counter >> 8) & 255}.{_ip_counter & 255}"


@pytest.fixture
def alice(make_user: MakeUser) -> User:
    return make_user(ALICE)


def attempt(
    make_client: MakeClient, email: str, password: str, *, ip: str | None = None, **headers: Any
) -> Any:
    """One sign-in attempt from ``ip`` (by default an address of its own)."""
    client = make_client(ip=ip or fresh_ip())
    return client.post("/accounts/login/", {"login": email, "password": password}, **headers)


def exhaust_account_limit(make_client: MakeClient, email: str) -> None:
    for number in range(ACCOUNT_LIMIT):
        response = attempt(make_client, email, WRONG_PASSWORD)
        assert response.status_code == 200, f"failure {number + 1} was refused early"


_CSRF_TOKEN = re.compile(r'(name="csrfmiddlewaretoken" value=")[^"]+(")')


def normalised(body: bytes, *emails: str) -> str:
    text = _CSRF_TOKEN.sub(r"\1CSRF\2", body.decode())
    for email in emails:
        text = text.replace(email, "EMAIL")
    return text


def is_signed_in(client: Client) -> bool:
    return bool(client.get("/api/v1/me").status_code == 200)


def assert_limited(response: Any) -> None:
    assert response.status_code == 429
    assert int(response["Retry-After"]) > 0
    assert response["Content-Type"].startswith("text/html")
    assert b"Too many attempts" in response.content


# --- per account, per IP --------------------------------------------------------------------


def test_failed_sign_ins_are_limited_per_account_regardless_of_ip(
    alice: User, make_client: MakeClient
) -> None:
    exhaust_account_limit(make_client, ALICE)  # five different addresses

    # The sixth attempt, from yet another address and with the right password, is refused.
    client = make_client(ip=fresh_ip())
    refused = sign_in(client, ALICE, PASSWORD)
    assert_limited(refused)
    assert int(refused["Retry-After"]) <= 5 * 60
    assert not is_signed_in(client)

    # An address that matches no account is limited the same way, with the same page: the
    # refusal does not tell whether the account exists.
    exhaust_account_limit(make_client, NOBODY)
    refused_unknown = attempt(make_client, NOBODY, PASSWORD)
    assert_limited(refused_unknown)
    assert normalised(refused.content, ALICE) == normalised(refused_unknown.content, NOBODY)
    # Seconds pass between the two refusals; beyond that, the same wait.
    assert abs(int(refused["Retry-After"]) - int(refused_unknown["Retry-After"])) <= 2


def test_varying_host_header_or_letter_case_does_not_reset_the_account_limit(
    alice: User, make_client: MakeClient
) -> None:
    # allauth keyed the account counter by Host header (port included) and address; a client
    # chooses both spellings, so each variant must count against the one account.
    variants = [
        ("localhost:8443", ALICE),
        ("localhost:1", ALICE.upper()),
        ("localhost:2", f"  {ALICE}  "),
        ("127.0.0.1:3", "Alice@Plant.Example"),
        ("localhost", ALICE.capitalize()),
    ]
    for host, login in variants:
        response = attempt(make_client, login, WRONG_PASSWORD, HTTP_HOST=host)
        assert response.status_code == 200, (host, login)
    assert_limited(attempt(make_client, ALICE, PASSWORD, HTTP_HOST="localhost:4"))


def test_failed_sign_ins_are_limited_per_ip_across_usernames(
    alice: User, make_client: MakeClient
) -> None:
    ip = fresh_ip()
    for number in range(IP_LIMIT):
        response = attempt(make_client, f"guess-{number}@plant.example", WRONG_PASSWORD, ip=ip)
        assert response.status_code == 200, f"failure {number + 1} was refused early"

    # The next attempt from that address is refused, whatever account it names...
    client = make_client(ip=ip)
    assert_limited(sign_in(client, ALICE, PASSWORD))
    assert not is_signed_in(client)
    # ...while the account itself is not limited: its owner signs in from elsewhere.
    elsewhere = make_client(ip=fresh_ip())
    assert sign_in(elsewhere, ALICE, PASSWORD).status_code == 302
    assert is_signed_in(elsewhere)


# --- escalation: at most 100 failures per account per hour -----------------------------------


def max_in_window(capacity_rates: list[allauth_ratelimit.Rate], window: float) -> int:
    """The most hits that all these sliding-window rates together let through in ``window``.

    A rate of ``a`` per ``d`` lets at most ``a`` through in any span shorter than ``d``, and at
    most ``a * (floor(window / d) + 1)`` in a closed span of ``window`` (bursts at 0, d, 2d, …).
    Every rate must hold at once, so the tightest one bounds the total.
    """
    return int(
        min(rate.amount * (math.floor(window / rate.duration) + 1) for rate in capacity_rates)
    )


class FakeClock:
    """Stands in for the ``time`` module: wall-clock time moves only when told."""

    # What else the rate limiter uses of the module (lock waits), unchanged.
    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(time.sleep)

    def __init__(self) -> None:
        self.now = time.time()

    def time(self) -> float:
        return self.now


def test_limit_never_allows_more_than_100_failures_per_account_per_hour(
    alice: User, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # From the configuration: an attacker with unlimited addresses meets only the per-account
    # (key) rates.
    rates = allauth_ratelimit.get_rates(app="allauth.account", action="login_failed")
    per_account = [rate for rate in rates if rate.per == "key"]
    assert per_account, "no per-account limit on failed sign-ins"
    assert account_settings.RATE_LIMITS["login_failed"] == (
        "10/m/ip,60/h/ip,5/5m/key,10/h/key,20/d/key"
    ), "the figures below follow this configuration; update them together"
    bound = max_in_window(per_account, HOUR)
    assert bound <= POLICY_MAX_FAILURES_PER_ACCOUNT_PER_HOUR
    assert bound == 20

    # Empirically, on a clock we move: after the five-minute window passes, the hourly limit
    # still holds. Each step, the attacker tries (from fresh addresses) until refused.
    clock = FakeClock()
    monkeypatch.setattr(allauth_ratelimit, "time", clock)
    monkeypatch.setattr(adapters, "time", clock)
    start = clock.now
    accepted: list[float] = []
    refusals: list[tuple[float, int]] = []
    while clock.now - start < HOUR:
        while True:
            response = attempt(make_client, ALICE, WRONG_PASSWORD)
            if response.status_code == 429:
                refusals.append((clock.now - start, int(response["Retry-After"])))
                break
            assert response.status_code == 200
            accepted.append(clock.now)
        clock.now += 5 * 60 + 1

    # Five, then five more after five minutes, then nothing until the hour has passed.
    first_hour = [t for t in accepted if t - start < HOUR]
    assert len(first_hour) == HOURLY_ACCOUNT_LIMIT
    assert first_hour[ACCOUNT_LIMIT] - start >= 5 * 60
    busiest_hour = max(sum(1 for t in accepted if a <= t <= a + HOUR) for a in accepted)
    assert busiest_hour <= bound <= POLICY_MAX_FAILURES_PER_ACCOUNT_PER_HOUR
    # Refused in the hourly regime, Retry-After points to when the hour frees up (not 5 min).
    second_step = refusals[1]
    assert second_step[1] > 5 * 60
    assert second_step[0] + second_step[1] >= HOUR - 1


# --- no enumeration -------------------------------------------------------------------------


def test_unknown_user_and_wrong_password_are_indistinguishable(
    alice: User, make_client: MakeClient
) -> None:
    tries = 50
    kinds = {"wrong password": (ALICE, WRONG_PASSWORD), "unknown user": (NOBODY, WRONG_PASSWORD)}
    latencies: dict[str, list[float]] = {kind: [] for kind in kinds}
    bodies: dict[str, set[str]] = {kind: set() for kind in kinds}
    statuses: dict[str, set[int]] = {kind: set() for kind in kinds}

    def one_try(kind: str) -> float:
        email, password = kinds[kind]
        cache.clear()  # the limits would otherwise trip after five tries
        client = make_client(ip=fresh_ip())
        started = time.perf_counter()
        response = client.post("/accounts/login/", {"login": email, "password": password})
        elapsed = time.perf_counter() - started
        statuses[kind].add(response.status_code)
        bodies[kind].add(normalised(response.content, email))
        return elapsed

    for kind in kinds:  # warm-up: first requests load templates, validators, connections
        one_try(kind)
    for number in range(tries):
        # Interleaved, alternating who goes first, so drift hits both kinds alike.
        order = list(kinds) if number % 2 == 0 else list(reversed(kinds))
        for kind in order:
            latencies[kind].append(one_try(kind))

    assert statuses["wrong password"] == statuses["unknown user"] == {200}
    assert len(bodies["wrong password"]) == 1
    assert bodies["wrong password"] == bodies["unknown user"]
    medians = {kind: statistics.median(values) for kind, values in latencies.items()}
    slower, faster = max(medians.values()), min(medians.values())
    assert faster > 0.05, f"no password hashing in the failure path? {medians}"
    assert slower <= faster * 1.25, f"median latencies differ by more than 25 %: {medians}"


# --- password reset while limited -------------------------------------------------------------


def reset_password_by_mail(client: SecureClient, email: str, new_password: str) -> None:
    mail.outbox.clear()
    requested = client.post("/accounts/password/reset/", {"email": email})
    assert requested.status_code == 302, requested.status_code
    assert len(mail.outbox) == 1
    link = path_of(link_in(mail.outbox[0], "/accounts/password/reset/key/"))
    form_page = client.get(link, follow=True)
    assert form_page.status_code == 200
    set_password_url = form_page.redirect_chain[-1][0] if form_page.redirect_chain else link
    done = client.post(set_password_url, {"password1": new_password, "password2": new_password})
    assert done.status_code == 302, done.content.decode()[:2000]


def test_reset_works_while_account_is_limited(alice: User, make_client: MakeClient) -> None:
    exhaust_account_limit(make_client, ALICE)
    assert_limited(attempt(make_client, ALICE, PASSWORD))

    reset_password_by_mail(make_client(ip=fresh_ip()), ALICE, OTHER_PASSWORD)

    alice.refresh_from_db()
    assert alice.check_password(OTHER_PASSWORD)
    assert not alice.check_password(PASSWORD)


def test_completed_reset_clears_the_limit(alice: User, make_client: MakeClient) -> None:
    exhaust_account_limit(make_client, ALICE)
    assert_limited(attempt(make_client, ALICE, PASSWORD))

    reset_password_by_mail(make_client(ip=fresh_ip()), ALICE, OTHER_PASSWORD)

    # Immediately, from anywhere, the new password signs in.
    client = make_client(ip=fresh_ip())
    assert sign_in(client, ALICE, OTHER_PASSWORD).status_code == 302
    assert is_signed_in(client)


# --- the client address ---------------------------------------------------------------------


def test_spoofed_forwarded_for_does_not_change_limit_key(
    alice: User, make_client: MakeClient
) -> None:
    ip = fresh_ip()
    for number in range(IP_LIMIT):
        response = attempt(
            make_client,
            f"guess-{number}@plant.example",
            WRONG_PASSWORD,
            ip=ip,
            HTTP_X_FORWARDED_FOR=f"203.0.113.{number + 1}",
            HTTP_X_REAL_IP=f"198.51.100.{number + 1}",
        )
        assert response.status_code == 200, f"failure {number + 1} was refused early"
    # A new made-up forwarded address does not help: only REMOTE_ADDR counts.
    assert_limited(
        attempt(make_client, ALICE, PASSWORD, ip=ip, HTTP_X_FORWARDED_FOR="203.0.113.250")
    )


def test_spoofed_forwarded_for_does_not_change_limit_key_on_a_real_server(
    tmp_path: Path,
) -> None:
    with run_server(tmp_path / "var") as server, server.client() as client:
        for number in range(IP_LIMIT):
            client.headers["X-Forwarded-For"] = f"203.0.113.{number + 1}"
            response = sign_in_over_https(client, f"guess-{number}@plant.example", WRONG_PASSWORD)
            assert response.status_code == 200, f"failure {number + 1} was refused early"
        client.headers["X-Forwarded-For"] = "203.0.113.250"
        refused = sign_in_over_https(client, "one-more@plant.example", WRONG_PASSWORD)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) > 0
        time.sleep(0.3)  # the access log is written after the response
        log = server.log_text()
    assert '"client": "127.0.0.1:' in log or '"client":"127.0.0.1:' in log, log[-2000:]
    assert "203.0.113." not in log


# --- the rate-limit store is down -------------------------------------------------------------


def redis_down() -> Any:
    """Django's cache pointed at a port nothing listens on (caches are reset on the change)."""
    closed = f"redis://127.0.0.1:{free_port()}/0"
    backend = "django.core.cache.backends.redis.RedisCache"
    return override_settings(
        CACHES={"default": {"BACKEND": backend, "LOCATION": closed, "KEY_PREFIX": "fieldlink"}}
    )


def test_sign_in_fails_closed_when_redis_is_down(alice: User, make_client: MakeClient) -> None:
    sessions_before = Session.objects.count()
    with redis_down():
        with pytest.raises(RedisError):  # it is really down
            cache.get("anything")
        client = make_client(ip=fresh_ip())
        response = sign_in(client, ALICE, PASSWORD)
        assert response.status_code == 503
        assert int(response["Retry-After"]) > 0
        assert b"Sign-in is briefly unavailable" in response.content
        assert "__Host-fieldlink-session" not in response.cookies
        assert Session.objects.count() == sessions_before
        assert client.session.get("_auth_user_id") is None


@pytest.mark.parametrize("surface", ["web form", "mobile app API"])
def test_failed_sign_in_counter_down_refuses_sign_in(
    alice: User, make_client: MakeClient, surface: str
) -> None:
    # The adapter's part of failing closed, with allauth's view-level "login" limit (which the
    # outage middleware answers, see above) out of the way: the failed-sign-in counter is
    # unreachable, so nobody signs in.
    limits = {**account_settings.RATE_LIMITS, "login": ""}
    sessions_before = Session.objects.count()
    with override_settings(ACCOUNT_RATE_LIMITS=limits), redis_down():
        client = make_client(ip=fresh_ip())
        if surface == "web form":
            response = sign_in(client, ALICE, PASSWORD)
            assert b"Sign-in is briefly unavailable" in response.content
        else:
            response = client.post(
                "/_allauth/app/v1/auth/login",
                {"email": ALICE, "password": PASSWORD},
                content_type="application/json",
            )
            assert response.json()["errors"][0]["code"] == "unavailable"
            assert "session_token" not in response.json().get("meta", {})
        assert response.status_code == 503
        assert int(response["Retry-After"]) > 0
        assert Session.objects.count() == sessions_before
        assert client.session.get("_auth_user_id") is None


def test_api_key_authentication_fails_closed_when_redis_is_down(alice: User) -> None:
    issued = create_api_key(alice, name="script", scope=ApiKeyScope.READ)
    register_canary(issued.secret)
    with redis_down():
        response = SecureClient().get(
            "/api/v1/me", HTTP_AUTHORIZATION=f"Bearer {issued.secret}", REMOTE_ADDR=fresh_ip()
        )
    assert response.status_code == 503
    assert response.json()["code"] == "sign_in_unavailable"


def test_mobile_sign_in_limit_answers_in_json(alice: User, make_client: MakeClient) -> None:
    def app_sign_in(password: str) -> Any:
        return make_client(ip=fresh_ip()).post(
            "/_allauth/app/v1/auth/login",
            {"email": ALICE, "password": password},
            content_type="application/json",
        )

    for _ in range(ACCOUNT_LIMIT):
        assert app_sign_in(WRONG_PASSWORD).status_code == 400
    refused = app_sign_in(PASSWORD)
    assert refused.status_code == 429
    assert refused["Content-Type"] == "application/json"
    assert refused.json()["status"] == 429
    assert int(refused["Retry-After"]) > 0


# --- the other guessable entry points ---------------------------------------------------------


def test_password_reset_requests_are_limited(alice: User, make_client: MakeClient) -> None:
    mail.outbox.clear()
    per_address = 3  # "3/15m/key": a mailbox is not flooded, whatever the source address
    for _ in range(per_address):
        response = make_client(ip=fresh_ip()).post("/accounts/password/reset/", {"email": ALICE})
        assert response.status_code == 302
    refused = make_client(ip=fresh_ip()).post("/accounts/password/reset/", {"email": ALICE})
    assert refused.status_code == 429
    assert len(mail.outbox) == per_address


def test_sign_ups_are_limited(db: None, make_client: MakeClient) -> None:
    ip = fresh_ip()
    per_minute = 5  # "5/m/ip"
    for number in range(per_minute):
        response = make_client(ip=ip).post(
            "/accounts/signup/", {"email": f"bot-{number}@spam.example"}
        )
        assert response.status_code == 200  # the form, with errors: no password given
    refused = make_client(ip=ip).post(
        "/accounts/signup/",
        {"email": "bot-real@spam.example", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert refused.status_code == 429
    assert not User.objects.filter(email="bot-real@spam.example").exists()


def totp_codes_now(secret: str) -> set[str]:
    counter = int(time.time()) // 30
    return {format_hotp_value(hotp_value(secret, counter + delta)) for delta in (-1, 0, 1)}


def test_mfa_code_guessing_is_limited(alice: User, make_client: MakeClient) -> None:
    secret = register_canary(generate_totp_secret())
    TOTP.activate(alice, secret)
    client = make_client(ip=fresh_ip())
    assert sign_in(client, ALICE, PASSWORD)["Location"] == "/accounts/2fa/authenticate/"

    wrong = next(f"{n:06d}" for n in range(10**6) if f"{n:06d}" not in totp_codes_now(secret))
    per_account = 5  # allauth counts code failures as "login_failed" per user: "5/5m/key"
    for _ in range(per_account):
        response = client.post("/accounts/2fa/authenticate/", {"code": wrong})
        assert response.status_code == 200
        assert b"Incorrect code" in response.content

    # The sixth code is refused even when right.
    right = format_hotp_value(hotp_value(secret, int(time.time()) // 30))
    refused = client.post("/accounts/2fa/authenticate/", {"code": right})
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) > 0
    assert b"Too many attempts" in refused.content
    assert not is_signed_in(client)


def test_limit_hits_enter_the_history_once_per_window_not_once_per_attempt(
    alice: User, make_client: MakeClient
) -> None:
    # An attacker must not be able to fill the victim's history (or our disk) with rows.
    exhaust_account_limit(make_client, ALICE)
    for _ in range(4):
        assert attempt(make_client, ALICE, WRONG_PASSWORD).status_code == 429
    assert alice.security_events.filter(kind="rate_limited").count() == 1
