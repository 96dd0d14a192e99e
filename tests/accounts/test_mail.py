"""Account mail goes through Django's SMTP backend (a real SMTP server here) or the file outbox."""

from __future__ import annotations

import email
import email.policy
import socket
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from django.conf import settings
from django.test import override_settings

from fieldlink.settings import FieldlinkSettings
from tests.accounts.conftest import (
    OTHER_PASSWORD,
    MakeClient,
    MakeUser,
    is_signed_in,
    link_in,
    path_of,
    sign_in,
)
from tests.plugins.log_canary import register_canary


class _Collector:
    """aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 -- aiosmtpd's hook name
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def smtp_server() -> Iterator[tuple[_Collector, int]]:
    collector = _Collector()
    port = _free_port()
    controller = Controller(collector, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield collector, port
    finally:
        controller.stop()


def _text_of(message: EmailMessage) -> str:
    body = message.get_body(preferencelist=("plain",))
    assert body is not None
    return str(body.get_content())


@pytest.mark.backend
@pytest.mark.django_db
def test_mail_goes_through_a_real_smtp_server(
    smtp_server: tuple[_Collector, int], make_client: MakeClient, make_user: MakeUser
) -> None:
    collector, port = smtp_server
    user = make_user("smtp.user@plant.example")
    client = make_client()
    with override_settings(
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
        EMAIL_HOST="127.0.0.1",
        EMAIL_PORT=port,
        EMAIL_USE_TLS=False,
        EMAIL_USE_SSL=False,
        EMAIL_HOST_USER="",
        EMAIL_HOST_PASSWORD="",
        EMAIL_TIMEOUT=10,
    ):
        response = client.post("/accounts/password/reset/", {"email": user.email})
        assert response.status_code == 302

        (message,) = collector.messages
        assert collector.envelopes[0][1] == [user.email]
        assert message["To"] == user.email
        assert "Password Reset" in str(message["Subject"])
        link = path_of(link_in(_text_of(message), "/accounts/password/reset/key/"))
        register_canary(link.rstrip("/").rpartition("/")[2])

        opened = client.get(link)
        assert opened.status_code == 302
        done = client.post(
            opened["Location"], {"password1": OTHER_PASSWORD, "password2": OTHER_PASSWORD}
        )
        assert done.status_code == 302
        assert done["Location"] == "/accounts/password/reset/key/done/"

        assert sign_in(client, user.email, OTHER_PASSWORD)["Location"] == "/me/"
        assert is_signed_in(client)
        # The reset itself is announced to the owner (allauth's notification mail).
        assert any("Password Reset" in str(m["Subject"]) for m in collector.messages[1:])


@pytest.mark.backend
@pytest.mark.django_db
def test_embedded_default_mail_lands_in_the_file_outbox(
    tmp_path: Path, make_client: MakeClient, make_user: MakeUser
) -> None:
    outbox = tmp_path / "outbox"
    user = make_user("outbox.user@plant.example")
    with override_settings(
        EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend",
        EMAIL_FILE_PATH=str(outbox),
    ):
        response = make_client().post("/accounts/password/reset/", {"email": user.email})
    assert response.status_code == 302
    (written,) = list(outbox.iterdir())
    text = written.read_text(encoding="utf-8")
    assert f"To: {user.email}" in text
    assert "/accounts/password/reset/key/" in text


def test_embedded_default_outbox_is_under_the_var_directory(tmp_path: Path) -> None:
    embedded = FieldlinkSettings(var_dir=tmp_path, email_host=None)
    assert embedded.outbox_dir == tmp_path / "outbox"
    if not settings.FIELDLINK.email_host:
        # pytest-django swaps the backend for its in-memory one; the configured path stays.
        assert Path(settings.EMAIL_FILE_PATH) == settings.FIELDLINK.outbox_dir.resolve()
