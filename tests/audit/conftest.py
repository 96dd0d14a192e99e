"""Helpers of the audit tests: append entries, and tamper with rows the way an attacker with
write access to the database would (raw SQL, the PostgreSQL trigger switched off first)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connection, transaction

from fieldlink.audit import services
from fieldlink.audit.models import AuditEntry

TABLE = AuditEntry._meta.db_table
TRIGGER = "audit_auditentry_append_only"


def append(chain: str, count: int, **fields: Any) -> list[AuditEntry]:
    entries = []
    with transaction.atomic():
        for i in range(count):
            values: dict[str, Any] = {
                "action": "membership.role_changed",
                "actor_type": "user",
                "actor_id": "u-1",
                "actor_label": "ada@example.com",
                "target_type": "membership",
                "target_id": f"m-{i}",
                "before": {"role": "viewer"},
                "after": {"role": "engineer"},
                "ip": "192.0.2.10",
                "client": "Mozilla/5.0",
            }
            values.update(fields)
            entries.append(services.record(chain, **values))
    return entries


@contextmanager
def trigger_disabled() -> Iterator[None]:
    # Exactly what an attacker with owner rights on the table would do first.
    postgres = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        if postgres:
            cursor.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER {TRIGGER}")
        try:
            yield
        finally:
            if postgres:
                cursor.execute(f"ALTER TABLE {TABLE} ENABLE TRIGGER {TRIGGER}")


def raw(sql: str, params: list[Any]) -> None:
    with trigger_disabled(), connection.cursor() as cursor:
        cursor.execute(sql.format(table=TABLE), params)
