"""The agent release bundle: one plain tar an edge device can install with no network.

Layout (``docs/updates.md``, section "Release engineering")::

    manifest.json       {"format": 1, "version", "python", "wheels": [{name, sha256, size}],
                         "entry": "fieldlink"}
    wheels/<file>.whl   the fieldlink wheel and every dependency wheel

The bundle is reproducible: members in a fixed order (manifest first, then wheels by name), with
fixed mtimes, owners and modes, so the same wheels always give the same bytes and two release
engineers can check each other's build by its SHA-256 before signing it.

The limits are the edge installer's own (``edge.slots.BundleLimits``): a bundle the agent would
refuse is refused here, at build time, instead of after a signed release reached the plants.
``read_bundle`` applies the same member allowlist as the installer to a bundle built elsewhere
(``fieldlink release add --bundle``): nothing is extracted, every wheel is hashed in the stream.

No Django here: the release engineer's machine has no cloud settings.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Final

from fieldlink.edge.slots import BundleLimits
from fieldlink.kit.errors import FieldlinkError
from fieldlink.kit.files import fsync_directory
from fieldlink.updates import tuf_repo

__all__ = [
    "ENTRY",
    "MANIFEST_NAME",
    "BundleError",
    "Manifest",
    "WheelEntry",
    "build_bundle",
    "bundle_name",
    "collect_wheels",
    "read_bundle",
]

MANIFEST_NAME: Final = "manifest.json"
WHEELS_DIR: Final = "wheels"
FORMAT: Final = 1
ENTRY: Final = "fieldlink"
# The same rule as the installer's: a plain file name, never a path.
_WHEEL_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}\.whl")
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_MTIME: Final = 0  # reproducible: the wheels' own file times must not leak into the bytes
_CHUNK: Final = 1024 * 1024
_PIP_TIMEOUT_S: Final = 1800.0


class BundleError(FieldlinkError):
    """A bundle that cannot be built or is not a valid agent bundle; the message says why."""

    code = "bundle_invalid"
    kind = "invalid"


@dataclass(frozen=True)
class WheelEntry:
    name: str
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    version: str
    python: str
    wheels: tuple[WheelEntry, ...]

    def to_bytes(self) -> bytes:
        document = {
            "format": FORMAT,
            "version": self.version,
            "python": self.python,
            "wheels": [{"name": w.name, "sha256": w.sha256, "size": w.size} for w in self.wheels],
            "entry": ENTRY,
        }
        return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def bundle_name(version: str) -> str:
    """``fieldlink-agent-<version>.tar``, the base name of the software target."""
    return tuf_repo.software_path(version).rpartition("/")[2]


def running_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _check_version(version: str) -> None:
    try:
        tuf_repo.software_path(version)
    except ValueError as exc:
        raise BundleError(str(exc)) from exc


def _check_agent_wheel(names: Sequence[str], version: str) -> None:
    """Exactly one fieldlink wheel, of the bundle's version: the label must match the content."""
    agents = [n for n in names if n.split("-", 1)[0].lower() == ENTRY]
    if len(agents) != 1:
        raise BundleError(
            f"a bundle holds exactly one {ENTRY} wheel (found {len(agents)}: {agents})"
        )
    wheel_version = agents[0].split("-")[1] if agents[0].count("-") >= 2 else ""
    if wheel_version != version:
        raise BundleError(
            f"the {ENTRY} wheel {agents[0]} is version {wheel_version!r}, not the bundle's "
            f"{version!r}"
        )


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = _MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def build_bundle(
    version: str,
    wheels: Sequence[Path],
    out: Path,
    *,
    python: str | None = None,
    limits: BundleLimits = BundleLimits(),  # noqa: B008 - frozen dataclass, never mutated
) -> Manifest:
    """Write the bundle of ``wheels`` for ``version`` to ``out`` (atomically); its manifest."""
    _check_version(version)
    names = [w.name for w in wheels]
    for name in names:
        if not _WHEEL_NAME.fullmatch(name):
            raise BundleError(f"{name!r} is not a wheel file name")
    if len(set(names)) != len(names):
        raise BundleError("two wheels have the same file name")
    if not 1 <= len(names) < limits.max_members:
        raise BundleError(f"a bundle holds 1 to {limits.max_members - 1} wheels")
    _check_agent_wheel(names, version)

    entries: list[tuple[WheelEntry, Path]] = []
    total = 0
    for path in sorted(wheels, key=lambda p: p.name):
        sha256, size = _hash_file(path)
        if size == 0 or size > limits.max_member_bytes:
            raise BundleError(f"{path.name} is {size} bytes: over the agent's cap or empty")
        total += size
        entries.append((WheelEntry(path.name, sha256, size), path))
    if total > limits.max_total_bytes:
        raise BundleError(f"the wheels add up to {total} bytes, over the agent's cap")
    manifest = Manifest(
        version=version,
        python=python or running_python(),
        wheels=tuple(entry for entry, _ in entries),
    )
    manifest_bytes = manifest.to_bytes()

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(_member(MANIFEST_NAME, len(manifest_bytes)), io.BytesIO(manifest_bytes))
                for entry, path in entries:
                    with path.open("rb") as handle:
                        tar.addfile(_member(f"{WHEELS_DIR}/{entry.name}", entry.size), handle)
            raw.flush()
            os.fsync(raw.fileno())
        tmp.chmod(0o644)
        # A wheel rewritten between hashing and copying would make a bundle that contradicts
        # its own manifest: read it back before it takes the final name.
        read_bundle(tmp, version=version, limits=limits)
        tmp.replace(out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(out.parent)
    return manifest


def read_bundle(
    path: Path,
    *,
    version: str | None = None,
    limits: BundleLimits = BundleLimits(),  # noqa: B008 - frozen dataclass, never mutated
) -> Manifest:
    """Check a bundle file the way the agent will, without extracting anything; its manifest.

    Refused: members other than ``manifest.json`` and ``wheels/<file>.whl`` (links, devices,
    absolute paths, ``..``), sizes over the agent's caps, a wheel whose SHA-256 or size differs
    from the manifest, a wheel missing from or unlisted in the manifest, another version.
    """
    manifest_raw, found = _scan(path, limits)
    manifest = _parse_manifest(manifest_raw)
    if version is not None and manifest.version != version:
        raise BundleError(f"the bundle is version {manifest.version!r}, not {version!r}")
    listed = {w.name: (w.sha256, w.size) for w in manifest.wheels}
    if len(listed) != len(manifest.wheels) or set(listed) != set(found):
        missing, extra = sorted(set(listed) - set(found)), sorted(set(found) - set(listed))
        raise BundleError(
            f"the wheels do not match the manifest (missing {missing}, unlisted {extra})"
        )
    for name, observed in found.items():
        if observed != listed[name]:
            raise BundleError(f"wheel {name} does not match its manifest SHA-256 and size")
    _check_agent_wheel(list(listed), manifest.version)
    return manifest


def _scan(path: Path, limits: BundleLimits) -> tuple[bytes, dict[str, tuple[str, int]]]:
    """The manifest's bytes and each wheel's (sha256, size), member by member, capped."""
    found: dict[str, tuple[str, int]] = {}
    manifest_raw: bytes | None = None
    total = 0
    try:
        with tarfile.open(path, mode="r:") as tar:
            for count, member in enumerate(tar, start=1):
                if count > limits.max_members:
                    raise BundleError(f"the bundle has over {limits.max_members} members")
                name = _member_name(member)
                if member.isdir():
                    continue
                is_manifest = name == MANIFEST_NAME
                cap = limits.max_manifest_bytes if is_manifest else limits.max_member_bytes
                total += member.size
                if member.size > cap or total > limits.max_total_bytes:
                    raise BundleError(f"bundle member {name!r} is over the agent's size cap")
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - regular files always have data
                    raise BundleError(f"bundle member {name!r} has no data")
                if is_manifest:
                    if manifest_raw is not None:
                        raise BundleError("the bundle has two manifests")
                    manifest_raw = source.read(member.size)
                    continue
                wheel = _wheel_member(name)
                if wheel in found:
                    raise BundleError(f"bundle member {name!r} appears twice")
                found[wheel] = _hash_stream(source)
    except tarfile.TarError as exc:
        raise BundleError(f"not a readable tar file: {exc}") from exc
    except OSError as exc:
        raise BundleError(f"cannot read the bundle {path}: {exc.strerror}") from exc
    if manifest_raw is None:
        raise BundleError(f"the bundle has no {MANIFEST_NAME}")
    return manifest_raw, found


def _wheel_member(name: str) -> str:
    wheel = name.removeprefix(f"{WHEELS_DIR}/")
    if wheel == name or not _WHEEL_NAME.fullmatch(wheel):
        raise BundleError(
            f"unexpected bundle member {name!r} (only {MANIFEST_NAME} and "
            f"{WHEELS_DIR}/*.whl belong in a bundle)"
        )
    return wheel


def _member_name(member: tarfile.TarInfo) -> str:
    name = member.name
    if name.startswith("/") or "\\" in name or "\x00" in name:
        raise BundleError(f"bundle member {name!r} has an absolute or odd path")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if ".." in parts:
        raise BundleError(f"bundle member {name!r} leaves the bundle (..)")
    if not (member.isfile() or member.isdir()):
        raise BundleError(f"bundle member {name!r} is a link or a special file")
    normalised = "/".join(parts)
    if member.isdir() and normalised not in ("", WHEELS_DIR):
        raise BundleError(f"unexpected directory {name!r} in the bundle")
    return normalised


def _hash_stream(source: IO[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    while chunk := source.read(_CHUNK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def _parse_manifest(raw: bytes) -> Manifest:
    try:
        document: Any = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{MANIFEST_NAME} is not JSON") from exc
    expected = {"format", "version", "python", "wheels", "entry"}
    if not isinstance(document, dict) or set(document) != expected:
        raise BundleError(f"{MANIFEST_NAME} must have exactly the keys {sorted(expected)}")
    if document["format"] != FORMAT or document["entry"] != ENTRY:
        raise BundleError(f"{MANIFEST_NAME}: unknown format or entry point")
    version, python, wheels = document["version"], document["python"], document["wheels"]
    if not isinstance(version, str) or not isinstance(python, str) or not isinstance(wheels, list):
        raise BundleError(f"{MANIFEST_NAME}: version, python and wheels have the wrong types")
    _check_version(version)
    entries = []
    for item in wheels:
        if (
            not isinstance(item, dict)
            or set(item) != {"name", "sha256", "size"}
            or not isinstance(item["name"], str)
            or not _WHEEL_NAME.fullmatch(item["name"])
            or not isinstance(item["sha256"], str)
            or not _SHA256.fullmatch(item["sha256"])
            or not isinstance(item["size"], int)
            or item["size"] < 1
        ):
            raise BundleError(f"{MANIFEST_NAME}: a malformed wheel entry")
        entries.append(WheelEntry(item["name"], item["sha256"], item["size"]))
    return Manifest(version=version, python=python, wheels=tuple(entries))


def collect_wheels(
    project_dir: Path,
    requirements_file: Path,
    dest: Path,
    *,
    pip_args: Sequence[str] = (),
    build_isolation: bool = True,
) -> list[Path]:
    """The wheels of a release: the project's own, and its pinned dependencies as binaries.

    ``pip download --only-binary=:all:`` so no dependency's build script runs on the release
    machine, and ``--no-deps`` with a fully pinned requirements file so nothing outside the lock
    ends up in a signed bundle. Downloads go through pip's configured index (the package
    registry); ``pip_args`` adds options such as ``--no-index --find-links DIR`` for an offline
    build.
    """
    dest.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    build = [*pip, "wheel", "--no-deps", "--wheel-dir", str(dest), *pip_args]
    if not build_isolation:
        build.append("--no-build-isolation")
    _run([*build, str(project_dir)], "pip wheel")
    if requirements_file.read_text().strip():
        _run(
            [
                *pip,
                "download",
                "--only-binary=:all:",
                "--no-deps",
                "--dest",
                str(dest),
                *pip_args,
                "--requirement",
                str(requirements_file),
            ],
            "pip download",
        )
    return sorted(dest.glob("*.whl"), key=lambda p: p.name)


def _run(command: list[str], what: str) -> None:
    try:
        done = subprocess.run(  # noqa: S603 - a fixed command line, no shell
            command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BundleError(f"{what} failed: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise BundleError(f"{what} failed (exit {done.returncode}): {tail}")
