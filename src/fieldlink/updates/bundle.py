"""The agent release bundle: one plain tar an edge device can install with no network.

Layout (``docs/updates.md``, section "Release engineering")::

    manifest.json       {"format": 1, "version", "python", "wheels": [{name, sha256, size}],
                         "entry": "fieldlink"}
    wheels/<file>.whl   the fieldlink wheel and every dependency wheel

The bundle is reproducible: members in a fixed order (manifest first, then wheels by name), with
fixed mtimes, owners and modes, so the same wheels always give the same bytes and two release
engineers can check each other's build by its SHA-256 before signing it.

The manifest type, the limits and the check are the edge installer's own (``edge.slots``): a
bundle the agent would refuse is refused here, at build time, instead of after a signed release
reached the plants. ``read_bundle`` runs ``slots.verify_bundle`` (the installer's member walk,
nothing extracted, every wheel hashed in the stream) on every bundle built here and on one built
elsewhere (``fieldlink release add --bundle``), then adds the release rules the agent does not
need: a release version, and exactly one fieldlink wheel, of that version.

No Django here: the release engineer's machine has no cloud settings.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import msgspec

from fieldlink.edge.slots import (
    MANIFEST_NAME,
    RUNNING_PYTHON,
    WHEELS_DIR,
    BundleLimits,
    BundleManifest,
    BundleRefusedError,
    BundleWheel,
    is_valid_wheel_name,
    verify_bundle,
)
from fieldlink.kit.errors import FieldlinkError
from fieldlink.kit.files import fsync_directory
from fieldlink.updates import tuf_repo

__all__ = [
    "ENTRY",
    "BundleError",
    "build_bundle",
    "bundle_name",
    "collect_wheels",
    "manifest_bytes",
    "read_bundle",
]

FORMAT: Final = 1
ENTRY: Final = "fieldlink"
_MTIME: Final = 0  # reproducible: the wheels' own file times must not leak into the bytes
_CHUNK: Final = 1024 * 1024
_PIP_TIMEOUT_S: Final = 1800.0


class BundleError(FieldlinkError):
    """A bundle that cannot be built or is not a valid agent bundle; the message says why."""

    code = "bundle_invalid"
    kind = "invalid"


def manifest_bytes(manifest: BundleManifest) -> bytes:
    """``manifest.json`` as written into a bundle: sorted keys, indented, one fixed form."""
    document = msgspec.to_builtins(manifest)
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def bundle_name(version: str) -> str:
    """``fieldlink-agent-<version>.tar``, the base name of the software target."""
    return tuf_repo.software_path(version).rpartition("/")[2]


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
) -> BundleManifest:
    """Write the bundle of ``wheels`` for ``version`` to ``out`` (atomically); its manifest."""
    _check_version(version)
    names = [w.name for w in wheels]
    for name in names:
        if not is_valid_wheel_name(name):
            raise BundleError(f"{name!r} is not a wheel file name")
    if len(set(names)) != len(names):
        raise BundleError("two wheels have the same file name")
    if not 1 <= len(names) < limits.max_members:
        raise BundleError(f"a bundle holds 1 to {limits.max_members - 1} wheels")
    _check_agent_wheel(names, version)

    entries: list[tuple[BundleWheel, Path]] = []
    total = 0
    for path in sorted(wheels, key=lambda p: p.name):
        sha256, size = _hash_file(path)
        if size == 0 or size > limits.max_member_bytes:
            raise BundleError(f"{path.name} is {size} bytes: over the agent's cap or empty")
        total += size
        entries.append((BundleWheel(path.name, sha256, size), path))
    if total > limits.max_total_bytes:
        raise BundleError(f"the wheels add up to {total} bytes, over the agent's cap")
    manifest = BundleManifest(
        format=FORMAT,
        version=version,
        python=python or RUNNING_PYTHON,
        wheels=tuple(entry for entry, _ in entries),
        entry=ENTRY,
    )
    document = manifest_bytes(manifest)

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.addfile(_member(MANIFEST_NAME, len(document)), io.BytesIO(document))
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
) -> BundleManifest:
    """Check a bundle file exactly as the agent will, without extracting anything; its manifest.

    The agent's check is ``slots.verify_bundle`` itself, for any Python (the devices' may differ
    from this machine's). On top of it, the release rules: a release version, one fieldlink
    wheel of that version. Every refusal is a BundleError.
    """
    try:
        manifest = verify_bundle(path, version, python=None, limits=limits)
    except BundleRefusedError as exc:
        raise BundleError(exc.message) from exc
    _check_version(manifest.version)
    _check_agent_wheel([w.name for w in manifest.wheels], manifest.version)
    return manifest


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
