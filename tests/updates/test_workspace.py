"""The signing workspace on real files, checked with the cloud's own publication verifier.

No database: the online keys are made here as the cloud would make them, and what the
workspace signs is run through ``tuf_repo.verify_publication`` (what ``repository.publish``
runs before it stores anything).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import Key

from fieldlink.updates import tuf_repo
from fieldlink.updates.workspace import (
    PassphraseError,
    Workspace,
    WorkspaceError,
    parse_online_keys,
)
from tests.updates.test_bundle import agent_wheels

PASSPHRASE = b"correct horse battery staple"


def online_document() -> dict[str, Any]:
    """What `fieldlink updates keys` prints (the public halves of fresh online keys)."""
    out = {}
    for role in ("snapshot", "timestamp", "config"):
        key = tuf_repo.new_signer().public_key
        out[role] = {"keyid": key.keyid, **key.to_dict()}
    return out


def verify(ws: Workspace, trusted_files: dict[str, bytes] | None = None) -> tuf_repo.Publication:
    trusted = tuf_repo.Repository.load(trusted_files).md if trusted_files else {}
    published = {role: md.signed.version for role, md in trusted.items()}
    files = ws.publication(published).files
    return tuf_repo.verify_publication(
        trusted, files, online_keys=ws.online_keys(), now=datetime.now(UTC)
    )


def make(tmp_path: Path, **counts: int) -> Workspace:
    return Workspace.init(
        tmp_path / "ws", online_keys=online_document(), passphrase=PASSPHRASE, **counts
    )


def test_init_writes_encrypted_private_keys_and_verifiable_metadata(tmp_path: Path) -> None:
    ws = make(tmp_path, release_keys=3, release_threshold=2)
    assert ws.keys_dir.stat().st_mode & 0o777 == 0o700
    names = sorted(p.name for p in ws.keys_dir.iterdir())
    assert names == [
        "release-1.pem",
        "release-2.pem",
        "release-3.pem",
        "root-1.pem",
        "targets-1.pem",
    ]
    for path in ws.keys_dir.iterdir():
        assert path.stat().st_mode & 0o777 == 0o600
        pem = path.read_bytes()
        assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert PASSPHRASE not in pem
    assert sorted(ws.metadata_files()) == ["1.release.json", "1.root.json", "1.targets.json"]
    publication = verify(ws)
    assert publication.release is not None
    assert publication.release.signed.targets == {}
    assert len(publication.release.signatures) == 3  # init holds every release key


def test_wrong_passphrase_refused(tmp_path: Path) -> None:
    ws = make(tmp_path)
    with pytest.raises(PassphraseError, match="wrong passphrase"):
        ws.load_signer("release-1", b"not the passphrase at all")
    assert ws.load_signer("release-1", PASSPHRASE).public_key.keyid


def test_short_passphrase_refused(tmp_path: Path) -> None:
    with pytest.raises(PassphraseError, match="at least 15"):
        Workspace.init(tmp_path / "ws", online_keys=online_document(), passphrase=b"short")
    assert not (tmp_path / "ws" / "keys").exists()


def test_world_readable_key_file_refused(tmp_path: Path) -> None:
    ws = make(tmp_path)
    (ws.keys_dir / "release-1.pem").chmod(0o644)
    with pytest.raises(WorkspaceError, match="readable by others"):
        ws.load_signer("release-1", PASSPHRASE)


def test_online_keys_with_private_material_refused() -> None:
    document = online_document()
    document["config"]["keyval"]["private"] = "00" * 32
    with pytest.raises(WorkspaceError, match="private"):
        parse_online_keys(document)


def test_online_key_with_a_foreign_keyid_refused() -> None:
    document = online_document()
    document["config"]["keyid"] = "ab" * 32
    with pytest.raises(WorkspaceError, match="keyid does not match"):
        parse_online_keys(document)


def test_init_refuses_to_overwrite_a_workspace(tmp_path: Path) -> None:
    make(tmp_path)
    with pytest.raises(WorkspaceError, match="already holds"):
        make(tmp_path)


def test_release_is_ready_only_at_its_threshold(tmp_path: Path) -> None:
    ws = make(tmp_path, release_keys=3, release_threshold=2)
    status = ws.add_release("1.2.0", wheels=_wheels(tmp_path, "1.2.0"))
    assert (status.version, status.signed, status.threshold) == (2, 0, 2)

    first = ws.sign("release", ws.signers_for("release", PASSPHRASE, ["release-1"]))
    assert first.describe().startswith("release v2: 1 of 2 signatures")
    assert not first.ready
    assert "2.release.json" not in ws.metadata_files()

    second = ws.sign("release", ws.signers_for("release", PASSPHRASE, ["release-3"]))
    assert second.describe().startswith("release v2: 2 of 2 signatures")
    assert second.ready
    assert ws.staged() == {}
    publication = verify(ws, {n: d for n, d in ws.metadata_files().items() if n.startswith("1.")})
    assert publication.release is not None
    target = publication.release.signed.targets["software/fieldlink-agent-1.2.0.tar"]
    assert target.length == ws.bundle_path("1.2.0").stat().st_size
    assert target.custom == {"version": "1.2.0", "allow_downgrade": False}


def test_one_signature_twice_does_not_count_twice(tmp_path: Path) -> None:
    ws = make(tmp_path, release_keys=2, release_threshold=2)
    ws.add_release("1.2.0", wheels=_wheels(tmp_path, "1.2.0"))
    ws.sign("release", ws.signers_for("release", PASSPHRASE, ["release-1"]))
    again = ws.sign("release", ws.signers_for("release", PASSPHRASE, ["release-1"]))
    assert (again.signed, again.ready) == (1, False)


def test_release_signed_with_a_targets_key_refused(tmp_path: Path) -> None:
    ws = make(tmp_path)
    ws.add_release("1.2.0", wheels=_wheels(tmp_path, "1.2.0"))
    with pytest.raises(WorkspaceError, match="not a key of the release role"):
        ws.signers_for("release", PASSPHRASE, ["targets-1"])
    intruder = ws.load_signer("targets-1", PASSPHRASE)
    with pytest.raises(WorkspaceError, match="not a key of the release role"):
        ws.sign("release", [intruder])


def test_adding_a_bundle_drops_signatures_over_the_old_content(tmp_path: Path) -> None:
    ws = make(tmp_path, release_keys=2, release_threshold=2)
    ws.add_release("1.2.0", wheels=_wheels(tmp_path, "1.2.0"))
    ws.sign("release", ws.signers_for("release", PASSPHRASE, ["release-1"]))
    status = ws.add_release("1.2.1", wheels=_wheels(tmp_path, "1.2.1"))
    assert (status.version, status.signed) == (2, 0)
    assert sorted(ws.staged()["release"].signed.targets) == [
        "software/fieldlink-agent-1.2.0.tar",
        "software/fieldlink-agent-1.2.1.tar",
    ]


def test_release_downgrade_refused_unless_signed_for_rollback(tmp_path: Path) -> None:
    ws = make(tmp_path)
    ws.add_release("1.3.0", wheels=_wheels(tmp_path, "1.3.0"))
    ws.sign("release", ws.signers_for("release", PASSPHRASE))
    with pytest.raises(WorkspaceError, match=r"older than 1\.3\.0"):
        ws.add_release("1.2.0", wheels=_wheels(tmp_path, "1.2.0"))
    ws.add_release("1.2.0", wheels=_wheels(tmp_path, "1.2.0"), allow_downgrade=True)
    target = ws.staged()["release"].signed.targets["software/fieldlink-agent-1.2.0.tar"]
    assert target.custom == {"version": "1.2.0", "allow_downgrade": True}


def test_same_version_with_other_bytes_refused(tmp_path: Path) -> None:
    ws = make(tmp_path)
    ws.add_release("1.2.0", wheels=_wheels(tmp_path, "1.2.0"))
    ws.sign("release", ws.signers_for("release", PASSPHRASE))
    with pytest.raises(WorkspaceError, match="already in the release role"):
        ws.add_release("1.2.0", wheels=_wheels(tmp_path / "other", "1.2.0"))


def test_foreign_bundle_is_checked_before_it_is_staged(tmp_path: Path) -> None:
    ws = make(tmp_path)
    junk = tmp_path / "fieldlink-agent-1.2.0.tar"
    junk.write_bytes(b"not a tar" * 100)
    with pytest.raises(WorkspaceError, match="bundle refused"):
        ws.add_release("1.2.0", bundle=junk)
    assert ws.staged() == {}
    assert not ws.bundle_path("1.2.0").exists()


def test_sign_with_nothing_staged_needs_renew(tmp_path: Path) -> None:
    ws = make(tmp_path)
    with pytest.raises(WorkspaceError, match="--renew"):
        ws.sign("targets", ws.signers_for("targets", PASSPHRASE))
    status = ws.sign("targets", ws.signers_for("targets", PASSPHRASE), renew=True)
    assert (status.version, status.ready) == (2, True)
    verify(ws, {n: d for n, d in ws.metadata_files().items() if n.startswith("1.")})


def test_root_rotation_chains_from_the_old_root(tmp_path: Path) -> None:
    ws = make(tmp_path)
    trusted = dict(ws.metadata_files())
    old = ws.signers_for("root", PASSPHRASE)
    status = ws.rotate_root(new_keys=2, threshold=2, old_signers=old, passphrase=PASSPHRASE)
    assert status.ready
    assert (status.signed, status.threshold) == (2, 2)
    assert (status.previous_signed, status.previous_threshold) == (1, 1)
    assert ws.key_names("root") == ["root-1", "root-2", "root-3"]
    publication = verify(ws, trusted)
    assert [root.signed.version for root in publication.roots] == [2]
    # The old key no longer signs anything but the rotation itself.
    new = ws.signers_for("root", PASSPHRASE)
    assert {s.public_key.keyid for s in new} == {
        ws.load_signer(name, PASSPHRASE).public_key.keyid for name in ("root-2", "root-3")
    }


def test_root_rotation_without_old_keys_is_staged_not_ready(tmp_path: Path) -> None:
    ws = make(tmp_path)
    status = ws.rotate_root(new_keys=1, threshold=1, old_signers=[], passphrase=PASSPHRASE)
    assert not status.ready
    assert (status.previous_signed, status.previous_threshold) == (0, 1)
    assert "2.root.json" not in ws.metadata_files()
    # The holder of the old key signs afterwards: now it chains.
    done = ws.sign("root", ws.signers_for("root", PASSPHRASE, ["root-1"]))
    assert done.ready
    assert "2.root.json" in ws.metadata_files()


def test_publication_sends_only_what_the_cloud_lacks(tmp_path: Path) -> None:
    ws = make(tmp_path)
    ws.add_release("1.2.0", wheels=_wheels(tmp_path, "1.2.0"))
    ws.sign("release", ws.signers_for("release", PASSPHRASE))
    first = ws.publication({})
    assert sorted(first.files) == ["1.root.json", "1.targets.json", "2.release.json"]
    assert list(first.bundles) == ["software/fieldlink-agent-1.2.0.tar"]
    later = ws.publication({"root": 1, "targets": 1, "release": 2})
    assert later.files == {}
    assert later.bundles == {}


def test_online_keys_file_round_trips(tmp_path: Path) -> None:
    ws = make(tmp_path)
    keys: dict[str, Key] = ws.online_keys()
    stored = json.loads((ws.path / "online-keys.json").read_text())
    assert {role: key.keyid for role, key in keys.items()} == {
        role: entry["keyid"] for role, entry in stored.items()
    }


def _wheels(tmp_path: Path, version: str) -> Path:
    directory = tmp_path / f"wheels-{version}"
    agent_wheels(directory, version)
    return directory
