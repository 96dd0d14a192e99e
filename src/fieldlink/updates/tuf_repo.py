"""The TUF repository of Fieldlink as pure data: roles, keys, signing, hashed bins, verification.

No Django and no I/O beyond what is passed in: the release engineer's workspace
(``fieldlink release``), the cloud's database-backed repository (``updates.repository``), the
tests and the benchmark all drive this one module, so what is tested is what runs.

Roles (``docs/updates.md`` has the picture):

- ``root`` and ``targets`` — offline keys, kept by release engineers, never by the cloud.
- ``snapshot`` and ``timestamp`` — online keys held by the cloud, short expiry, re-signed by an
  hourly task (``refresh``).
- ``release`` — delegated by ``targets`` for ``software/*`` only; offline keys with a
  configurable threshold. Only this role can make software installable.
- ``config`` — delegated by ``targets`` for ``config/*`` only, signed by the cloud's online
  configuration key; it delegates again to hashed bins (``config-bins-00`` …) so a device
  downloads the one bin holding its configuration instead of every device's entry. A stolen
  online key can therefore sign configuration but never software: the client only consults
  ``config`` for paths under ``config/``.

Metadata uses consistent snapshots: every version is served as ``<version>.<role>.json`` and
targets under their SHA-256 prefix, so a device never mixes files of two repository states.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.serialization import (
    BestAvailableEncryption,
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)
from securesystemslib.signer import CryptoSigner, Key, Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    SuccinctRoles,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from fieldlink.protocol.updates import RELEASE_VERSION_RE

__all__ = [
    "BIN_PREFIX",
    "EXPIRY",
    "ROLE_CONFIG",
    "ROLE_RELEASE",
    "PublicationError",
    "Repository",
    "config_path",
    "new_signer",
    "private_pem",
    "signer_from_pem",
    "software_path",
    "software_version_of",
]

ROLE_RELEASE: Final = "release"
ROLE_CONFIG: Final = "config"
BIN_PREFIX: Final = "config-bins"
SOFTWARE_PATTERN: Final = "software/*"
CONFIG_PATTERN: Final = "config/*"
ONLINE_TOP: Final = ("snapshot", "timestamp")

EXPIRY: Final[dict[str, timedelta]] = {
    Root.type: timedelta(days=365),
    Targets.type: timedelta(days=365),
    ROLE_RELEASE: timedelta(days=180),
    ROLE_CONFIG: timedelta(days=30),
    BIN_PREFIX: timedelta(days=30),
    Snapshot.type: timedelta(days=7),
    Timestamp.type: timedelta(days=1),
}

_SOFTWARE_RE: Final = re.compile(r"^software/fieldlink-agent-(?P<version>[0-9a-z.]{1,40})\.tar$")
_SERIALIZER: Final = JSONSerializer(compact=True)


class PublicationError(Exception):
    """Offline-signed metadata the cloud refuses to publish; the message says why."""


def new_signer() -> CryptoSigner:
    """A fresh Ed25519 key (fast to verify on small edge CPUs, small signatures)."""
    return CryptoSigner.generate_ed25519()


def private_pem(signer: CryptoSigner, passphrase: bytes | None) -> bytes:
    """The private key as PKCS#8 PEM, encrypted when a passphrase is given."""
    key = signer._private_key
    encryption = BestAvailableEncryption(passphrase) if passphrase else NoEncryption()
    return key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, encryption)


def signer_from_pem(pem: bytes, passphrase: bytes | None) -> CryptoSigner:
    return CryptoSigner(load_pem_private_key(pem, password=passphrase))


def software_path(version: str) -> str:
    if not RELEASE_VERSION_RE.match(version):
        raise ValueError(f"{version!r} is not a release version (e.g. 1.4.0 or 1.4.0rc1).")
    return f"software/fieldlink-agent-{version}.tar"


def software_version_of(path: str) -> str | None:
    match = _SOFTWARE_RE.match(path)
    return match["version"] if match else None


def config_path(device_id: str) -> str:
    return f"config/{device_id}.json"


def served_target_name(path: str, sha256: str) -> str:
    """The consistent-snapshot file name of a target: its SHA-256 before the base name."""
    directory, _, name = path.rpartition("/")
    return f"{directory}/{sha256}.{name}" if directory else f"{sha256}.{name}"


def metadata_name(role: str, version: int) -> str:
    return "timestamp.json" if role == Timestamp.type else f"{version}.{role}.json"


def _expires(role: str, now: datetime) -> datetime:
    lifetime = EXPIRY[BIN_PREFIX if role.startswith(BIN_PREFIX) else role]
    return (now + lifetime).replace(microsecond=0)


def _needs_refresh(md: Metadata[Any], role: str, now: datetime) -> bool:
    """Online metadata is re-signed once less than half of its lifetime is left."""
    lifetime = EXPIRY[BIN_PREFIX if role.startswith(BIN_PREFIX) else role]
    return bool(md.signed.expires - now < lifetime / 2)


@dataclass
class Repository:
    """The current metadata of every role, the signers at hand, and the files they make.

    ``md`` holds the newest version of each role. ``files`` accumulates every metadata file
    this object has signed or loaded (``<version>.<role>.json``; ``timestamp.json`` is always
    the newest), ``changed`` the names signed since it was built — what a caller must store.
    ``signers`` maps a role to the keys available here: the cloud has only the online ones,
    a release engineer only the offline ones.
    """

    md: dict[str, Metadata[Any]]
    signers: dict[str, list[Signer]]
    now: datetime
    files: dict[str, bytes] = field(default_factory=dict)
    changed: list[str] = field(default_factory=list)
    targets_data: dict[str, bytes] = field(default_factory=dict)

    # -- building ------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        root: list[Signer],
        targets: list[Signer],
        release: list[Signer],
        snapshot: Signer,
        timestamp: Signer,
        config: Signer,
        root_threshold: int = 1,
        targets_threshold: int = 1,
        release_threshold: int = 1,
        bin_bits: int = 8,
        now: datetime | None = None,
    ) -> Repository:
        """A complete repository, every role signed (tests, benchmark, demo)."""
        repo = cls.offline(
            root=root,
            targets=targets,
            release=[s.public_key for s in release],
            online={"snapshot": snapshot, "timestamp": timestamp, "config": config},
            root_threshold=root_threshold,
            targets_threshold=targets_threshold,
            release_threshold=release_threshold,
            now=now,
        )
        repo.signers.update(
            {
                ROLE_RELEASE: list(release),
                "snapshot": [snapshot],
                "timestamp": [timestamp],
                ROLE_CONFIG: [config],
            }
        )
        repo.sign_role(ROLE_RELEASE, bump=False)
        repo.ensure_config_roles(bin_bits=bin_bits)
        repo.snapshot_and_timestamp()
        return repo

    @classmethod
    def offline(
        cls,
        *,
        root: list[Signer],
        targets: list[Signer],
        release: Iterable[Key],
        online: Mapping[str, Signer | Key],
        root_threshold: int,
        targets_threshold: int,
        release_threshold: int,
        now: datetime | None = None,
    ) -> Repository:
        """Root, targets and an empty release role: what ``fieldlink release init`` signs.

        ``online`` gives the cloud's public snapshot, timestamp and config keys (signers are
        accepted too and only their public halves are used).
        """
        at = now or datetime.now(UTC)
        online_keys = {
            name: (value.public_key if isinstance(value, Signer) else value)
            for name, value in online.items()
        }
        release_keys = list(release)
        _check_threshold(root_threshold, len(root), "root")
        _check_threshold(targets_threshold, len(targets), "targets")
        _check_threshold(release_threshold, len(release_keys), "release")
        root_md = Metadata(Root(expires=_expires(Root.type, at), consistent_snapshot=True))
        for signer in root:
            root_md.signed.add_key(signer.public_key, Root.type)
        for signer in targets:
            root_md.signed.add_key(signer.public_key, Targets.type)
        for name in ONLINE_TOP:
            root_md.signed.add_key(online_keys[name], name)
        root_md.signed.roles[Root.type].threshold = root_threshold
        root_md.signed.roles[Targets.type].threshold = targets_threshold
        config_key = online_keys[ROLE_CONFIG]
        delegations = Delegations(
            keys={key.keyid: key for key in [*release_keys, config_key]},
            roles={
                ROLE_RELEASE: DelegatedRole(
                    name=ROLE_RELEASE,
                    keyids=[key.keyid for key in release_keys],
                    threshold=release_threshold,
                    terminating=True,
                    paths=[SOFTWARE_PATTERN],
                ),
                ROLE_CONFIG: DelegatedRole(
                    name=ROLE_CONFIG,
                    keyids=[config_key.keyid],
                    threshold=1,
                    terminating=True,
                    paths=[CONFIG_PATTERN],
                ),
            },
        )
        targets_md = Metadata(Targets(expires=_expires(Targets.type, at), delegations=delegations))
        release_md = Metadata(Targets(expires=_expires(ROLE_RELEASE, at)))
        repo = cls(
            md={Root.type: root_md, Targets.type: targets_md, ROLE_RELEASE: release_md},
            signers={Root.type: list(root), Targets.type: list(targets)},
            now=at,
        )
        repo.sign_role(Root.type, bump=False)
        repo.sign_role(Targets.type, bump=False)
        return repo

    @classmethod
    def with_fresh_keys(
        cls, online: Mapping[str, Signer | Key], *, now: datetime | None = None
    ) -> Repository:
        """Root, targets and an empty release role, one fresh key each, kept in ``signers``.

        What the demo publishes (its keys then dropped) and what tests and the benchmark start
        from; a real repository's offline keys come from ``fieldlink release init``.
        """
        release = new_signer()
        repo = cls.offline(
            root=[new_signer()],
            targets=[new_signer()],
            release=[release.public_key],
            online=online,
            root_threshold=1,
            targets_threshold=1,
            release_threshold=1,
            now=now,
        )
        repo.signers[ROLE_RELEASE] = [release]
        repo.sign_role(ROLE_RELEASE, bump=False)
        return repo

    @classmethod
    def load(
        cls,
        files: Mapping[str, bytes],
        signers: dict[str, list[Signer]] | None = None,
        now: datetime | None = None,
    ) -> Repository:
        """The newest version of each role among ``files`` (names as served)."""
        newest: dict[str, tuple[int, bytes]] = {}
        for name, data in files.items():
            role, version = _parse_name(name)
            if role == Timestamp.type:
                version = Metadata[Timestamp].from_bytes(data).signed.version
            if role not in newest or version > newest[role][0]:
                newest[role] = (version, data)
        return cls(
            md={role: Metadata.from_bytes(data) for role, (_, data) in newest.items()},
            signers=signers or {},
            now=now or datetime.now(UTC),
            files=dict(files),
        )

    # -- signing -------------------------------------------------------------------------------

    def _signers_for(self, role: str) -> list[Signer]:
        return self.signers.get(ROLE_CONFIG if role.startswith(BIN_PREFIX) else role, [])

    def sign_role(
        self, role: str, *, signers: list[Signer] | None = None, bump: bool = True
    ) -> bytes:
        """Sign ``role`` (a new version unless ``bump`` is false) with its signers."""
        md = self.md[role]
        if bump:
            md.signed.version += 1
        md.signed.expires = _expires(role, self.now)
        md.signatures.clear()
        keys = self._signers_for(role) if signers is None else signers
        if not keys:
            raise PublicationError(f"No key to sign {role!r} here.")
        for signer in keys:
            md.sign(signer, append=True)
        data = md.to_bytes(_SERIALIZER)
        name = metadata_name(role, md.signed.version)
        self.files[name] = data
        self.changed.append(name)
        return data

    def ensure_config_roles(self, *, bin_bits: int = 8) -> None:
        """The online ``config`` role and its hashed bins, created once (online key)."""
        if ROLE_CONFIG in self.md:
            return
        config_key = self._signers_for(ROLE_CONFIG)[0].public_key
        succinct = SuccinctRoles([config_key.keyid], 1, bin_bits, BIN_PREFIX)
        config_md = Metadata(
            Targets(
                expires=_expires(ROLE_CONFIG, self.now),
                delegations=Delegations(
                    keys={config_key.keyid: config_key}, succinct_roles=succinct
                ),
            )
        )
        self.md[ROLE_CONFIG] = config_md
        self.sign_role(ROLE_CONFIG, bump=False)
        for name in succinct.get_roles():
            self.md[name] = Metadata(Targets(expires=_expires(BIN_PREFIX, self.now)))
            self.sign_role(name, bump=False)

    def snapshot_and_timestamp(self) -> None:
        """A new snapshot of every targets role's version, and a timestamp pointing to it."""
        snapshot = self.md.get(Snapshot.type)
        meta = {
            f"{role}.json": MetaFile(version=md.signed.version)
            for role, md in self.md.items()
            if role not in (Root.type, Snapshot.type, Timestamp.type)
        }
        if snapshot is None:
            self.md[Snapshot.type] = Metadata(
                Snapshot(expires=_expires(Snapshot.type, self.now), meta=meta)
            )
            self.sign_role(Snapshot.type, bump=False)
        else:
            snapshot.signed.meta = meta
            self.sign_role(Snapshot.type)
        snapshot_version = self.md[Snapshot.type].signed.version
        timestamp = self.md.get(Timestamp.type)
        snap_meta = MetaFile(version=snapshot_version)
        if timestamp is None:
            self.md[Timestamp.type] = Metadata(
                Timestamp(expires=_expires(Timestamp.type, self.now), snapshot_meta=snap_meta)
            )
            self.sign_role(Timestamp.type, bump=False)
        else:
            timestamp.signed.snapshot_meta = snap_meta
            self.sign_role(Timestamp.type)

    # -- targets -------------------------------------------------------------------------------

    def add_software(self, version: str, data: bytes, *, allow_downgrade: bool = False) -> str:
        """Add a release bundle to the ``release`` role (offline keys) and re-sign it."""
        path = self.stage_software(version, data, allow_downgrade=allow_downgrade)
        self.sign_role(ROLE_RELEASE)
        if Snapshot.type in self.md and self.signers.get("snapshot"):
            self.snapshot_and_timestamp()
        return path

    def stage_software(self, version: str, data: bytes, *, allow_downgrade: bool = False) -> str:
        """The target entry for a bundle, not yet signed (a threshold may need several people)."""
        path = software_path(version)
        target = TargetFile.from_data(path, data, ["sha256"])
        target.unrecognized_fields["custom"] = {
            "version": version,
            "allow_downgrade": allow_downgrade,
        }
        self.md[ROLE_RELEASE].signed.targets[path] = target
        self.targets_data[served_target_name(path, target.hashes["sha256"])] = data
        return path

    def set_config(self, device_id: str, data: bytes) -> TargetFile:
        """Put a device's configuration into its hashed bin and re-sign bin, snapshot, timestamp."""
        path = config_path(device_id)
        target = TargetFile.from_data(path, data, ["sha256"])
        role = self.bin_for(path)
        self.md[role].signed.targets[path] = target
        self.sign_role(role)
        self.snapshot_and_timestamp()
        self.targets_data[served_target_name(path, target.hashes["sha256"])] = data
        return target

    def bin_for(self, path: str) -> str:
        succinct = self.md[ROLE_CONFIG].signed.delegations.succinct_roles
        return str(succinct.get_role_for_target(path))

    def refresh(self, now: datetime | None = None) -> list[str]:
        """Re-sign the online roles that are past half their lifetime; the names signed."""
        if now is not None:
            self.now = now
        before = len(self.changed)
        config_roles = [r for r in self.md if r == ROLE_CONFIG or r.startswith(BIN_PREFIX)]
        stale = [r for r in config_roles if _needs_refresh(self.md[r], r, self.now)]
        for role in stale:
            self.sign_role(role)
        if stale or _needs_refresh(self.md[Snapshot.type], Snapshot.type, self.now):
            self.snapshot_and_timestamp()
        elif _needs_refresh(self.md[Timestamp.type], Timestamp.type, self.now):
            self.sign_role(Timestamp.type)
        return self.changed[before:]

    def rotate_root(
        self, new_root: list[Signer], threshold: int, *, old_root: list[Signer] | None = None
    ) -> bytes:
        """Root N+1 with ``new_root`` keys, signed by the old keys and the new ones."""
        _check_threshold(threshold, len(new_root), "root")
        root = self.md[Root.type].signed
        old = list(self.signers.get(Root.type, [])) if old_root is None else old_root
        for keyid in list(root.roles[Root.type].keyids):
            root.revoke_key(keyid, Root.type)
        for signer in new_root:
            root.add_key(signer.public_key, Root.type)
        root.roles[Root.type].threshold = threshold
        self.signers[Root.type] = list(new_root)
        unique = {s.public_key.keyid: s for s in [*old, *new_root]}
        return self.sign_role(Root.type, signers=list(unique.values()))

    # -- output --------------------------------------------------------------------------------

    def metadata_files(self) -> dict[str, bytes]:
        return dict(self.files)

    def target_files(self) -> dict[str, bytes]:
        return dict(self.targets_data)

    def write(self, directory: Path) -> None:
        """The repository as served: ``metadata/<name>`` and ``targets/<served name>``."""
        for name, data in self.files.items():
            path = directory / "metadata" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for name, data in self.targets_data.items():
            path = directory / "targets" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def copy(self) -> Repository:
        return Repository(
            md={role: copy.deepcopy(md) for role, md in self.md.items()},
            signers={role: list(s) for role, s in self.signers.items()},
            now=self.now,
            files=dict(self.files),
            changed=[],
            targets_data=dict(self.targets_data),
        )


def _check_threshold(threshold: int, keys: int, role: str) -> None:
    if not 1 <= threshold <= keys:
        raise PublicationError(f"The {role} threshold must be between 1 and {keys} (its keys).")


def _parse_name(name: str) -> tuple[str, int]:
    if name == "timestamp.json":
        return Timestamp.type, 0
    version, _, rest = name.partition(".")
    if not version.isdigit() or not rest.endswith(".json"):
        raise PublicationError(f"{name!r} is not a metadata file name (<version>.<role>.json).")
    return rest[: -len(".json")], int(version)


# -- what the cloud checks before it publishes offline-signed metadata --------------------------


@dataclass(frozen=True)
class Publication:
    """Offline-signed metadata that verified: new root versions, targets and release."""

    roots: list[Metadata[Root]]
    targets: Metadata[Targets] | None
    release: Metadata[Targets] | None
    files: dict[str, bytes]


def verify_publication(
    trusted: Mapping[str, Metadata[Any]],
    files: Mapping[str, bytes],
    *,
    online_keys: Mapping[str, Key],
    now: datetime,
) -> Publication:
    """Check offline-signed metadata the way a device will, before the cloud serves it.

    ``trusted`` is what the cloud serves now (empty at the very first publication, when
    ``1.root.json`` must be among ``files`` and is trusted because an operator publishes it).
    Refused: a root version that does not chain (signed by the old and the new threshold), a
    targets or release role not signed by its delegator's keys and threshold, a version that
    does not increase, expired metadata, a delegation shape other than ``release`` for
    ``software/*`` and ``config`` (the cloud's online key) for ``config/*``, a root whose
    snapshot/timestamp keys are not the cloud's online keys (the cloud could not sign).
    """
    allowed = {Root.type, Targets.type, ROLE_RELEASE}
    parsed: dict[str, list[tuple[int, Metadata[Any]]]] = {}
    for name, data in files.items():
        role, version = _parse_name(name)
        if role not in allowed:
            raise PublicationError(f"{name}: only root, targets and release are signed offline.")
        try:
            md = Metadata.from_bytes(data)
        except Exception as exc:
            raise PublicationError(f"{name}: not TUF metadata ({exc}).") from exc
        if md.signed.version != version:
            raise PublicationError(f"{name}: the file name and the version inside differ.")
        current = trusted.get(role)
        if current is not None and version <= current.signed.version:
            continue  # the workspace's history: published already or superseded
        parsed.setdefault(role, []).append((version, md))
    if not parsed:
        raise PublicationError("Nothing newer than what is published.")

    roots, root = _verify_roots(trusted.get(Root.type), parsed.get(Root.type, []))
    _check_not_expired(root, "root", now)
    _check_online_keys(root, online_keys)

    targets = _newest(parsed.get(Targets.type))
    current_targets = trusted.get(Targets.type)
    if targets is not None:
        _check_increases(current_targets, targets, "targets")
        _verify(root, targets, Targets.type, "targets")
        _check_not_expired(targets, "targets", now)
        _check_delegations(targets, online_keys)
    delegator = targets or current_targets
    release = _newest(parsed.get(ROLE_RELEASE))
    if release is not None:
        if delegator is None:
            raise PublicationError("release needs a signed targets role first.")
        _check_increases(trusted.get(ROLE_RELEASE), release, "release")
        _verify(delegator, release, ROLE_RELEASE, "release")
        _check_not_expired(release, "release", now)
        _check_release_paths(release)
    published = [*roots, *(md for md in (targets, release) if md is not None)]
    names = {
        metadata_name(ROLE_RELEASE if md is release else md.signed.type, md.signed.version)
        for md in published
    }
    return Publication(
        roots=roots,
        targets=targets,
        release=release,
        files={name: data for name, data in files.items() if name in names},
    )


def _verify_roots(
    root: Metadata[Root] | None, items: list[tuple[int, Metadata[Any]]]
) -> tuple[list[Metadata[Root]], Metadata[Root]]:
    roots: list[Metadata[Root]] = []
    for version, md in sorted(items, key=lambda item: item[0]):
        if root is None:
            if version != 1:
                raise PublicationError("The first publication must start with 1.root.json.")
            _verify(md, md, Root.type, f"{version}.root.json")
        else:
            if version != root.signed.version + 1:
                raise PublicationError(
                    f"{version}.root.json does not follow root version {root.signed.version}."
                )
            _verify(root, md, Root.type, f"{version}.root.json (old keys)")
            _verify(md, md, Root.type, f"{version}.root.json (new keys)")
        roots.append(md)
        root = md
    if root is None:
        raise PublicationError("Nothing is trusted yet: publish 1.root.json first.")
    return roots, root


def _check_release_paths(release: Metadata[Targets]) -> None:
    for path, target in release.signed.targets.items():
        version = software_version_of(path)
        custom = target.custom if isinstance(target.custom, dict) else {}
        if version is None or custom.get("version") != version:
            raise PublicationError(
                f"release: {path!r} is not software/fieldlink-agent-<version>.tar with "
                "its version in custom."
            )


def _newest(items: list[tuple[int, Metadata[Any]]] | None) -> Metadata[Any] | None:
    # A workspace keeps every version it signed; only the newest of each role is published.
    return max(items, key=lambda item: item[0])[1] if items else None


def _verify(delegator: Metadata[Any], delegate: Metadata[Any], role: str, what: str) -> None:
    try:
        delegator.verify_delegate(role, delegate)
    except UnsignedMetadataError as exc:
        raise PublicationError(f"{what}: not signed by enough trusted keys ({exc}).") from exc


def _check_increases(current: Metadata[Any] | None, new: Metadata[Any], role: str) -> None:
    if current is not None and new.signed.version <= current.signed.version:
        raise PublicationError(
            f"{role} version {new.signed.version} is not newer than the published "
            f"version {current.signed.version}."
        )


def _check_not_expired(md: Metadata[Any], role: str, now: datetime) -> None:
    if md.signed.is_expired(now):
        raise PublicationError(f"{role} expired on {md.signed.expires.isoformat()}.")


def _check_online_keys(root: Metadata[Root], online_keys: Mapping[str, Key]) -> None:
    for name in ONLINE_TOP:
        keyids = set(root.signed.roles[name].keyids)
        if keyids != {online_keys[name].keyid}:
            raise PublicationError(
                f"root: the {name} role must use exactly this cloud's online {name} key."
            )


def _check_delegations(targets: Metadata[Targets], online_keys: Mapping[str, Key]) -> None:
    delegations = targets.signed.delegations
    roles = delegations.roles if delegations is not None else None
    if roles is None or set(roles) != {ROLE_RELEASE, ROLE_CONFIG}:
        raise PublicationError("targets must delegate exactly to 'release' and 'config'.")
    release, config = roles[ROLE_RELEASE], roles[ROLE_CONFIG]
    if release.paths != [SOFTWARE_PATTERN] or not release.terminating:
        raise PublicationError("targets: 'release' must be terminating for software/* only.")
    if config.paths != [CONFIG_PATTERN] or not config.terminating:
        raise PublicationError("targets: 'config' must be terminating for config/* only.")
    if config.keyids != [online_keys[ROLE_CONFIG].keyid] or config.threshold != 1:
        raise PublicationError("targets: 'config' must be signed by this cloud's config key.")
    if online_keys[ROLE_CONFIG].keyid in release.keyids:
        raise PublicationError("targets: an online key may never sign software.")
