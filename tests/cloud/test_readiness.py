"""/readyz: the database answers and every migration is applied."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.test import Client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.backend]


def test_ready_when_migrated() -> None:
    response = Client().get("/readyz", secure=True)
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "migrations": "ok"}


def test_not_ready_while_migrations_are_pending() -> None:
    call_command("migrate", "django_tasks_db", "zero", verbosity=0)
    try:
        response = Client().get("/readyz", secure=True)
        assert response.status_code == 503
        assert response.json()["status"] == "not_ready"
        assert "pending" in response.json()["checks"]["migrations"]
    finally:
        call_command("migrate", verbosity=0)
