"""The edge home: installed agent versions ("slots"), the ``current`` link, and the small files
through which the agent, its installer and the supervisor talk to each other.

Layout under ``<home>`` (the directory of edge.toml unless ``[update] home`` or ``--home`` says
otherwise)::

    slots/<version>/venv/        one installed agent per version (its own venv, offline-installed)
    slots/<version>/installed.json   written last inside the build directory: "complete"
    current -> slots/<version>   absent = the base installation the supervisor runs from
    supervisor.json              the supervisor's state (phase, version, previous, attempts)
    staged.json                  agent → supervisor: "slots/<v> is installed, switch to it"
    healthy.json                 agent → supervisor: "<v> (pid N) talked to the cloud"
    last_update.json             supervisor → agent: the outcome of the last switch attempt

Every file is replaced atomically (``kit.files.write_atomically``: write, fsync, rename, fsync
the directory), so a reader sees the old content or the new one. Directories are made complete
under a hidden temporary name and renamed into place, and removed by renaming them away first,
so a crash never leaves a half slot under its final name. Readers of the small files are
tolerant: a missing or unreadable file reads as "nothing there" (the supervisor must keep a
runnable agent whatever it finds on disk).

A bundle (``fieldlink-agent-<version>.tar``) reaches ``install_bundle`` after TUF verified its
hash and length, and is still treated as hostile input: it is read member by member against an
allowlist (``manifest.json``, ``wheels/<file>.whl``), links, devices, absolute paths, ``..`` and
duplicate names are refused, sizes are capped before anything is written, and every wheel's
sha256 and size must match the manifest. Nothing is ever extracted by name: each wheel is
written to a path this module builds, opened with ``O_EXCL | O_NOFOLLOW``.

``verify_bundle`` is that same member walk with each wheel hashed in the stream instead of
written out: the release tool checks a bundle with it before signing, so a bundle it accepts is
one the installer accepts, by construction rather than by a second copy of the rules.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Annotated, Any, ClassVar, Final, Literal

import msgspec
from msgspec import Meta

from fieldlink.kit.errors import ErrorKind, FieldlinkError
from fieldlink.kit.files import fsync_directory, write_atomically

__all__ = [
    "CURRENT",
    "EXIT_RESTART_FOR_UPDATE",
    "HOME_ENV",
    "MANIFEST_NAME",
    "RUNNING_PYTHON",
    "WHEELS_DIR",
    "BundleHashMismatchError",
    "BundleLimits",
    "BundleManifest",
    "BundleManifestError",
    "BundleRefusedError",
    "BundleTooLargeError",
    "BundleWheel",
    "Healthy",
    "InstallFailedError",
    "Installer",
    "LastUpdate",
    "SlotConflictError",
    "SlotError",
    "UnsafeBundleMemberError",
    "clear_healthy",
    "clear_staged",
    "default_home",
    "install_bundle",
    "installed_versions",
    "is_installed",
    "is_valid_version",
    "is_valid_wheel_name",
    "mark_healthy",
    "pip_installer",
    "read_current",
    "read_healthy",
    "read_json",
    "read_last_update",
    "read_staged",
    "remove_leftovers",
    "remove_slots_except",
    "slot_dir",
    "slot_python",
    "switch_current",
    "verify_bundle",
    "write_json",
    "write_last_update",
    "write_staged",
]

EXIT_RESTART_FOR_UPDATE: Final = 75  # EX_TEMPFAIL: "restart me", not a crash
HOME_ENV: Final = "FIELDLINK_EDGE_HOME"

SLOTS: Final = "slots"
CURRENT: Final = "current"
STATE_FILE: Final = "supervisor.json"
STAGED_FILE: Final = "staged.json"
HEALTHY_FILE: Final = "healthy.json"
LAST_UPDATE_FILE: Final = "last_update.json"
INSTALLED_MARK: Final = "installed.json"

_BUILD_PREFIX: Final = ".build-"
_TRASH_PREFIX: Final = ".trash-"
_LINK_TMP_PREFIX: Final = f".{CURRENT}."
_SMALL_FILE: Final = 64 * 1024  # the JSON files here are a few hundred bytes

# A version names a directory: it starts with a digit (so it can never be ".", ".." or a hidden
# build/trash name) and has no separator.
_VERSION = re.compile(r"[0-9][0-9A-Za-z.+_-]{0,63}")
_WHEEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}\.whl")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class SlotError(FieldlinkError):
    code = "edge_slot_error"
    kind: ClassVar[ErrorKind] = "internal"


class BundleRefusedError(SlotError):
    """The bundle is not installed: it is malformed, unsafe or does not match its manifest."""

    code = "bundle_refused"
    kind: ClassVar[ErrorKind] = "invalid"


class UnsafeBundleMemberError(BundleRefusedError):
    code = "bundle_unsafe_member"


class BundleTooLargeError(BundleRefusedError):
    code = "bundle_too_large"
    kind: ClassVar[ErrorKind] = "too_large"


class BundleManifestError(BundleRefusedError):
    code = "bundle_manifest_invalid"


class BundleHashMismatchError(BundleRefusedError):
    code = "bundle_hash_mismatch"


class SlotConflictError(SlotError):
    code = "slot_conflict"
    kind: ClassVar[ErrorKind] = "conflict"


class InstallFailedError(SlotError):
    code = "slot_install_failed"


def is_valid_version(version: str) -> bool:
    return _VERSION.fullmatch(version) is not None


def _check_version(version: str) -> str:
    if not is_valid_version(version):
        raise SlotError(f"{version!r} is not a valid slot version")
    return version


def default_home(config: Path) -> Path:
    """``[update] home`` of edge.toml (relative to the file), else the file's directory.

    Read leniently on purpose: the supervisor must come up to restart the agent even when the
    agent's part of the file is broken (the agent reports that itself).
    """
    base = config.resolve().parent
    try:
        doc = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return base
    update = doc.get("update")
    if isinstance(update, dict) and isinstance(update.get("home"), str) and update["home"]:
        return base / str(update["home"])
    return base


# -- slots ----------------------------------------------------------------------------------


def slot_dir(home: Path, version: str) -> Path:
    return home / SLOTS / _check_version(version)


def slot_python(home: Path, version: str) -> Path:
    return slot_dir(home, version) / "venv" / "bin" / "python"


def is_installed(home: Path, version: str) -> bool:
    if not is_valid_version(version):
        return False
    slot = slot_dir(home, version)
    return (slot / INSTALLED_MARK).is_file() and slot_python(home, version).exists()


def installed_versions(home: Path) -> frozenset[str]:
    try:
        names = [p.name for p in (home / SLOTS).iterdir()]
    except OSError:
        return frozenset()
    return frozenset(n for n in names if is_installed(home, n))


def read_current(home: Path) -> str | None:
    """The version ``current`` points at; None when it is absent (the base installation).

    Raises SlotError when ``current`` is something else (not a link, pointing outside
    ``slots/``, or at a slot that is not installed): the caller repairs it.
    """
    link = home / CURRENT
    try:
        target = str(link.readlink())
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SlotError(f"{link} is not a symbolic link") from exc
    parts = PurePosixPath(target).parts
    if len(parts) != 2 or parts[0] != SLOTS or not is_installed(home, parts[1]):
        raise SlotError(f"{link} points at {target!r}, which is not an installed slot")
    return parts[1]


def switch_current(home: Path, version: str | None) -> None:
    """Point ``current`` at ``slots/<version>`` (None: remove it) in one atomic step.

    A new link under a temporary name is renamed over the old one: ``current`` is the old link
    or the new one at every instant, never missing in between.
    """
    link = home / CURRENT
    if version is None:
        try:
            link.unlink()
        except FileNotFoundError:
            return
        fsync_directory(home)
        return
    if not is_installed(home, version):
        raise SlotError(f"slot {version} is not installed")
    tmp = home / f"{_LINK_TMP_PREFIX}{secrets.token_hex(4)}.tmp"
    tmp.symlink_to(f"{SLOTS}/{version}")
    try:
        tmp.replace(link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(home)


def _remove_dir(path: Path) -> None:
    """Rename away first (atomic), then delete: a crash leaves trash, never a half slot."""
    trash = path.parent / f"{_TRASH_PREFIX}{path.name}-{secrets.token_hex(4)}"
    path.rename(trash)
    fsync_directory(path.parent)
    shutil.rmtree(trash, ignore_errors=True)


def remove_slots_except(home: Path, keep: set[str]) -> list[str]:
    """Remove every installed slot not in ``keep``; returns the versions removed."""
    removed = []
    for version in sorted(installed_versions(home) - keep):
        _remove_dir(slot_dir(home, version))
        removed.append(version)
    return removed


def remove_leftovers(home: Path) -> None:
    """Delete what crashes leave behind: build and trash directories, temporary links.

    Only call it when no installer runs (the supervisor does at start, before its child).
    """
    for name in (STATE_FILE, STAGED_FILE, HEALTHY_FILE, LAST_UPDATE_FILE):
        for tmp in home.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
    for tmp in home.glob(f"{_LINK_TMP_PREFIX}*.tmp"):
        tmp.unlink(missing_ok=True)
    slots = home / SLOTS
    if slots.is_dir():
        for leftover in slots.iterdir():
            if leftover.name.startswith((_BUILD_PREFIX, _TRASH_PREFIX)):
                shutil.rmtree(leftover, ignore_errors=True)


# -- the small files --------------------------------------------------------------------------


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps(doc, sort_keys=True).encode() + b"\n", 0o644)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        with path.open("rb") as file:
            raw = file.read(_SMALL_FILE + 1)
    except OSError:
        return None
    if len(raw) > _SMALL_FILE:
        return None
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def write_staged(home: Path, version: str) -> None:
    """The agent's request to run ``version`` next; it then exits with EXIT_RESTART_FOR_UPDATE."""
    if not is_installed(home, version):
        raise SlotError(f"slot {version} is not installed; install the bundle first")
    write_json(home / STAGED_FILE, {"version": version, "slot": f"{SLOTS}/{version}"})


def read_staged(home: Path) -> str | None:
    """The staged version, if the file names a valid version (installed or not: the caller
    decides)."""
    doc = read_json(home / STAGED_FILE)
    version = doc.get("version") if doc else None
    return version if isinstance(version, str) and is_valid_version(version) else None


def clear_staged(home: Path) -> None:
    _unlink(home / STAGED_FILE)


@dataclass(frozen=True)
class Healthy:
    version: str
    pid: int


def mark_healthy(home: Path, version: str, pid: int | None = None) -> None:
    """Written by the agent after its first acknowledged exchange with the cloud."""
    write_json(
        home / HEALTHY_FILE, {"version": version, "pid": os.getpid() if pid is None else pid}
    )


def read_healthy(home: Path) -> Healthy | None:
    doc = read_json(home / HEALTHY_FILE)
    if not doc:
        return None
    version, pid = doc.get("version"), doc.get("pid")
    if not isinstance(version, str) or not isinstance(pid, int) or isinstance(pid, bool):
        return None
    return Healthy(version, pid)


def clear_healthy(home: Path) -> None:
    _unlink(home / HEALTHY_FILE)


Outcome = Literal["updated", "rolled_back"]


@dataclass(frozen=True)
class LastUpdate:
    version: str
    outcome: Outcome
    reason: str
    at_ms: int


def write_last_update(
    home: Path, version: str, outcome: Outcome, reason: str = "", at_ms: int | None = None
) -> None:
    at = time.time_ns() // 1_000_000 if at_ms is None else at_ms
    write_json(
        home / LAST_UPDATE_FILE,
        {"version": version, "outcome": outcome, "reason": reason[:500], "at_ms": at},
    )


def read_last_update(home: Path) -> LastUpdate | None:
    doc = read_json(home / LAST_UPDATE_FILE)
    if not doc:
        return None
    version, outcome = doc.get("version"), doc.get("outcome")
    reason, at_ms = doc.get("reason", ""), doc.get("at_ms", 0)
    if (
        not isinstance(version, str)
        or outcome not in ("updated", "rolled_back")
        or not isinstance(reason, str)
        or not isinstance(at_ms, int)
    ):
        return None
    return LastUpdate(version, outcome, reason, at_ms)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        return
    fsync_directory(path.parent)


# -- checking a bundle ---------------------------------------------------------------------------

RUNNING_PYTHON: Final = f"{sys.version_info.major}.{sys.version_info.minor}"
MANIFEST_NAME: Final = "manifest.json"
WHEELS_DIR: Final = "wheels"
_CHUNK: Final = 1024 * 1024


@dataclass(frozen=True)
class BundleLimits:
    max_members: int = 512
    max_member_bytes: int = 64 * 1024 * 1024
    max_total_bytes: int = 256 * 1024 * 1024
    max_manifest_bytes: int = 64 * 1024


class BundleWheel(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    sha256: str
    size: Annotated[int, Meta(ge=1)]


class BundleManifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``manifest.json``: every field required, nothing else allowed."""

    format: Literal[1]
    version: str
    python: str
    wheels: Annotated[tuple[BundleWheel, ...], Meta(min_length=1, max_length=511)]
    entry: Literal["fieldlink"]


# (wheel file name, the member's data, its size) -> (sha256, bytes read) of what was read
_WheelReader = Callable[[str, IO[bytes], int], tuple[str, int]]


def is_valid_wheel_name(name: str) -> bool:
    """A plain wheel file name, never a path: the rule for members and manifest entries."""
    return _WHEEL_NAME.fullmatch(name) is not None


def verify_bundle(
    bundle: Path,
    version: str | None = None,
    *,
    python: str | None = RUNNING_PYTHON,
    limits: BundleLimits = BundleLimits(),
) -> BundleManifest:
    """Check ``bundle`` as ``install_bundle`` does, writing nothing; returns its manifest.

    The installer's own member walk, with each wheel hashed in the stream instead of copied
    out. ``version``: the version the bundle must be (None: any valid one). ``python``: the
    ``major.minor`` it must be built for (None: any; the release machine that checks a bundle
    before signing it need not run the devices' Python). Raises a BundleRefusedError.
    """
    _check_bundle_size(bundle, limits)
    try:
        return _read_members(bundle, version, python, limits, _hash_wheel)
    except OSError as exc:  # nothing is written here: it is the bundle that cannot be read
        raise BundleRefusedError(f"cannot read the bundle {bundle}: {exc.strerror}") from exc


def _check_bundle_size(bundle: Path, limits: BundleLimits) -> None:
    try:
        size = bundle.stat().st_size
    except OSError as exc:
        raise BundleRefusedError(f"cannot read the bundle {bundle}: {exc.strerror}") from exc
    # The tar headers and padding are a small fraction on top of the members.
    if size > limits.max_total_bytes + 1024 * (limits.max_members + 2) + 10240:
        raise BundleTooLargeError(f"the bundle is {size} bytes, over the cap")


def _read_members(
    bundle: Path,
    version: str | None,
    python: str | None,
    limits: BundleLimits,
    read_wheel: _WheelReader,
) -> BundleManifest:
    """Check every member, hand each wheel to ``read_wheel``; the manifest, matched against
    what the wheels turned out to be."""
    seen: set[str] = set()
    found: dict[str, tuple[str, int]] = {}  # wheel file -> (sha256, size)
    manifest_raw: bytes | None = None
    total = 0
    try:
        with tarfile.open(bundle, mode="r:") as tar:
            for count, member in enumerate(tar, start=1):
                if count > limits.max_members:
                    raise BundleTooLargeError(f"the bundle has over {limits.max_members} members")
                name = _member_name(member)
                if name in seen:
                    raise UnsafeBundleMemberError(f"bundle member {name!r} appears twice")
                seen.add(name)
                if member.isdir():
                    if name not in ("", WHEELS_DIR):
                        raise UnsafeBundleMemberError(f"unexpected directory {name!r}")
                    continue
                total += _check_size(member, name, total, limits)
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - regular files always have data
                    raise UnsafeBundleMemberError(f"bundle member {name!r} has no data")
                if name == MANIFEST_NAME:
                    manifest_raw = source.read(member.size)
                else:
                    wheel = _wheel_name(name)
                    found[wheel] = read_wheel(wheel, source, member.size)
    except tarfile.TarError as exc:
        raise BundleRefusedError(f"the bundle is not a readable tar file: {exc}") from exc
    if manifest_raw is None:
        raise BundleManifestError("the bundle has no manifest.json")
    manifest = _parse_manifest(manifest_raw, version, python)
    _match(manifest, found)
    return manifest


def _member_name(member: tarfile.TarInfo) -> str:
    """The member's normalised name, or UnsafeBundleMemberError (absolute, ``..``, odd types)."""
    name = member.name
    if name.startswith("/") or "\\" in name or "\x00" in name:
        raise UnsafeBundleMemberError(f"bundle member {name!r} has an absolute or odd path")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if ".." in parts:
        raise UnsafeBundleMemberError(f"bundle member {name!r} leaves the bundle (..)")
    if member.issym() or member.islnk():
        raise UnsafeBundleMemberError(f"bundle member {name!r} is a link (refused)")
    if not (member.isfile() or member.isdir()):
        raise UnsafeBundleMemberError(f"bundle member {name!r} is a device, FIFO or special file")
    return "/".join(parts)


def _check_size(member: tarfile.TarInfo, name: str, total: int, limits: BundleLimits) -> int:
    cap = limits.max_manifest_bytes if name == MANIFEST_NAME else limits.max_member_bytes
    if member.size > cap:
        raise BundleTooLargeError(f"bundle member {name!r} is {member.size} bytes, over the cap")
    if total + member.size > limits.max_total_bytes:
        raise BundleTooLargeError("the bundle's members add up to more than the cap")
    return member.size


def _wheel_name(name: str) -> str:
    wheel = name.removeprefix(f"{WHEELS_DIR}/")
    if wheel == name or not is_valid_wheel_name(wheel):
        raise UnsafeBundleMemberError(
            f"unexpected bundle member {name!r} (only {MANIFEST_NAME} and {WHEELS_DIR}/*.whl "
            "belong in a bundle)"
        )
    return wheel


def _parse_manifest(raw: bytes, version: str | None, python: str | None) -> BundleManifest:
    try:
        manifest = msgspec.json.decode(raw, type=BundleManifest)
    except msgspec.ValidationError as exc:
        raise BundleManifestError(f"manifest.json is invalid: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise BundleManifestError("manifest.json is not JSON") from exc
    if version is not None and manifest.version != version:
        raise BundleManifestError(
            f"the bundle is version {manifest.version!r}, expected {version!r}"
        )
    if not is_valid_version(manifest.version):
        raise BundleManifestError(f"the bundle's version {manifest.version!r} is malformed")
    if python is not None and manifest.python != python:
        raise BundleManifestError(f"the bundle is for Python {manifest.python}, this is {python}")
    for wheel in manifest.wheels:
        if not is_valid_wheel_name(wheel.name) or not _SHA256.fullmatch(wheel.sha256):
            raise BundleManifestError(f"manifest entry {wheel.name!r} is malformed")
    return manifest


def _match(manifest: BundleManifest, found: dict[str, tuple[str, int]]) -> None:
    listed = {w.name: w for w in manifest.wheels}
    if len(listed) != len(manifest.wheels):
        raise BundleManifestError("the manifest lists a wheel twice")
    if set(listed) != set(found):
        missing, extra = sorted(set(listed) - set(found)), sorted(set(found) - set(listed))
        raise BundleManifestError(
            f"the wheels do not match the manifest (missing {missing}, unlisted {extra})"
        )
    for name, (sha256, size) in found.items():
        if (sha256, size) != (listed[name].sha256, listed[name].size):
            raise BundleHashMismatchError(f"wheel {name} does not match its manifest sha256/size")


def _digest(
    source: IO[bytes], size: int, sink: Callable[[bytes], object] | None = None
) -> tuple[str, int]:
    """SHA-256 and length of at most ``size`` bytes of ``source`` (what the header declared),
    each chunk also given to ``sink``."""
    digest = hashlib.sha256()
    read = 0
    while read < size and (chunk := source.read(min(_CHUNK, size - read))):
        digest.update(chunk)
        if sink is not None:
            sink(chunk)
        read += len(chunk)
    return digest.hexdigest(), read


def _hash_wheel(name: str, source: IO[bytes], size: int) -> tuple[str, int]:
    return _digest(source, size)


# -- installing a bundle ------------------------------------------------------------------------

# (venv python, directory of the wheels, the wheel files) -> installs them or raises
Installer = Callable[[Path, Path, Sequence[Path]], None]

_PIP_TIMEOUT_S: Final = 600.0


def pip_installer(python: Path, wheels: Path, files: Sequence[Path]) -> None:
    """Install ``files`` into the venv of ``python`` with this interpreter's pip, offline.

    ``--no-index`` and ``--no-deps``: nothing but the verified wheels can end up installed;
    ``--isolated``: no pip configuration file or variable can add an index or options;
    ``--no-cache-dir``: the unit's file system is read-only outside the home.
    """
    command = [
        sys.executable,
        "-m",
        "pip",
        "--python",
        str(python),
        "--isolated",
        "--disable-pip-version-check",
        "--no-input",
        "--no-cache-dir",
        "install",
        "--no-index",
        "--no-deps",
        "--find-links",
        str(wheels),
        *(str(f) for f in files),
    ]
    _run(command, "pip install")


def _create_venv(path: Path) -> None:
    _run([sys.executable, "-m", "venv", "--without-pip", str(path)], "venv creation")


def _run(command: list[str], what: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    try:
        done = subprocess.run(  # noqa: S603 - a fixed command line, no shell
            command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InstallFailedError(f"{what} failed: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise InstallFailedError(f"{what} failed (exit {done.returncode}): {tail}")


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def install_bundle(
    bundle: Path,
    home: Path,
    version: str,
    *,
    installer: Installer = pip_installer,
    limits: BundleLimits = BundleLimits(),
) -> Path:
    """Install the agent bundle ``bundle`` as ``<home>/slots/<version>``; returns that path.

    A complete slot already there for the same bundle is reused; one from a different bundle
    with the same version is a SlotConflictError (a version names one release, forever).
    """
    _check_version(version)
    slots = home / SLOTS
    slots.mkdir(parents=True, exist_ok=True)
    final = slot_dir(home, version)
    _check_bundle_size(bundle, limits)
    bundle_sha256 = _sha256_file(bundle)
    if is_installed(home, version):
        return _reuse(final, version, bundle_sha256)
    for stale in slots.glob(f"{_BUILD_PREFIX}{version}-*"):
        shutil.rmtree(stale, ignore_errors=True)  # an earlier attempt that crashed
    build = slots / f"{_BUILD_PREFIX}{version}-{secrets.token_hex(4)}"
    build.mkdir(mode=0o755)
    try:
        wheels = build / WHEELS_DIR
        wheels.mkdir()
        # verify_bundle's walk, with each wheel copied out as it is hashed: what pip installs
        # is exactly the bytes that matched the manifest.
        copy = functools.partial(_copy, wheels)
        manifest = _read_members(bundle, version, RUNNING_PYTHON, limits, copy)
        venv = build / "venv"
        _create_venv(venv)
        installer(venv / "bin" / "python", wheels, [wheels / w.name for w in manifest.wheels])
        shutil.rmtree(wheels)  # installed; the verified bundle stays in tuf/targets
        _retarget_scripts(venv / "bin", str(venv), str(final / "venv"))
        write_json(
            build / INSTALLED_MARK,
            {
                "version": version,
                "bundle_sha256": bundle_sha256,
                "wheels": [w.name for w in manifest.wheels],
            },
        )
        fsync_directory(build)
        try:
            build.rename(final)
        except OSError:
            if is_installed(home, version):  # another installer finished first
                shutil.rmtree(build, ignore_errors=True)
                return _reuse(final, version, bundle_sha256)
            raise
        fsync_directory(slots)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return final


def _reuse(final: Path, version: str, bundle_sha256: str) -> Path:
    mark = read_json(final / INSTALLED_MARK) or {}
    if mark.get("bundle_sha256") != bundle_sha256:
        raise SlotConflictError(
            f"slot {version} is already installed from a different bundle; refusing to replace it"
        )
    return final


def _retarget_scripts(bin_dir: Path, built: str, final: str) -> None:
    """Console scripts and activate files name their venv by absolute path: give them the
    final one (the slot is built under a temporary name)."""
    old, new = built.encode(), final.encode()
    for path in bin_dir.iterdir():
        if path.is_symlink() or not path.is_file() or path.stat().st_size > 1024 * 1024:
            continue
        data = path.read_bytes()
        if old in data:
            write_atomically(path, data.replace(old, new), path.stat().st_mode & 0o777)


def _copy(wheels: Path, name: str, source: IO[bytes], size: int) -> tuple[str, int]:
    # A path this module builds from a checked name, never one taken from the tar.
    fd = os.open(wheels / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        result = _digest(source, size, out.write)
        out.flush()
        os.fsync(out.fileno())
    return result
