"""Sign-up, e-mail verification, sign-in/out, password change and reset, security history.

All through allauth's own pages over HTTPS, as a browser would use them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from importlib import import_module

import pytest
from allauth.account.models import EmailAddress
from django.conf import settings
from django.contrib.auth.tokens import PasswordResetTokenGenerator
from django.core import mail

from fieldlink.accounts.models import SecurityEvent, SecurityEventKind, User
from tests.accounts.conftest import (
    FIREFOX_LINUX,
    OTHER_PASSWORD,
    PASSWORD,
    SAFARI_IPHONE,
    THIRD_PASSWORD,
    Canary,
    MakeClient,
    MakeUser,
    SecureClient,
    found_in_cache,
    found_in_database,
    is_signed_in,
    link_in,
    path_of,
    sign_in,
    sign_out,
)
from tests.plugins.log_canary import register_canary

pytestmark = [pytest.mark.backend, pytest.mark.django_db]

CaptureOnCommit = Callable[..., AbstractContextManager[list[Callable[[], object]]]]

RESET_LINK = re.compile(r"/accounts/password/reset/key/(?P<uidb36>[0-9a-z]+)-(?P<key>[^/]+)/")
NEW_DEVICE_SUBJECT = "New sign-in to your account"


def _session_exists(session_key: str) -> bool:
    store = import_module(settings.SESSION_ENGINE).SessionStore
    return bool(store().exists(session_key))


def _kinds(user: User) -> list[str]:
    return list(SecurityEvent.objects.filter(user=user).values_list("kind", flat=True))


def _request_reset(client: SecureClient, email: str) -> str:
    """Ask for a reset link and return it (as a path), taken from the mail."""
    mail.outbox.clear()
    response = client.post("/accounts/password/reset/", {"email": email})
    assert response.status_code == 302
    (message,) = mail.outbox
    assert message.to == [email]
    link = path_of(link_in(message, "/accounts/password/reset/key/"))
    register_canary(RESET_LINK.search(link)["key"])  # type: ignore[index]
    return link


def _set_password_from_link(client: SecureClient, link: str, password: str) -> None:
    opened = client.get(link)
    assert opened.status_code == 302, "a valid link moves its key into the session"
    set_password_url = opened["Location"]
    assert set_password_url.endswith("-set-password/"), "the key leaves the URL (Referer)"
    done = client.post(set_password_url, {"password1": password, "password2": password})
    assert done.status_code == 302
    assert done["Location"] == "/accounts/password/reset/key/done/"


# -- sign-up, verification, sign-in, sign-out ---------------------------------------------------


def test_sign_up_verify_sign_in_and_sign_out(web: SecureClient) -> None:
    email = "new.operator@plant.example"
    mail.outbox.clear()
    assert web.get("/accounts/signup/").status_code == 200
    response = web.post(
        "/accounts/signup/", {"email": email, "password1": PASSWORD, "password2": PASSWORD}
    )
    assert response.status_code == 302
    assert response["Location"] == "/accounts/confirm-email/"
    assert not is_signed_in(web), "mandatory verification: no session before the address is known"

    (message,) = mail.outbox
    assert message.to == [email]
    link = link_in(message, "/accounts/confirm-email/")
    assert link.startswith("https://")
    register_canary(link.rstrip("/").rpartition("/")[2])

    # Following the link (GET) only shows a form, so mail scanners that open links do not
    # verify an address on their own.
    confirm_page = web.get(path_of(link))
    assert confirm_page.status_code == 200
    assert b'method="post"' in confirm_page.content
    address = EmailAddress.objects.get(email=email)
    assert not address.verified
    confirmed = web.post(path_of(link))
    assert confirmed.status_code == 302
    address.refresh_from_db()
    assert address.verified

    signed_in = sign_in(web, email)
    assert signed_in.status_code == 302
    assert signed_in["Location"] == "/me/"
    assert is_signed_in(web)
    assert email in web.get("/me/").content.decode()

    assert sign_out(web).status_code == 302
    assert not is_signed_in(web)
    assert web.get("/me/").status_code == 302  # back to the sign-in page
    user = User.objects.get(email=email)
    assert _kinds(user)[:2] == [SecurityEventKind.SIGN_OUT, SecurityEventKind.SIGN_IN]


def test_unverified_account_cannot_sign_in_and_gets_the_verification_mail_again(
    web: SecureClient, make_user: MakeUser
) -> None:
    user = make_user("unverified@plant.example", verified=False)
    mail.outbox.clear()
    response = sign_in(web, user.email)
    assert response.status_code == 302
    assert response["Location"] == "/accounts/confirm-email/"
    assert not is_signed_in(web)
    (message,) = mail.outbox
    assert message.to == [user.email]
    assert "/accounts/confirm-email/" in link_in(message, "/accounts/confirm-email/")
    assert SecurityEventKind.SIGN_IN not in _kinds(user)


def test_forged_confirmation_key_verifies_nothing(web: SecureClient, make_user: MakeUser) -> None:
    user = make_user("forged@plant.example", verified=False)
    response = web.post("/accounts/confirm-email/MQ:1forged:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA/")
    assert response.status_code in (200, 404)
    assert not EmailAddress.objects.get(user=user).verified


# -- password change ----------------------------------------------------------------------------


def test_password_change_requires_the_current_password(
    web: SecureClient, make_user: MakeUser
) -> None:
    user = make_user("changer@plant.example")
    assert sign_in(web, user.email).status_code == 302
    stored_hash = User.objects.get(pk=user.pk).password
    refused = web.post(
        "/accounts/password/change/",
        {"oldpassword": THIRD_PASSWORD, "password1": OTHER_PASSWORD, "password2": OTHER_PASSWORD},
    )
    assert refused.status_code == 200
    assert refused.context["form"].errors.get("oldpassword")
    assert User.objects.get(pk=user.pk).password == stored_hash
    assert SecurityEventKind.PASSWORD_CHANGED not in _kinds(user)


def test_other_sessions_end_after_password_change(
    make_client: MakeClient, make_user: MakeUser
) -> None:
    user = make_user("two.devices@plant.example")
    changer = make_client(user_agent=FIREFOX_LINUX, ip="198.51.100.10")
    other = make_client(user_agent=SAFARI_IPHONE, ip="198.51.100.20")
    assert sign_in(changer, user.email).status_code == 302
    assert sign_in(other, user.email).status_code == 302
    assert is_signed_in(other)
    other_session = other.session.session_key
    assert other_session is not None

    mail.outbox.clear()
    changed = changer.post(
        "/accounts/password/change/",
        {"oldpassword": PASSWORD, "password1": OTHER_PASSWORD, "password2": OTHER_PASSWORD},
    )
    assert changed.status_code == 302

    assert is_signed_in(changer), "the session that changed the password stays signed in"
    assert not is_signed_in(other)
    # Ended on the server, not merely failing the session-hash check: it cannot come back.
    assert not _session_exists(other_session)

    event = SecurityEvent.objects.get(user=user, kind=SecurityEventKind.PASSWORD_CHANGED)
    assert event.ip == "198.51.100.10"
    assert event.device == "Firefox on Linux"
    assert [m.to for m in mail.outbox] == [[user.email]], "the owner is told of the change"


# -- password reset -----------------------------------------------------------------------------


def test_all_sessions_end_after_password_reset(
    make_client: MakeClient, make_user: MakeUser
) -> None:
    user = make_user("forgetful@plant.example")
    signed_in = make_client(user_agent=SAFARI_IPHONE)
    assert sign_in(signed_in, user.email).status_code == 302
    old_session = signed_in.session.session_key
    assert old_session is not None

    resetter = make_client(ip="203.0.113.9")
    _set_password_from_link(resetter, _request_reset(resetter, user.email), OTHER_PASSWORD)

    assert not is_signed_in(signed_in)
    assert not _session_exists(old_session)
    assert not is_signed_in(resetter), "a reset does not sign in (the link alone is no login)"
    event = SecurityEvent.objects.get(user=user, kind=SecurityEventKind.PASSWORD_RESET)
    assert event.ip == "203.0.113.9"
    assert event.device == "Firefox on Linux"
    assert sign_in(resetter, user.email, OTHER_PASSWORD)["Location"] == "/me/"


def test_password_reset_does_not_reveal_whether_an_account_exists(
    make_client: MakeClient, make_user: MakeUser
) -> None:
    user = make_user("known@plant.example")
    pages = []
    for email in (user.email, "unknown@plant.example"):
        client = make_client()
        response = client.post("/accounts/password/reset/", {"email": email})
        done = client.get(response["Location"])
        pages.append((response.status_code, response["Location"], done.status_code, done.content))
    assert pages[0] == pages[1]
    assert pages[0][0] == 302


def test_reset_link_works_only_once(make_client: MakeClient, make_user: MakeUser) -> None:
    user = make_user("once@plant.example")
    client = make_client()
    link = _request_reset(client, user.email)
    _set_password_from_link(client, link, OTHER_PASSWORD)

    replay = make_client()
    reopened = replay.get(link)
    assert reopened.status_code == 200
    assert reopened.context["token_fail"] is True
    # Nor can the old key be pushed straight at the form.
    uidb36 = RESET_LINK.search(link)["uidb36"]  # type: ignore[index]
    forced = replay.post(
        f"/accounts/password/reset/key/{uidb36}-{RESET_LINK.search(link)['key']}/",  # type: ignore[index]
        {"password1": THIRD_PASSWORD, "password2": THIRD_PASSWORD},
    )
    assert forced.status_code == 200
    assert forced.context["token_fail"] is True
    assert User.objects.get(pk=user.pk).check_password(OTHER_PASSWORD)


def test_reset_link_expires_within_one_hour(
    make_client: MakeClient, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert settings.PASSWORD_RESET_TIMEOUT <= 3600
    user = make_user("slow@plant.example")
    link = _request_reset(make_client(), user.email)
    issued = datetime.now()

    monkeypatch.setattr(
        PasswordResetTokenGenerator, "_now", lambda self: issued + timedelta(minutes=59)
    )
    assert make_client().get(link).status_code == 302, "still valid just before the hour"

    monkeypatch.setattr(
        PasswordResetTokenGenerator,
        "_now",
        lambda self: issued + timedelta(seconds=settings.PASSWORD_RESET_TIMEOUT + 2),
    )
    late = make_client().get(link)
    assert late.status_code == 200
    assert late.context["token_fail"] is True


def test_reset_token_has_at_least_128_bits(make_client: MakeClient, make_user: MakeUser) -> None:
    user = make_user("entropy@plant.example")
    link = _request_reset(make_client(), user.email)
    key = RESET_LINK.search(link)["key"]  # type: ignore[index]
    timestamp, _, mac = key.partition("-")
    assert re.fullmatch(r"[0-9a-z]+", timestamp)
    assert re.fullmatch(r"[0-9a-f]{32,}", mac), "the HMAC part: 32 hex digits = 128 bits"
    assert len(mac) * 4 >= 128


def test_reset_token_is_not_stored_in_clear(make_client: MakeClient, make_user: MakeUser) -> None:
    user = make_user("stored@plant.example")
    link = _request_reset(make_client(), user.email)
    key = RESET_LINK.search(link)["key"]  # type: ignore[index]
    mac = key.partition("-")[2]
    for secret in (key, mac):
        assert found_in_database(secret) == []
        assert found_in_cache(secret) == []


# -- security history and new-device notices ----------------------------------------------------


def test_security_history_records_sign_in_failure_and_sign_out_with_ip_and_device(
    make_client: MakeClient, make_user: MakeUser
) -> None:
    user = make_user("history@plant.example")
    client = make_client(user_agent=SAFARI_IPHONE, ip="192.0.2.44")
    assert sign_in(client, user.email, OTHER_PASSWORD).status_code == 200  # wrong password
    assert sign_in(client, user.email).status_code == 302
    assert sign_out(client).status_code == 302

    events = list(SecurityEvent.objects.filter(user=user).order_by("created_at"))
    assert [e.kind for e in events] == [
        SecurityEventKind.SIGN_IN_FAILED,
        SecurityEventKind.SIGN_IN,
        SecurityEventKind.SIGN_OUT,
    ]
    for event in events:
        assert event.ip == "192.0.2.44"
        assert event.device == "Mobile Safari on iOS"
        assert event.user_agent == SAFARI_IPHONE


def test_failed_sign_in_for_an_unknown_address_is_not_recorded(
    web: SecureClient, make_user: MakeUser
) -> None:
    make_user("someone@plant.example")
    before = SecurityEvent.objects.count()
    assert sign_in(web, "nobody@plant.example").status_code == 200
    assert SecurityEvent.objects.count() == before


def test_sign_in_from_a_new_device_sends_a_notice(
    make_client: MakeClient,
    make_user: MakeUser,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    user = make_user("watchful@plant.example")
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert sign_in(make_client(user_agent=FIREFOX_LINUX), user.email).status_code == 302
    assert mail.outbox == [], "the very first sign-in has nothing to compare with"

    with django_capture_on_commit_callbacks(execute=True):
        phone = make_client(user_agent=SAFARI_IPHONE, ip="203.0.113.77")
        assert sign_in(phone, user.email).status_code == 302
    (notice,) = mail.outbox
    assert notice.to == [user.email]
    assert NEW_DEVICE_SUBJECT in notice.subject
    assert "Mobile Safari on iOS" in str(notice.body)
    assert "203.0.113.77" in str(notice.body)


def test_sign_in_from_the_same_device_sends_no_notice(
    make_client: MakeClient,
    make_user: MakeUser,
    django_capture_on_commit_callbacks: CaptureOnCommit,
) -> None:
    user = make_user("habitual@plant.example")
    mail.outbox.clear()
    with django_capture_on_commit_callbacks(execute=True):
        assert sign_in(make_client(ip="192.0.2.1"), user.email).status_code == 302
        # Same browser, another network (a phone moving between Wi-Fi and mobile data).
        assert sign_in(make_client(ip="192.0.2.2"), user.email).status_code == 302
    assert [m for m in mail.outbox if NEW_DEVICE_SUBJECT in m.subject] == []


# -- secrets in error bodies --------------------------------------------------------------------


def _leaks(secret: str, text: str) -> bool:
    from urllib.parse import quote, quote_plus  # noqa: PLC0415

    return any(form in text for form in (secret, quote(secret, safe=""), quote_plus(secret)))


def test_validation_errors_never_echo_a_submitted_password(
    make_client: MakeClient, canary: Canary
) -> None:
    secret = canary("password")
    email = "weak.choice@plant.example"
    # Each is refused by a different rule; every one of them contains the canary.
    weak = {
        "product name": f"fieldlink-{secret}",
        "own e-mail": f"weak.choice-{secret}",
        "too long": secret + "x" * 4100,
    }
    client = make_client()
    for reason, password in weak.items():
        page = client.post(
            "/accounts/signup/", {"email": email, "password1": password, "password2": password}
        )
        assert page.status_code == 200, reason
        assert page.context["form"].errors.get("password1"), reason
        assert not _leaks(secret, page.content.decode()), reason

    mismatch = client.post(
        "/accounts/signup/", {"email": email, "password1": PASSWORD, "password2": secret}
    )
    assert mismatch.status_code == 200
    assert not _leaks(secret, mismatch.content.decode())

    app = make_client(ip="192.0.2.200")  # sign-up is limited per IP; a fresh address
    for reason, password in weak.items():
        response = app.post(
            "/_allauth/app/v1/auth/signup",
            {"email": email, "password": password},
            content_type="application/json",
        )
        assert response.status_code == 400, reason
        assert not _leaks(secret, response.content.decode()), reason
    assert not User.objects.filter(email=email).exists()
