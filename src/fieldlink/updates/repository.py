"""The cloud's TUF repository: signed metadata in the database, online keys on disk.

The cloud holds only the online keys (snapshot, timestamp, configuration); root, targets and
release metadata arrive already signed by release engineers (``fieldlink release publish``) and
are checked by ``tuf_repo.verify_publication`` exactly as a device would check them before a
byte of them is served. Everything here runs inside the caller's transaction (the boundary owns
it); writers are serialised per database (an advisory lock on PostgreSQL, ``BEGIN IMMEDIATE`` on
SQLite), because every change signs a new snapshot and timestamp version.

Storage: each signed metadata file is a ``TufMetadata`` row holding the exact bytes served;
configuration targets are small and stored in ``TufTarget.data``; software bundles are files
under ``var/tuf/targets/`` named by their SHA-256, written before the row that lists them.
Online private keys are PEM files (mode 0600) under ``var/tuf/online/``; in production they
belong in a KMS or HSM (a securesystemslib signer URI), see ``docs/updates.md``.
"""

from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from django.conf import settings
from django.db import connection
from django.db.models import Max
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Targets, Timestamp

from fieldlink.kit.files import write_atomically
from fieldlink.updates import tuf_repo
from fieldlink.updates.errors import PublicationRefusedError, RepositoryMissingError
from fieldlink.updates.models import TufMetadata, TufTarget

__all__ = [
    "ONLINE_ROLES",
    "SignedTarget",
    "SoftwareTarget",
    "TargetBlob",
    "has_repository",
    "online_public_keys",
    "online_signers",
    "open_target",
    "publish",
    "read_metadata",
    "refresh_online_metadata",
    "sign_device_config",
    "software_releases",
]

ONLINE_ROLES: Final = ("snapshot", "timestamp", "config")
CHUNK: Final = 256 * 1024
MAX_BUNDLE_BYTES: Final = 500 * 1024 * 1024


@dataclass(frozen=True)
class SignedTarget:
    path: str
    length: int
    sha256: str


@dataclass(frozen=True)
class SoftwareTarget:
    version: str
    path: str
    length: int
    sha256: str
    allow_downgrade: bool


@dataclass(frozen=True)
class TargetBlob:
    path: str
    length: int
    device_id: uuid.UUID | None
    data: bytes | None
    file: Path | None

    def chunks(self) -> Iterator[bytes]:
        if self.data is not None:
            yield self.data
            return
        assert self.file is not None  # noqa: S101 - one of the two is set by construction
        with self.file.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                yield chunk


# -- keys ----------------------------------------------------------------------------------------


def _tuf_dir() -> Path:
    return Path(settings.VAR_DIR) / "tuf"


def _targets_dir() -> Path:
    return _tuf_dir() / "targets"


def online_signers(*, create: bool = False) -> dict[str, CryptoSigner]:
    """The cloud's online signers, made on first use when ``create`` (mode 0600, never logged)."""
    directory = _tuf_dir() / "online"
    signers: dict[str, CryptoSigner] = {}
    for role in ONLINE_ROLES:
        path = directory / f"{role}.pem"
        if not path.exists():
            if not create:
                raise RepositoryMissingError(
                    "This cloud has no online signing keys yet: run `fieldlink updates keys`."
                )
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o700)
            signer = tuf_repo.new_signer()
            write_atomically(path, tuf_repo.private_pem(signer, None), 0o600)
        signers[role] = tuf_repo.signer_from_pem(path.read_bytes(), None)
    return signers


def online_public_keys(*, create: bool = False) -> dict[str, dict[str, Any]]:
    """The public halves, as JSON for the release engineer's ``fieldlink release init``."""
    return {
        role: {"keyid": signer.public_key.keyid, **signer.public_key.to_dict()}
        for role, signer in online_signers(create=create).items()
    }


# -- reading -------------------------------------------------------------------------------------


def _lock() -> None:
    if connection.vendor == "postgresql":
        # Every change signs the next snapshot/timestamp version: one writer at a time.
        key = int.from_bytes(hashlib.sha256(b"fieldlink.tuf").digest()[:8], "big", signed=True)
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])


def _current_files() -> dict[str, bytes]:
    newest = TufMetadata.objects.values("role").annotate(version=Max("version"))
    wanted = {(row["role"], row["version"]) for row in newest}
    files: dict[str, bytes] = {}
    for row in TufMetadata.objects.filter(role__in={role for role, _ in wanted}).only(
        "role", "version", "data"
    ):
        if (row.role, row.version) in wanted:
            files[tuf_repo.metadata_name(row.role, row.version)] = bytes(row.data)
    return files


def has_repository() -> bool:
    return TufMetadata.objects.filter(role="timestamp").exists()


def _load(now: datetime) -> tuf_repo.Repository:
    files = _current_files()
    if "timestamp.json" not in files:
        raise RepositoryMissingError("No release has been published yet.")
    signers = online_signers()
    return tuf_repo.Repository.load(
        files, signers={role: [signer] for role, signer in signers.items()}, now=now
    )


def _store(repo: tuf_repo.Repository) -> list[str]:
    stored: list[str] = []
    for name in dict.fromkeys(repo.changed):
        data = repo.files[name]
        md = Metadata.from_bytes(data)
        role = md.signed.type if name == "timestamp.json" else name.split(".", 1)[1][:-5]
        TufMetadata.objects.create(role=role, version=md.signed.version, data=data)
        stored.append(tuf_repo.metadata_name(role, md.signed.version))
    repo.changed.clear()
    return stored


def read_metadata(name: str) -> bytes | None:
    """A metadata file as served: ``timestamp.json`` (newest) or ``<version>.<role>.json``."""
    if name == "timestamp.json":
        row = TufMetadata.objects.filter(role=Timestamp.type).order_by("-version").first()
        return bytes(row.data) if row else None
    version, _, rest = name.partition(".")
    if not version.isdigit() or not rest.endswith(".json") or rest == "timestamp.json":
        return None
    row = (
        TufMetadata.objects.filter(role=rest[: -len(".json")], version=int(version))
        .only("data")
        .first()
    )
    return bytes(row.data) if row else None


def open_target(served_name: str) -> TargetBlob | None:
    """A target by its served name ``<dir>/<sha256>.<file>`` (consistent snapshots)."""
    directory, _, base = served_name.rpartition("/")
    sha256, _, name = base.partition(".")
    if len(sha256) != 64 or not name:
        return None
    path = f"{directory}/{name}" if directory else name
    row = TufTarget.objects.filter(path=path, sha256=sha256).first()
    if row is None:
        return None
    file = _targets_dir() / row.file if row.file else None
    return TargetBlob(
        path=row.path,
        length=row.length,
        device_id=row.device_id,
        data=bytes(row.data) if row.data is not None else None,
        file=file,
    )


def software_releases() -> list[SoftwareTarget]:
    """What the newest release role lists (one row read: rollouts ask this on a request)."""
    row = (
        TufMetadata.objects.filter(role=tuf_repo.ROLE_RELEASE).order_by("-version").only("data")
    ).first()
    if row is None:
        return []
    release = Metadata[Targets].from_bytes(bytes(row.data))
    out = []
    for path, target in release.signed.targets.items():
        custom = target.custom if isinstance(target.custom, dict) else {}
        out.append(
            SoftwareTarget(
                version=str(custom.get("version", "")),
                path=path,
                length=target.length,
                sha256=target.hashes["sha256"],
                allow_downgrade=bool(custom.get("allow_downgrade", False)),
            )
        )
    return out


# -- changing ------------------------------------------------------------------------------------


def publish(
    files: Mapping[str, bytes], bundles: Mapping[str, Path], *, now: datetime | None = None
) -> list[SoftwareTarget]:
    """Verify offline-signed metadata and bundles, store them, sign snapshot and timestamp.

    ``bundles`` maps a software target path to the bundle file; every target the release role
    lists must either be published already or come with its bundle, of the signed length and
    SHA-256. Nothing is stored when anything is refused.
    """
    at = now or datetime.now(UTC)
    _lock()
    signers = online_signers()
    current = _current_files()
    trusted = tuf_repo.Repository.load(current, now=at).md if current else {}
    try:
        publication = tuf_repo.verify_publication(
            trusted,
            files,
            online_keys={role: signer.public_key for role, signer in signers.items()},
            now=at,
        )
    except tuf_repo.PublicationError as exc:
        raise PublicationRefusedError(str(exc)) from exc
    new_targets = _check_bundles(publication, bundles)

    repo = tuf_repo.Repository.load(
        {**current, **publication.files},
        signers={role: [signer] for role, signer in signers.items()},
        now=at,
    )
    for name in publication.files:
        md = Metadata.from_bytes(publication.files[name])
        role = name.split(".", 1)[1][:-5]
        TufMetadata.objects.create(
            role=role, version=md.signed.version, data=publication.files[name]
        )
    repo.ensure_config_roles(bin_bits=int(getattr(settings, "FIELDLINK_TUF_BIN_BITS", 8)))
    repo.snapshot_and_timestamp()
    _store(repo)
    for path, sha256, length, source in new_targets:
        file_name = f"{sha256}.{path.rpartition('/')[2]}"
        destination = _targets_dir() / file_name
        destination.parent.mkdir(parents=True, exist_ok=True)
        if not destination.exists():
            tmp = destination.with_name(f".{file_name}.{uuid.uuid4().hex}.tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(destination)
        TufTarget.objects.get_or_create(
            path=path, sha256=sha256, defaults={"length": length, "file": file_name}
        )
    return [t for t in software_releases() if t.path in {p for p, *_ in new_targets}]


def _check_bundles(
    publication: tuf_repo.Publication, bundles: Mapping[str, Path]
) -> list[tuple[str, str, int, Path]]:
    if publication.release is None:
        if bundles:
            raise PublicationRefusedError("Bundles need a signed release role listing them.")
        return []
    known = set(
        TufTarget.objects.filter(path__startswith="software/").values_list("sha256", flat=True)
    )
    out = []
    for path, target in publication.release.signed.targets.items():
        sha256 = target.hashes.get("sha256", "")
        if sha256 in known:
            continue
        source = bundles.get(path)
        if source is None:
            raise PublicationRefusedError(f"{path}: the bundle file is missing.")
        size = source.stat().st_size
        if size != target.length or size > MAX_BUNDLE_BYTES:
            raise PublicationRefusedError(f"{path}: the bundle's length is not the signed one.")
        digest = hashlib.sha256()
        with source.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            raise PublicationRefusedError(f"{path}: the bundle's SHA-256 is not the signed one.")
        out.append((path, sha256, size, source))
    unknown = set(bundles) - set(publication.release.signed.targets)
    if unknown:
        raise PublicationRefusedError(f"Bundles not listed by the release role: {sorted(unknown)}")
    return out


def sign_device_config(
    device_id: uuid.UUID, payload: bytes, *, now: datetime | None = None
) -> SignedTarget:
    """Sign ``payload`` as the device's configuration target (its hashed bin, online key)."""
    _lock()
    repo = _load(now or datetime.now(UTC))
    target = repo.set_config(str(device_id), payload)
    _store(repo)
    sha256 = target.hashes["sha256"]
    TufTarget.objects.get_or_create(
        path=target.path,
        sha256=sha256,
        defaults={"length": target.length, "data": payload, "device_id": device_id},
    )
    return SignedTarget(path=target.path, length=target.length, sha256=sha256)


def refresh_online_metadata(now: datetime | None = None) -> list[str]:
    """Re-sign the online roles past half their lifetime (hourly task); the files signed."""
    if not has_repository():
        return []
    _lock()
    repo = _load(now or datetime.now(UTC))
    repo.refresh()
    return _store(repo)


def describe() -> dict[str, Any]:
    """Versions and expiry of the current metadata, for the admin's updates page."""
    out: dict[str, Any] = {}
    for name, data in _current_files().items():
        md = Metadata.from_bytes(data)
        role = md.signed.type if name == "timestamp.json" else name.split(".", 1)[1][:-5]
        if role.startswith(tuf_repo.BIN_PREFIX):
            continue
        out[role] = {"version": md.signed.version, "expires": md.signed.expires.isoformat()}
    return out
