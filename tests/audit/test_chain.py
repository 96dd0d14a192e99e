from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC

import pytest
from django.db import DatabaseError, OperationalError, connection, transaction
from typer.testing import CliRunner

from fieldlink.audit import services
from fieldlink.audit.errors import AuditImmutableError, AuditOutsideTransactionError
from fieldlink.audit.models import GENESIS_HASH, AuditEntry
from fieldlink.cli import main as cli
from tests.audit.conftest import TABLE, append, raw

pytestmark = [pytest.mark.django_db, pytest.mark.backend]

ORG = "8b0f7c1e-3a52-4c8e-9f0a-2f6e1d3c4b5a"
OTHER_ORG = "1d2c3b4a-5e6f-4a7b-8c9d-0e1f2a3b4c5d"


def test_appended_entries_form_a_valid_chain() -> None:
    entries = append(ORG, 4)
    stored = list(AuditEntry.objects.filter(chain=ORG))
    assert [e.sequence for e in stored] == [1, 2, 3, 4]
    assert [e.id for e in stored] == [e.id for e in entries]
    for previous, entry in itertools.pairwise(stored):
        assert entry.prev_hash == previous.hash
        assert entry.created_at >= previous.created_at
    # The hash recomputed from what the database hands back equals the one stored at write time.
    assert all(services.entry_hash(e.__dict__) == e.hash for e in stored)
    assert stored[0].created_at.tzinfo is not None
    assert stored[0].created_at.utcoffset() == UTC.utcoffset(None)
    assert services.verify() == []
    report = services.verify_report()
    assert (report.entries, report.chains) == (4, 1)


def test_first_entry_links_to_sixty_four_zeros() -> None:
    (first,) = append("platform", 1)
    assert first.sequence == 1
    assert first.prev_hash == GENESIS_HASH == "0" * 64


def test_every_field_is_covered_by_the_hash() -> None:
    (entry,) = append(ORG, 1)
    fields = {name: getattr(entry, name) for name in services.HASHED_FIELDS}
    for name in services.HASHED_FIELDS:
        changed = dict(fields)
        changed[name] = 2 if name == "sequence" else {"x": 1} if name == "after" else "changed"
        assert services.entry_hash(changed) != entry.hash, name


def test_secrets_in_before_and_after_never_reach_the_database() -> None:
    password = "violet-harbor-quantum-lantern-97"
    api_key = "flk_9a8b7c6d5e4f3a2b1c0d9e8f"
    append(
        ORG,
        1,
        action="api_key.rotated",
        before={"password": password, "nested": {"token": "tok-123456789"}, "key": api_key},
        after={"note": f"Authorization: Bearer {api_key}", "name": "ci"},
    )
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT before, after FROM {TABLE}")  # noqa: S608
        stored = repr(cursor.fetchall())
    for secret in (password, "tok-123456789", api_key):
        assert secret not in stored
    assert "[REDACTED]" in stored
    assert '"ci"' in stored or "'ci'" in stored
    assert services.verify() == []


@pytest.mark.django_db(transaction=True)
def test_record_outside_the_callers_transaction_is_refused() -> None:
    with pytest.raises(AuditOutsideTransactionError):
        services.record(ORG, action="org.renamed", actor_type="user", actor_id="u-1")
    assert not AuditEntry.objects.exists()


def test_orm_update_and_delete_are_refused() -> None:
    (entry,) = append(ORG, 1)
    entry.action = "org.deleted"
    with pytest.raises(AuditImmutableError):
        entry.save()
    with pytest.raises(AuditImmutableError):
        entry.delete()
    with pytest.raises(AuditImmutableError):
        AuditEntry.objects.filter(pk=entry.pk).update(action="org.deleted")
    with pytest.raises(AuditImmutableError):
        AuditEntry.objects.all().delete()
    with pytest.raises(AuditImmutableError):
        AuditEntry.objects.bulk_update([entry], ["action"])
    with pytest.raises(AuditImmutableError):
        AuditEntry.objects.bulk_create([AuditEntry(chain=ORG, sequence=9)])
    assert AuditEntry.objects.get().action == "membership.role_changed"


def test_database_refuses_raw_update_and_delete_of_an_entry() -> None:
    (entry,) = append(ORG, 1)
    if connection.vendor == "postgresql":
        for sql in (
            f"UPDATE {TABLE} SET action = 'x' WHERE chain = %s",  # noqa: S608
            f"DELETE FROM {TABLE} WHERE chain = %s",  # noqa: S608
        ):
            with (
                pytest.raises(DatabaseError, match="append-only"),
                transaction.atomic(),
                connection.cursor() as cursor,
            ):
                cursor.execute(sql, [ORG])
    else:
        # SQLite has no trigger: the ORM guard is the barrier, and the chain shows the rest.
        with pytest.raises(AuditImmutableError):
            AuditEntry.objects.filter(chain=ORG).update(action="x")
        with pytest.raises(AuditImmutableError):
            AuditEntry.objects.filter(chain=ORG).delete()
    assert AuditEntry.objects.get().action == entry.action


def test_altered_entry_is_detected_and_named() -> None:
    entries = append(ORG, 5)
    raw(
        "UPDATE {table} SET after = %s WHERE chain = %s AND sequence = 3",
        ['{"role": "owner"}', ORG],
    )
    (finding,) = services.verify()
    assert (finding.kind, finding.chain, finding.sequence) == ("altered", ORG, 3)
    assert finding.entry_id == str(entries[2].id)


def test_rewritten_entry_with_recomputed_hash_is_detected_by_its_successor() -> None:
    entries = append(ORG, 4)
    forged = {name: getattr(entries[1], name) for name in services.HASHED_FIELDS}
    forged["actor_label"] = "someone-else@example.com"
    raw(
        "UPDATE {table} SET actor_label = %s, hash = %s WHERE chain = %s AND sequence = 2",
        [forged["actor_label"], services.entry_hash(forged), ORG],
    )
    (finding,) = services.verify()
    assert (finding.kind, finding.sequence, finding.entry_id) == ("altered", 2, str(entries[1].id))


def test_deleted_entry_is_detected_and_named() -> None:
    entries = append(ORG, 5)
    raw("DELETE FROM {table} WHERE chain = %s AND sequence = 3", [ORG])
    (finding,) = services.verify()
    assert (finding.kind, finding.chain, finding.sequence) == ("deleted", ORG, 3)
    # The deleted row is gone; the finding names the entry right after the gap.
    assert finding.entry_id == str(entries[3].id)
    assert "#3 missing" in finding.detail


def test_deleted_first_entry_is_detected() -> None:
    append(ORG, 3)
    raw("DELETE FROM {table} WHERE chain = %s AND sequence = 1", [ORG])
    (finding,) = services.verify()
    assert (finding.kind, finding.sequence) == ("deleted", 1)


def test_reordered_entries_are_detected_and_named() -> None:
    entries = append(ORG, 5)
    # Swap #2 and #4 through a free number, as the unique (chain, sequence) constraint demands.
    for old, new in ((2, 1000), (4, 2), (1000, 4)):
        raw(
            "UPDATE {table} SET sequence = %s WHERE chain = %s AND sequence = %s",
            [new, ORG, old],
        )
    findings = services.verify()
    assert {(f.kind, f.sequence, f.entry_id) for f in findings} == {
        ("reordered", 2, str(entries[3].id)),
        ("reordered", 4, str(entries[1].id)),
    }
    assert "recorded as #4" in next(f.detail for f in findings if f.sequence == 2)


def test_tampering_in_one_chain_does_not_taint_another() -> None:
    append(ORG, 3)
    append(OTHER_ORG, 3)
    append("platform", 2)
    raw("DELETE FROM {table} WHERE chain = %s AND sequence = 2", [ORG])
    assert {f.chain for f in services.verify()} == {ORG}
    assert services.verify(OTHER_ORG) == []
    assert services.verify("platform") == []
    report = services.verify_report()
    assert (report.entries, report.chains) == (7, 3)


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_never_share_a_sequence_number() -> None:
    workers, each = 6, 5
    errors: list[BaseException] = []
    start = threading.Barrier(workers)
    deadline = time.monotonic() + 60

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(each):
                while True:
                    try:
                        with transaction.atomic():
                            services.record(
                                ORG,
                                action="device.renamed",
                                actor_type="device",
                                actor_id=f"d-{n}-{i}",
                            )
                        break
                    except OperationalError as exc:
                        # The SQLite test database is in memory with a shared cache, where a
                        # held write lock is reported at once ("table is locked") instead of
                        # waited for as the file database's busy timeout does; the retry stands
                        # in for that wait. A duplicate sequence would be an IntegrityError.
                        if connection.vendor != "sqlite" or "locked" not in str(exc):
                            raise
                        # Yield instead of spinning: six threads retrying at full speed could
                        # starve the lock holder of the GIL (seen once under load).
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.001)
        except BaseException as exc:  # noqa: BLE001 - a thread's error is asserted in the test
            errors.append(exc)
        finally:
            connection.close()  # each thread has its own connection; the test DB must drop it

    threads = [threading.Thread(target=work, args=(n,)) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    sequences = list(AuditEntry.objects.filter(chain=ORG).values_list("sequence", flat=True))
    assert sequences == list(range(1, workers * each + 1))
    assert services.verify() == []


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # The command body runs against the test database already set up here; booting again would
    # reconfigure Django's logging in the middle of the test session.
    monkeypatch.setattr(cli, "_boot", lambda: None)
    return CliRunner()


def test_cli_verify_reports_an_intact_trail(run_cli: CliRunner) -> None:
    append(ORG, 3)
    append("platform", 1)
    result = run_cli.invoke(cli.app, ["audit", "verify"])
    assert result.exit_code == 0, result.output
    assert "audit trail intact: 4 entries in 2 chains" in result.output
    result = run_cli.invoke(cli.app, ["audit", "verify", "--chain", "platform"])
    assert "audit trail intact: 1 entries in 1 chains" in result.output


def test_cli_verify_fails_and_names_an_entry_edited_in_the_database(run_cli: CliRunner) -> None:
    entries = append(ORG, 3)
    raw("UPDATE {table} SET actor_id = 'u-2' WHERE chain = %s AND sequence = 2", [ORG])
    result = run_cli.invoke(cli.app, ["audit", "verify"])
    assert result.exit_code == 1
    assert f"altered: chain {ORG} sequence 2 entry {entries[1].id}" in result.output
