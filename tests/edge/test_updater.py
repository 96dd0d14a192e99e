"""The agent's updater against a real TUF repository over real HTTPS: every attack refused.

The repository is signed by ``fieldlink.updates.tuf_repo`` (what the cloud and the release
tooling run), served by ``tuf_support.TufServer`` on 127.0.0.1, and read by
``edge.updater.EdgeUpdater`` (python-tuf's ngclient with our httpx fetcher). An attacker here
is whoever controls what the server sends — the path, the server, or the cloud with its online
keys (snapshot, timestamp, config) — never the offline root, targets and release keys. Each
refusal must also come out as the code the agent reports (``CHECK_ERRORS``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import Signer
from tuf.api.metadata import MetaFile, TargetFile

from fieldlink.edge.config import ConfigError
from fieldlink.edge.device_config import load_config_target
from fieldlink.edge.enroll import (
    Enrolled,
    enroll,
    read_credential,
    read_device_id,
    write_credential,
)
from fieldlink.edge.updater import EdgeUpdater, Limits, UpdateCheckError
from fieldlink.protocol.edge import ENROLL_PATH
from fieldlink.protocol.updates import CHECK_ERRORS, compare_versions, release_version_key
from fieldlink.updates.tuf_repo import Repository, new_signer
from tests.edge.conftest import pki_for
from tests.edge.tuf_support import (
    Device,
    Keys,
    TufServer,
    bundle_bytes,
    make_device,
    make_keys,
    make_repo,
)
from tests.plugins.log_canary import register_canary

OTHER_DEVICE = "0b7f2a44-6a43-4f0c-9d7e-3d7a9b6f0c11"


@dataclass
class World:
    device: Device
    keys: Keys
    repo: Repository
    server: TufServer

    def updater(self, *, version: str = "1.2.0", limits: Limits | None = None) -> EdgeUpdater:
        return self.device.updater(self.server, version=version, limits=limits)

    def publish(self) -> None:
        self.server.publish(self.repo)

    def served_target(self, path: str) -> str:
        directory, _, name = path.rpartition("/")
        for served in self.repo.target_files():
            if served.startswith(directory + "/") and served.endswith("." + name):
                return served
        raise AssertionError(path)

    def target_gets(self) -> list[str]:
        return [g for g in self.server.gets if "/tuf/targets/" in g]


def config_bytes(device_id: str, version: int = 1, sources: list[Any] | None = None) -> bytes:
    doc = {
        "format": 1,
        "device_id": device_id,
        "version": version,
        "log_level": "info",
        "sources": sources or [],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def make_world(tmp_path: Path, *, release: int = 1, release_threshold: int = 1) -> World:
    device, pki = make_device(tmp_path)
    keys = make_keys(release=release)
    repo = make_repo(keys, release_threshold=release_threshold)
    repo.add_software("1.3.0", bundle_bytes("1.3.0"))
    repo.set_config(device.device_id, config_bytes(device.device_id))
    device.pin_root(repo)
    return World(device, keys, repo, TufServer(tmp_path / "served", pki))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    built = make_world(tmp_path)
    with built.server:
        built.publish()
        yield built


def refused(call: Callable[[], object], code: str) -> UpdateCheckError:
    assert code in CHECK_ERRORS
    with pytest.raises(UpdateCheckError) as caught:
        call()
    assert caught.value.check_code == code, caught.value.message
    return caught.value


def downloaded(world: World) -> list[str]:
    return sorted(p.name for p in (world.device.home / "tuf" / "targets").iterdir())


# -- the baseline: what is signed is fetched ---------------------------------------------------


def test_signed_software_and_configuration_are_fetched_with_the_credential(world: World) -> None:
    updater = world.updater()
    got = updater.fetch_software("1.3.0")
    assert got.path.read_bytes() == bundle_bytes("1.3.0")
    assert (got.version, got.allow_downgrade, got.length) == ("1.3.0", False, 2048)
    assert updater.fetch_config(world.device.device_id) == config_bytes(world.device.device_id)
    assert world.server.unauthorized == 0
    # Consistent snapshots: versioned metadata and hash-prefixed targets, only one config bin.
    assert any(g.endswith(".snapshot.json") and "/1." not in g for g in world.server.gets)
    bins = {g for g in world.server.gets if "config-bins" in g}
    assert len(bins) == 1


def test_the_credential_is_read_for_every_request(world: World) -> None:
    updater = world.updater()
    updater.refresh()
    write_credential(world.device.credential, register_canary("fld_" + "r" * 43))
    refused(updater.refresh, "unreachable")  # the server answers 401 to the new one
    assert world.server.unauthorized >= 1


def test_a_server_with_a_certificate_from_another_ca_is_unreachable(
    world: World, tmp_path: Path
) -> None:
    other_ca = pki_for(tmp_path / "other", "127.0.0.1")[0]
    updater = EdgeUpdater(
        world.server.url,
        home=world.device.home,
        ca_file=other_ca,
        credential_file=world.device.credential,
        software_version="1.2.0",
    )
    error = refused(updater.refresh, "unreachable")
    assert "certificate" in error.message.lower()
    assert world.server.gets == []


def test_without_a_pinned_root_nothing_is_trusted(world: World) -> None:
    (world.device.home / "tuf" / "metadata" / "root.json").unlink()
    error = refused(world.updater().refresh, "repository_error")
    assert "no trusted root" in error.message
    assert world.server.gets == []


# -- targets -----------------------------------------------------------------------------------


def test_tampered_target_one_byte_changed_refused(world: World) -> None:
    served = world.served_target("software/fieldlink-agent-1.3.0.tar")
    data = bytearray(world.repo.target_files()[served])
    data[100] ^= 0x01
    world.server.misbehave.replace[served] = bytes(data)

    refused(lambda: world.updater().fetch_software("1.3.0"), "bad_target")
    assert downloaded(world) == []  # nothing unverified is left where the installer looks


def test_tampered_configuration_target_refused(world: World) -> None:
    served = world.served_target(f"config/{world.device.device_id}.json")
    world.server.misbehave.replace[served] = config_bytes(world.device.device_id, version=9)
    refused(lambda: world.updater().fetch_config(world.device.device_id), "bad_target")


def test_arbitrary_target_not_in_signed_metadata_refused(world: World) -> None:
    world.server.put("targets", "software/fieldlink-agent-9.9.0.tar", b"evil")
    error = refused(lambda: world.updater().fetch_software("9.9.0"), "bad_target")
    assert "not in the signed release metadata" in error.message
    assert world.target_gets() == []  # never even downloaded


def test_renamed_older_bundle_whose_signed_version_differs_refused(world: World) -> None:
    # A correctly signed target at the 1.4.0 path whose signed custom says 1.1.0 (an old
    # bundle under a new name) must not install as 1.4.0.
    path = world.repo.stage_software("1.4.0", bundle_bytes("1.1.0"))
    world.repo.md["release"].signed.targets[path].unrecognized_fields["custom"]["version"] = "1.1.0"
    world.repo.sign_role("release")
    world.repo.snapshot_and_timestamp()
    world.publish()
    refused(lambda: world.updater().fetch_software("1.4.0"), "bad_target")
    assert world.target_gets() == []


def test_endless_target_refused_at_its_signed_length(world: World) -> None:
    world.server.misbehave.endless.add(world.served_target("software/fieldlink-agent-1.3.0.tar"))
    refused(lambda: world.updater().fetch_software("1.3.0"), "too_large")
    assert downloaded(world) == []


def test_a_signed_target_over_the_size_limit_is_never_downloaded(world: World) -> None:
    limits = Limits(software=1000, config=10)
    refused(lambda: world.updater(limits=limits).fetch_software("1.3.0"), "too_large")
    refused(lambda: world.updater(limits=limits).fetch_config(world.device.device_id), "too_large")
    assert world.target_gets() == []


def test_a_version_that_is_not_a_release_is_never_requested(world: World) -> None:
    refused(lambda: world.updater().fetch_software("../../etc/passwd"), "bad_target")
    assert world.server.gets == []


# -- rollback and freeze ---------------------------------------------------------------------


def test_timestamp_rollback_refused(world: World) -> None:
    old = world.repo.metadata_files()["timestamp.json"]
    world.repo.add_software("1.3.1", bundle_bytes("1.3.1"))
    world.publish()
    world.updater().refresh()  # the device has seen the newer timestamp

    world.server.misbehave.replace["timestamp.json"] = old
    refused(world.updater().refresh, "rollback")


def test_snapshot_rollback_refused_even_with_the_stolen_timestamp_key(world: World) -> None:
    old_snapshot = world.repo.md["snapshot"].signed.version
    world.repo.add_software("1.3.1", bundle_bytes("1.3.1"))
    world.publish()
    world.updater().refresh()

    # The attacker signs a fresh timestamp that points to the older snapshot.
    world.repo.md["timestamp"].signed.snapshot_meta = MetaFile(version=old_snapshot)
    world.repo.sign_role("timestamp")
    world.publish()
    refused(world.updater().refresh, "rollback")


def test_targets_rollback_refused_even_with_the_stolen_snapshot_keys(world: World) -> None:
    world.repo.sign_role("release")  # release v(n+1) is now trusted by the device
    world.repo.snapshot_and_timestamp()
    world.publish()
    world.updater().fetch_software("1.3.0")
    current = world.repo.md["release"].signed.version

    # A snapshot (validly signed with the online key) that lists the older release again.
    world.repo.md["snapshot"].signed.meta["release.json"] = MetaFile(version=current - 1)
    world.repo.sign_role("snapshot")
    world.repo.md["timestamp"].signed.snapshot_meta = MetaFile(
        version=world.repo.md["snapshot"].signed.version
    )
    world.repo.sign_role("timestamp")
    world.publish()
    refused(world.updater().refresh, "rollback")


def test_software_version_rollback_without_signed_allow_downgrade_refused(
    world: World,
) -> None:
    world.repo.add_software("1.1.0", bundle_bytes("1.1.0"))
    world.publish()
    error = refused(
        lambda: world.updater(version="1.3.0").fetch_software("1.1.0"), "downgrade_refused"
    )
    assert "1.3.0" in error.message
    assert world.target_gets() == []


def test_a_downgrade_the_release_engineers_signed_is_allowed(world: World) -> None:
    world.repo.add_software("1.1.0", bundle_bytes("1.1.0"), allow_downgrade=True)
    world.publish()
    got = world.updater(version="1.3.0").fetch_software("1.1.0")
    assert got.allow_downgrade
    assert got.path.read_bytes() == bundle_bytes("1.1.0")


def test_expired_timestamp_freeze_refused_and_reported_as_expired(tmp_path: Path) -> None:
    # The repository was last signed two days ago: its timestamp (1 day) has run out. A server
    # that keeps serving it (frozen, or cut off from the cloud) must not be believed.
    device, pki = make_device(tmp_path)
    keys = make_keys()
    repo = make_repo(keys, now=datetime.now(UTC) - timedelta(days=2))
    repo.add_software("1.3.0", bundle_bytes("1.3.0"))
    device.pin_root(repo)
    with TufServer(tmp_path / "served", pki) as server:
        server.publish(repo)
        error = refused(device.updater(server).refresh, "expired_metadata")
        assert "timestamp" in error.message
        refused(lambda: device.updater(server).fetch_software("1.3.0"), "expired_metadata")
        # Once the cloud re-signs its online roles, the same device updates again.
        repo.refresh(datetime.now(UTC))
        server.publish(repo)
        device.updater(server).refresh()


def test_frozen_configuration_role_refused_when_expired(tmp_path: Path) -> None:
    # Fresh timestamp and snapshot, but the config role and its bins are 31 days old.
    device, pki = make_device(tmp_path)
    repo = make_repo(make_keys(), now=datetime.now(UTC) - timedelta(days=31))
    repo.set_config(device.device_id, config_bytes(device.device_id))
    repo.now = datetime.now(UTC)
    repo.snapshot_and_timestamp()
    device.pin_root(repo)
    with TufServer(tmp_path / "served", pki) as server:
        server.publish(repo)
        device.updater(server).refresh()  # top-level metadata is fine
        refused(lambda: device.updater(server).fetch_config(device.device_id), "expired_metadata")


# -- mix and match, endless data -------------------------------------------------------------


@pytest.mark.parametrize("direction", ["older", "newer"])
def test_mix_and_match_of_repository_states_refused(world: World, direction: str) -> None:
    # Two repository states; the attacker serves the snapshot of one and the release metadata
    # of the other under the name the snapshot asks for.
    first = world.repo.md["release"].signed.version
    before = world.repo.metadata_files()[f"{first}.release.json"]
    world.repo.add_software("1.4.0", bundle_bytes("1.4.0"))
    second = world.repo.md["release"].signed.version
    after = world.repo.metadata_files()[f"{second}.release.json"]
    if direction == "older":
        world.publish()
        world.server.misbehave.replace[f"{second}.release.json"] = before
    else:
        # The device still sees the first state's snapshot but the second state's release.
        world.server.misbehave.replace[f"{first}.release.json"] = after
    refused(lambda: world.updater().fetch_software("1.3.0"), "rollback")


def test_endless_metadata_refused(world: World) -> None:
    world.server.misbehave.endless.add("timestamp.json")
    refused(world.updater().refresh, "too_large")


def test_endless_delegated_metadata_refused(world: World) -> None:
    version = world.repo.md["release"].signed.version
    world.server.misbehave.endless.add(f"{version}.release.json")
    limits = Limits(targets=256 * 1024)
    refused(lambda: world.updater(limits=limits).fetch_software("1.3.0"), "too_large")


def test_slow_retrieval_drip_refused(world: World) -> None:
    world.server.misbehave.drip["timestamp.json"] = 0.02  # 50 bytes/s, never a timeout
    limits = Limits(grace_s=0.5, min_rate=200.0)
    error = refused(world.updater(limits=limits).refresh, "unreachable")
    assert "too slow" in error.message


# -- signatures and keys ---------------------------------------------------------------------


def test_too_few_release_signatures_refused(tmp_path: Path) -> None:
    world = make_world(tmp_path, release=2, release_threshold=2)
    with world.server:
        world.publish()
        world.updater().fetch_software("1.3.0")  # both release engineers signed this one
        world.repo.stage_software("1.4.0", bundle_bytes("1.4.0"))
        world.repo.sign_role("release", signers=[world.keys.release[0]])
        world.repo.snapshot_and_timestamp()
        world.publish()
        refused(lambda: world.updater().fetch_software("1.4.0"), "bad_signature")


def test_release_signed_with_a_wrong_key_refused(world: World) -> None:
    world.repo.stage_software("1.4.0", bundle_bytes("1.4.0"))
    world.repo.sign_role("release", signers=[new_signer()])
    world.repo.snapshot_and_timestamp()
    world.publish()
    refused(lambda: world.updater().fetch_software("1.4.0"), "bad_signature")


def test_timestamp_signed_with_a_wrong_key_refused(world: World) -> None:
    world.repo.sign_role("timestamp", signers=[new_signer()])
    world.publish()
    refused(world.updater().refresh, "bad_signature")


def _software_target(data: bytes, version: str) -> TargetFile:
    path = f"software/fieldlink-agent-{version}.tar"
    target = TargetFile.from_data(path, data, ["sha256"])
    target.unrecognized_fields["custom"] = {"version": version, "allow_downgrade": False}
    return target


@pytest.mark.parametrize("role", ["config", "bin"])
def test_software_signed_by_the_online_config_key_is_not_found(world: World, role: str) -> None:
    data = bundle_bytes("6.6.6")
    target = _software_target(data, "6.6.6")
    name = "config" if role == "config" else world.repo.bin_for(target.path)
    world.repo.md[name].signed.targets[target.path] = target  # correctly signed, wrong role
    world.repo.sign_role(name)
    world.repo.snapshot_and_timestamp()
    world.server.put(
        "targets", f"software/{target.hashes['sha256']}.fieldlink-agent-6.6.6.tar", data
    )
    world.publish()
    refused(lambda: world.updater().fetch_software("6.6.6"), "bad_target")
    assert world.target_gets() == []


def test_online_keys_stolen_cannot_make_software_installable(world: World) -> None:
    # The attacker holds every key the cloud holds (snapshot, timestamp, config) and signs a
    # new release metadata version offering its bundle, listed in a valid snapshot.
    evil = bundle_bytes("6.6.6")
    world.repo.stage_software("6.6.6", evil)
    world.repo.sign_role("release", signers=[world.keys.config, world.keys.snapshot])
    world.repo.snapshot_and_timestamp()
    world.publish()
    refused(lambda: world.updater().fetch_software("6.6.6"), "bad_signature")
    # Nor can it bring back the genuine release it cannot re-sign: the device refuses every
    # software until the offline keys sign again.
    refused(lambda: world.updater().fetch_software("1.3.0"), "bad_signature")
    assert not any("6.6.6" in g for g in world.target_gets())


# -- root rotation ----------------------------------------------------------------------------


def test_root_rotation_signed_by_old_and_new_keys_is_followed(world: World) -> None:
    world.updater().refresh()
    new_root: list[Signer] = [new_signer()]
    world.repo.rotate_root(new_root, 1)
    world.repo.snapshot_and_timestamp()
    world.publish()
    world.updater().fetch_software("1.3.0")
    history = world.device.home / "tuf" / "metadata" / "root_history"
    assert (history / "2.root.json").exists()
    # The old root key alone can no longer sign a root the device would take.
    world.repo.rotate_root(list[Signer]([new_signer()]), 1, old_root=world.keys.root)
    world.publish()
    refused(world.updater().refresh, "bad_signature")


def test_root_rotation_signed_only_by_new_keys_refused(world: World) -> None:
    world.repo.rotate_root(list[Signer]([new_signer()]), 1, old_root=[])
    world.publish()
    refused(world.updater().refresh, "bad_signature")
    history = world.device.home / "tuf" / "metadata" / "root_history"
    assert not (history / "2.root.json").exists()


# -- configuration for another device ------------------------------------------------------------


def test_config_for_another_device_refused(world: World) -> None:
    # Correctly signed at this device's path (the online config key can do that), but made
    # for another device: the agent must not run it.
    world.repo.set_config(world.device.device_id, config_bytes(OTHER_DEVICE, version=2))
    world.publish()
    data = world.updater().fetch_config(world.device.device_id)
    with pytest.raises(ConfigError, match="device_id"):
        load_config_target(data, world.device.device_id)


def test_a_device_without_a_signed_configuration_gets_none(world: World) -> None:
    error = refused(lambda: world.updater().fetch_config(OTHER_DEVICE), "bad_target")
    assert "no configuration" in error.message


# -- versions ------------------------------------------------------------------------------------


def test_release_versions_order_like_the_release_tooling() -> None:
    ordered = ["1.2.0a1", "1.2.0b2", "1.2.0rc1", "1.2.0", "1.2.0.1", "1.2.1", "1.10.0", "2.0"]
    keys = [release_version_key(v) for v in ordered]
    assert all(k is not None for k in keys)
    assert keys == sorted(keys)  # type: ignore[type-var]
    assert compare_versions("1.2", "1.2.0") == 0
    assert compare_versions("1.1.0", "1.2.0") == -1
    assert compare_versions("1.1.0", "dev") is None
    for bad in ("", "1", "v1.2", "1.2.0/../x", "1.2.0-evil", "1.2.0.dev1"):
        assert release_version_key(bad) is None


# -- the trust anchor, pinned at enrollment ------------------------------------------------------


def _enrolling_server(world: World) -> None:
    issued = {
        "device_id": world.device.device_id,
        "device_name": "edge-1",
        "credential": world.server.token,
    }

    def post(path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        assert path == ENROLL_PATH
        return 200, json.dumps(issued).encode()

    world.server.post = post


def _enroll(world: World, tmp_path: Path, root_file: Path | None = None) -> Enrolled:
    (world.device.home / "tuf" / "metadata" / "root.json").unlink()
    _enrolling_server(world)
    return enroll(
        world.server.url,
        register_canary("fle_" + "e" * 43),
        ca_file=world.device.ca,
        credential_file=tmp_path / "enrolled" / "credential",
        home=world.device.home,
        root_file=root_file,
    )


def test_enrollment_pins_the_first_root_downloaded_with_the_new_credential(
    world: World, tmp_path: Path
) -> None:
    done = _enroll(world, tmp_path)
    assert done.trust_error == ""
    assert done.trust_anchor == world.device.home / "tuf" / "metadata" / "root.json"
    assert done.trust_anchor.read_bytes() == world.repo.metadata_files()["1.root.json"]
    assert done.trust_anchor.stat().st_mode & 0o777 == 0o644
    assert read_device_id(world.device.home) == world.device.device_id
    assert world.server.gets == ["/edge/v1/tuf/metadata/1.root.json"]
    world.updater().fetch_software("1.3.0")  # and the chain walks from there


def test_enrollment_with_a_root_file_never_downloads_one(world: World, tmp_path: Path) -> None:
    given = tmp_path / "root.json"
    given.write_bytes(world.repo.metadata_files()["1.root.json"])
    done = _enroll(world, tmp_path, root_file=given)
    assert done.trust_error == ""
    assert world.server.gets == []
    world.updater().refresh()


def test_a_root_that_cannot_be_fetched_keeps_the_credential_and_says_why(
    world: World, tmp_path: Path
) -> None:
    world.server.misbehave.missing.add("1.root.json")
    done = _enroll(world, tmp_path)
    assert done.trust_anchor is None
    assert "HTTP 404" in done.trust_error
    assert read_credential(done.credential_file) == world.server.token
    refused(world.updater().refresh, "repository_error")


def test_a_root_file_that_is_not_root_metadata_is_not_pinned(world: World, tmp_path: Path) -> None:
    given = tmp_path / "timestamp.json"
    given.write_bytes(world.repo.metadata_files()["timestamp.json"])
    done = _enroll(world, tmp_path, root_file=given)
    assert "is not TUF root metadata" in done.trust_error
    assert not (world.device.home / "tuf" / "metadata" / "root.json").exists()
    assert read_credential(done.credential_file) == world.server.token
