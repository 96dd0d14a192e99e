"""The sessions page lists each session with a readable device and can end the others."""

from __future__ import annotations

import pytest
from allauth.usersessions.models import UserSession

from tests.accounts.conftest import SAFARI_IPHONE, MakeClient, MakeUser, is_signed_in, sign_in

pytestmark = [pytest.mark.django_db, pytest.mark.backend]


def test_sessions_page_names_devices_and_ends_other_sessions(
    make_user: MakeUser, make_client: MakeClient
) -> None:
    user = make_user("sessions@plant.example")
    desk, phone = make_client(), make_client(user_agent=SAFARI_IPHONE, ip="198.51.100.9")
    sign_in(desk, user.email)
    sign_in(phone, user.email)
    page = desk.get("/accounts/sessions/")
    assert page.status_code == 200
    text = page.content.decode()
    assert "Mobile Safari on iOS" in text
    assert "Firefox on Linux" in text
    assert "198.51.100.9" in text

    response = desk.post("/accounts/sessions/", {"action": "logout"})
    assert response.status_code in {200, 302}
    assert is_signed_in(desk)
    assert not is_signed_in(phone)
    assert UserSession.objects.filter(user=user).count() == 1
