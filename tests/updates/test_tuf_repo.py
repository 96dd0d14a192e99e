"""The pure TUF repository: what the cloud refuses to publish, and how online roles refresh.

Every refusal here is a way a release engineer's mistake or an attacker's file would otherwise
reach devices; the devices would refuse them too (tests/edge/test_updater.py), but the cloud
must not serve what no device can use.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from tuf.api.metadata import Metadata, SuccinctRoles

from fieldlink.updates import tuf_repo
from fieldlink.updates.tuf_repo import PublicationError, Repository, new_signer, verify_publication

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def keys() -> dict[str, list[tuf_repo.Signer]]:
    return {name: [new_signer() for _ in range(3)] for name in ("root", "targets", "release")} | {
        name: [new_signer()] for name in ("snapshot", "timestamp", "config")
    }


def online(keys: dict[str, list[tuf_repo.Signer]]) -> dict[str, tuf_repo.Key]:
    return {name: keys[name][0].public_key for name in ("snapshot", "timestamp", "config")}


def offline(keys: dict[str, list[tuf_repo.Signer]], **kwargs: int) -> Repository:
    return Repository.offline(
        root=keys["root"][:1],
        targets=keys["targets"][:1],
        release=[s.public_key for s in keys["release"][:2]],
        online={name: keys[name][0] for name in ("snapshot", "timestamp", "config")},
        root_threshold=kwargs.get("root_threshold", 1),
        targets_threshold=1,
        release_threshold=kwargs.get("release_threshold", 1),
        now=NOW,
    )


def complete(keys: dict[str, list[tuf_repo.Signer]], *, bin_bits: int) -> Repository:
    """Every role signed, one key each (what the cloud serves after a first publication)."""
    return Repository.create(
        root=keys["root"][:1],
        targets=keys["targets"][:1],
        release=keys["release"][:1],
        snapshot=keys["snapshot"][0],
        timestamp=keys["timestamp"][0],
        config=keys["config"][0],
        bin_bits=bin_bits,
        now=NOW,
    )


def signed_release(repo: Repository, keys: dict[str, list[tuf_repo.Signer]], n: int = 1) -> None:
    repo.stage_software("1.2.0", b"bundle")
    repo.sign_role("release", signers=keys["release"][:n])


def test_first_publication_verifies(keys: dict[str, list[tuf_repo.Signer]]) -> None:
    repo = offline(keys)
    signed_release(repo, keys)
    publication = verify_publication({}, repo.files, online_keys=online(keys), now=NOW)
    assert [r.signed.version for r in publication.roots] == [1]
    assert publication.release is not None
    assert "software/fieldlink-agent-1.2.0.tar" in publication.release.signed.targets


def test_first_publication_must_start_at_root_1(keys: dict[str, list[tuf_repo.Signer]]) -> None:
    repo = offline(keys)
    repo.rotate_root(keys["root"][1:2], 1)
    files = {k: v for k, v in repo.files.items() if k != "1.root.json"}
    with pytest.raises(PublicationError, match=r"1\.root\.json"):
        verify_publication({}, files, online_keys=online(keys), now=NOW)


def test_release_below_threshold_refused(keys: dict[str, list[tuf_repo.Signer]]) -> None:
    repo = offline(keys, release_threshold=2)
    signed_release(repo, keys, n=1)
    with pytest.raises(PublicationError, match="release: not signed by enough"):
        verify_publication({}, repo.files, online_keys=online(keys), now=NOW)
    signed_release(repo, keys, n=2)
    verify_publication({}, repo.files, online_keys=online(keys), now=NOW)


def test_release_signed_by_an_unknown_key_refused(keys: dict[str, list[tuf_repo.Signer]]) -> None:
    repo = offline(keys)
    repo.stage_software("1.2.0", b"bundle")
    repo.sign_role("release", signers=[new_signer()])
    with pytest.raises(PublicationError, match="release: not signed"):
        verify_publication({}, repo.files, online_keys=online(keys), now=NOW)


def test_root_not_trusting_this_clouds_online_keys_refused(
    keys: dict[str, list[tuf_repo.Signer]],
) -> None:
    repo = offline(keys)
    other = {name: new_signer().public_key for name in ("snapshot", "timestamp", "config")}
    with pytest.raises(PublicationError, match="online snapshot key"):
        verify_publication({}, repo.files, online_keys=other, now=NOW)


def test_online_key_delegated_software_refused(keys: dict[str, list[tuf_repo.Signer]]) -> None:
    """A targets role that lets the online config key sign software is never published."""
    repo = offline(keys)
    delegations = repo.md["targets"].signed.delegations
    delegations.roles["release"].keyids.append(keys["config"][0].public_key.keyid)
    repo.sign_role("targets")
    with pytest.raises(PublicationError, match="online key may never sign software"):
        verify_publication({}, repo.files, online_keys=online(keys), now=NOW)


def test_config_role_widened_to_software_paths_refused(
    keys: dict[str, list[tuf_repo.Signer]],
) -> None:
    repo = offline(keys)
    repo.md["targets"].signed.delegations.roles["config"].paths = ["*"]
    repo.sign_role("targets")
    with pytest.raises(PublicationError, match="config/\\* only"):
        verify_publication({}, repo.files, online_keys=online(keys), now=NOW)


def test_targets_version_rollback_refused(keys: dict[str, list[tuf_repo.Signer]]) -> None:
    repo = offline(keys)
    old_targets = repo.files["1.targets.json"]
    repo.sign_role("targets")
    trusted = Repository.load(repo.files, now=NOW).md
    with pytest.raises(PublicationError, match="Nothing newer"):
        verify_publication(
            trusted, {"1.targets.json": old_targets}, online_keys=online(keys), now=NOW
        )


def test_expired_release_refused(keys: dict[str, list[tuf_repo.Signer]]) -> None:
    repo = offline(keys)
    signed_release(repo, keys)
    later = NOW + tuf_repo.EXPIRY["release"] + timedelta(days=1)
    with pytest.raises(PublicationError, match="expired"):
        verify_publication({}, repo.files, online_keys=online(keys), now=later)


def test_release_target_outside_the_naming_rule_refused(
    keys: dict[str, list[tuf_repo.Signer]],
) -> None:
    repo = offline(keys)
    repo.stage_software("1.2.0", b"bundle")
    target = repo.md["release"].signed.targets.pop("software/fieldlink-agent-1.2.0.tar")
    target.path = "software/evil.sh"
    repo.md["release"].signed.targets["software/evil.sh"] = target
    repo.sign_role("release", signers=keys["release"][:1])
    with pytest.raises(PublicationError, match="evil"):
        verify_publication({}, repo.files, online_keys=online(keys), now=NOW)


def test_root_rotation_chains_and_a_rotation_without_old_keys_is_refused(
    keys: dict[str, list[tuf_repo.Signer]],
) -> None:
    repo = offline(keys)
    trusted = Repository.load(repo.files, now=NOW).md
    forged = repo.copy()
    forged.rotate_root(keys["root"][1:2], 1, old_root=[])
    with pytest.raises(PublicationError, match="old keys"):
        verify_publication(
            trusted, {"2.root.json": forged.files["2.root.json"]}, online_keys=online(keys), now=NOW
        )
    repo.rotate_root(keys["root"][1:2], 1)
    publication = verify_publication(
        trusted, {"2.root.json": repo.files["2.root.json"]}, online_keys=online(keys), now=NOW
    )
    assert publication.roots[0].signed.version == 2


def test_a_version_gap_in_the_root_chain_refused(keys: dict[str, list[tuf_repo.Signer]]) -> None:
    repo = offline(keys)
    trusted = Repository.load(repo.files, now=NOW).md
    repo.rotate_root(keys["root"][1:2], 1)
    repo.rotate_root(keys["root"][2:3], 1)
    with pytest.raises(PublicationError, match="does not follow"):
        verify_publication(
            trusted, {"3.root.json": repo.files["3.root.json"]}, online_keys=online(keys), now=NOW
        )


def test_history_in_the_workspace_is_skipped_not_republished(
    keys: dict[str, list[tuf_repo.Signer]],
) -> None:
    repo = offline(keys)
    trusted = Repository.load(repo.files, now=NOW).md
    signed_release(repo, keys)
    publication = verify_publication(trusted, repo.files, online_keys=online(keys), now=NOW)
    assert sorted(publication.files) == ["2.release.json"]


def test_only_offline_roles_are_accepted(keys: dict[str, list[tuf_repo.Signer]]) -> None:
    repo = complete(keys, bin_bits=4)
    with pytest.raises(PublicationError, match="only root, targets and release"):
        verify_publication(
            {},
            {"1.snapshot.json": repo.files["1.snapshot.json"]},
            online_keys=online(keys),
            now=NOW,
        )


def test_config_goes_to_one_bin_and_moves_snapshot_and_timestamp(
    keys: dict[str, list[tuf_repo.Signer]],
) -> None:
    repo = complete(keys, bin_bits=4)
    succinct = repo.md["config"].signed.delegations.succinct_roles
    assert isinstance(succinct, SuccinctRoles)
    assert len(list(succinct.get_roles())) == 16
    snapshot_before = repo.md["snapshot"].signed.version
    repo.changed.clear()
    repo.set_config("device-a", b"{}")
    bin_name = repo.bin_for("config/device-a.json")
    roles = {Metadata.from_bytes(repo.files[n]).signed.type for n in repo.changed}
    changed_bins = [n for n in repo.changed if tuf_repo.BIN_PREFIX in n]
    assert roles == {"targets", "snapshot", "timestamp"}
    assert changed_bins == [f"2.{bin_name}.json"]
    assert repo.md["snapshot"].signed.version == snapshot_before + 1
    assert repo.md["snapshot"].signed.meta[f"{bin_name}.json"].version == 2
    assert "timestamp.json" in repo.changed


def test_refresh_resigns_only_what_is_past_half_its_lifetime(
    keys: dict[str, list[tuf_repo.Signer]],
) -> None:
    repo = complete(keys, bin_bits=2)
    repo.changed.clear()
    assert repo.refresh(NOW + timedelta(hours=1)) == []
    assert repo.refresh(NOW + timedelta(hours=13)) == ["timestamp.json"]
    assert repo.md["timestamp"].signed.expires == NOW + timedelta(hours=13, days=1)
    signed = repo.refresh(NOW + timedelta(days=16))
    roles = {Metadata.from_bytes(repo.files[n]).signed.type for n in signed}
    assert roles == {"targets", "snapshot", "timestamp"}  # config + bins are targets metadata
    assert repo.md["config"].signed.version == 2


def test_private_keys_are_encrypted_with_the_passphrase() -> None:
    signer = new_signer()
    pem = tuf_repo.private_pem(signer, b"correct horse battery staple")
    assert b"ENCRYPTED" in pem
    loaded = tuf_repo.signer_from_pem(pem, b"correct horse battery staple")
    assert loaded.public_key.keyid == signer.public_key.keyid
    with pytest.raises(ValueError, match=r"password|decrypt|Bad"):
        tuf_repo.signer_from_pem(pem, b"wrong")
