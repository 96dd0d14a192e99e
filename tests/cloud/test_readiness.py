"""/readyz: the database answers and every migration is applied."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.test import Client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.backend]


def test_ready_when_migrated() -> None:
    response = Client().get("/readyz", secure=True)
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "migrations": "ok"}


def test_not_ready_while_migrations_are_pending() -> None:
    # Forget that the newest migration ran: to the executor it is pending again.
    recorder = MigrationRecorder(connection)
    newest = recorder.migration_qs.order_by("-id").first()
    assert newest is not None
    recorder.record_unapplied(newest.app, newest.name)
    try:
        response = Client().get("/readyz", secure=True)
        assert response.status_code == 503
        assert response.json()["status"] == "not_ready"
        assert response.json()["checks"]["migrations"] == "1 pending"
    finally:
        recorder.record_applied(newest.app, newest.name)
