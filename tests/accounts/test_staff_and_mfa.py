"""Staff need a second factor; MFA secrets are stored encrypted; MFA removal keeps the policy."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from allauth.account.models import EmailAddress
from allauth.mfa import signals
from allauth.mfa.adapter import get_adapter
from allauth.mfa.models import Authenticator
from allauth.mfa.totp.internal.auth import (
    TOTP,
    format_hotp_value,
    generate_totp_secret,
    hotp_value,
)
from django.db import connection
from django.test import Client, RequestFactory

from fieldlink.accounts.models import StaffRole
from fieldlink.accounts.services import enroll_staff
from tests.accounts.conftest import PASSWORD, MakeUser
from tests.plugins.log_canary import register_canary
from tests.support.server import subprocess_env

pytestmark = [pytest.mark.django_db, pytest.mark.backend]


def _sign_in(client: Client, email: str, password: str = PASSWORD) -> int:
    response = client.post("/accounts/login/", {"login": email, "password": password}, secure=True)
    return response.status_code


def test_staff_without_second_factor_cannot_sign_in(make_user: MakeUser) -> None:
    make_user("support@fieldlink.example", staff_role=StaffRole.SUPPORT)
    client = Client()
    assert _sign_in(client, "support@fieldlink.example") == 403
    assert client.get("/api/v1/me", secure=True).status_code == 401


def test_staff_with_totp_must_pass_the_second_factor(make_user: MakeUser) -> None:
    user = make_user("admin@fieldlink.example", staff_role=StaffRole.PLATFORM_ADMIN)
    TOTP.activate(user, generate_totp_secret())
    client = Client()
    response = client.post(
        "/accounts/login/", {"login": user.email, "password": PASSWORD}, secure=True
    )
    assert response.status_code == 302
    assert response["Location"] == "/accounts/2fa/authenticate/"
    assert client.get("/api/v1/me", secure=True).status_code == 401  # not yet signed in


def test_customer_without_second_factor_signs_in(make_user: MakeUser) -> None:
    make_user("operator@plant.example")
    client = Client()
    assert _sign_in(client, "operator@plant.example") == 302
    assert client.get("/api/v1/me", secure=True).json()["email"] == "operator@plant.example"


def test_totp_secret_is_stored_encrypted(make_user: MakeUser) -> None:
    user = make_user("crypto@plant.example")
    secret = register_canary(generate_totp_secret())
    TOTP.activate(user, secret)
    stored = Authenticator.objects.get(user=user).data["secret"]
    assert secret not in stored
    assert get_adapter().decrypt(stored) == secret
    with connection.cursor() as cursor:
        cursor.execute("SELECT data FROM mfa_authenticator")
        assert all(secret not in str(row) for row in cursor.fetchall())


def test_last_second_factor_cannot_be_removed_while_the_password_is_short(
    make_user: MakeUser,
) -> None:
    short = register_canary("Tq8#vL2x!mZp4")  # 13 characters: only allowed with MFA
    user = make_user("short@plant.example", short)
    totp = TOTP.activate(user, generate_totp_secret()).instance
    assert user.password_ok_without_mfa is False
    assert get_adapter().can_delete_authenticator(totp) is False
    user.set_password(PASSWORD)
    user.save()
    assert get_adapter().can_delete_authenticator(totp) is True


def test_staff_can_never_remove_their_last_second_factor(make_user: MakeUser) -> None:
    user = make_user("staff2@fieldlink.example", staff_role=StaffRole.SUPPORT)
    totp = TOTP.activate(user, generate_totp_secret()).instance
    assert get_adapter().can_delete_authenticator(totp) is False


def test_enroll_staff_creates_a_verified_account_with_totp() -> None:
    enrollment = enroll_staff("new.support@fieldlink.example", StaffRole.SUPPORT)
    register_canary(enrollment.totp_secret)
    assert enrollment.user.staff_role == StaffRole.SUPPORT
    assert not enrollment.user.has_usable_password()
    assert EmailAddress.objects.get(user=enrollment.user).verified
    assert enrollment.otpauth_uri.startswith("otpauth://totp/")
    assert Authenticator.objects.filter(user=enrollment.user, type="totp").count() == 1


def test_staff_enroll_cli_prints_the_uri_once_and_refuses_bad_roles(tmp_path: Path) -> None:
    env = subprocess_env(
        FIELDLINK_VAR_DIR=str(tmp_path),
        FIELDLINK_LOG_FILE=str(Path(os.environ["FIELDLINK_TEST_LOG_DIR"]) / "staff-cli.log"),
    )

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fieldlink.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    assert cli("migrate").returncode == 0
    assert (
        cli("staff", "enroll", "--email", "x@fieldlink.example", "--role", "root").returncode == 2
    )
    good = cli("staff", "enroll", "--email", "x@fieldlink.example", "--role", "support")
    assert good.returncode == 0, good.stderr
    uri = next(line.strip() for line in good.stdout.splitlines() if "otpauth://" in line)
    secret = uri.split("secret=")[1].split("&")[0]
    register_canary(secret)
    assert secret not in good.stderr  # the log stream never carries it


@pytest.mark.parametrize(
    ("signal_name", "kind"),
    [
        ("authenticator_added", "mfa_added"),
        ("authenticator_removed", "mfa_removed"),
        ("authenticator_reset", "recovery_codes_reset"),
    ],
)
def test_mfa_changes_enter_the_security_history(
    signal_name: str, kind: str, make_user: MakeUser
) -> None:
    user = make_user(f"{kind}@plant.example")
    authenticator = TOTP.activate(user, register_canary(generate_totp_secret())).instance
    request = RequestFactory().get("/", REMOTE_ADDR="192.0.2.7", HTTP_USER_AGENT="pytest")
    getattr(signals, signal_name).send(
        sender=Authenticator, request=request, user=user, authenticator=authenticator
    )
    event = user.security_events.get(kind=kind)
    assert event.ip == "192.0.2.7"
    assert event.details == {"type": "totp"}


def test_totp_activation_code_cannot_be_replayed_at_sign_in(make_user: MakeUser) -> None:
    user = make_user("replay@plant.example")
    secret = register_canary(generate_totp_secret())
    authenticator = TOTP.activate(user, secret).instance
    code = format_hotp_value(hotp_value(secret, int(time.time()) // 30))
    signals.authenticator_added.send(
        sender=Authenticator,
        request=RequestFactory().get("/"),
        user=user,
        authenticator=authenticator,
    )
    # The code just typed on the activation page is spent: the sign-in stage refuses it.
    assert TOTP(authenticator).validate_code(code) is False
