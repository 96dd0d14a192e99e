"""``fieldlink audit verify`` against an organisation's real trail tampered with by raw SQL.

Editing a row through the CLI is covered in test_chain.py; these add deleting and reordering.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fieldlink.audit.models import AuditEntry
from fieldlink.cli import main as cli
from tests.audit.conftest import raw
from tests.audit.test_audit_api import Org, build_org

pytestmark = [pytest.mark.django_db, pytest.mark.backend]


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    # The command runs against the test database already set up; booting again would
    # reconfigure Django's logging in the middle of the test session.
    monkeypatch.setattr(cli, "_boot", lambda: None)
    return CliRunner()


@pytest.fixture
def plant() -> Org:
    return build_org("alpha")


def test_cli_verify_fails_and_names_a_deleted_entry(run_cli: CliRunner, plant: Org) -> None:
    assert run_cli.invoke(cli.app, ["audit", "verify"]).exit_code == 0
    after_gap = AuditEntry.objects.get(chain=plant.chain, sequence=5)
    raw("DELETE FROM {table} WHERE chain = %s AND sequence = 4", [plant.chain])
    result = run_cli.invoke(cli.app, ["audit", "verify"])
    assert result.exit_code == 1
    assert f"deleted: chain {plant.chain} sequence 4 entry {after_gap.pk}" in result.output
    assert "#4 missing before #5" in result.output


def test_cli_verify_fails_and_names_reordered_entries(run_cli: CliRunner, plant: Org) -> None:
    second = AuditEntry.objects.get(chain=plant.chain, sequence=2)
    sixth = AuditEntry.objects.get(chain=plant.chain, sequence=6)
    # Swap #2 and #6 through a free number, as the unique (chain, sequence) constraint demands.
    for old, new in ((2, 1000), (6, 2), (1000, 6)):
        raw(
            "UPDATE {table} SET sequence = %s WHERE chain = %s AND sequence = %s",
            [new, plant.chain, old],
        )
    result = run_cli.invoke(cli.app, ["audit", "verify", "--chain", plant.chain])
    assert result.exit_code == 1
    assert f"reordered: chain {plant.chain} sequence 2 entry {sixth.pk}" in result.output
    assert f"reordered: chain {plant.chain} sequence 6 entry {second.pk}" in result.output
    assert "recorded as #6, now at #2" in result.output


def test_cli_verify_names_only_the_tampered_organisation(run_cli: CliRunner, plant: Org) -> None:
    other = build_org("beta")
    raw(
        "UPDATE {table} SET actor_label = %s WHERE chain = %s AND sequence = 3",
        ["mallory@beta.example", other.chain],
    )
    result = run_cli.invoke(cli.app, ["audit", "verify"])
    assert result.exit_code == 1
    assert f"altered: chain {other.chain} sequence 3" in result.output
    assert plant.chain not in result.output
    clean = run_cli.invoke(cli.app, ["audit", "verify", "--chain", plant.chain])
    assert clean.exit_code == 0
    assert "audit trail intact: 9 entries in 1 chains" in clean.output
