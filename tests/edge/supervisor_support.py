"""Helpers for the slot and supervisor tests: real wheels of a fake ``fieldlink`` agent, bundles
made of them (honest or hostile), and the supervisor as a real ``python -m fieldlink`` process.

The fake agent is a real package installed by the real pip into a real venv. It behaves as its
version says (``BEHAVIOURS``): "healthy" writes healthy.json like the real agent after its first
ack, then waits for ``<home>/request-exit-75`` (the test's stand-in for "an update was
installed") and exits 75; "crash" exits 1 at once; "silent" never becomes healthy. Every start
is appended to ``<home>/starts.log``. It ends itself after 120 s so nothing outlives a test.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil

from fieldlink.edge import slots

T = TypeVar("T")

BEHAVIOURS = {"1.0.0": "healthy", "2.0.0": "healthy", "3.0.0": "crash", "4.0.0": "silent"}

_AGENT = """
import json, os, signal, sys, time
from pathlib import Path

BEHAVIOUR = {behaviour!r}
VERSION = {version!r}


def main():
    home = Path(os.environ["FIELDLINK_EDGE_HOME"])
    with open(home / "starts.log", "a") as log:
        log.write(f"{{VERSION}} {{os.getpid()}} {{' '.join(sys.argv[1:])}}\\n")
    if BEHAVIOUR == "crash":
        sys.exit(1)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if BEHAVIOUR == "healthy":
        tmp = home / f".healthy.json.{{os.getpid()}}.tmp"
        tmp.write_text(json.dumps({{"version": VERSION, "pid": os.getpid()}}))
        os.replace(tmp, home / "healthy.json")
    request = home / "request-exit-75"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if BEHAVIOUR == "healthy" and request.exists():
            request.unlink()
            sys.exit(75)
        time.sleep(0.02)
    sys.exit(3)
"""


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def build_wheel(directory: Path, version: str, behaviour: str) -> Path:
    """A minimal pure-Python wheel of a package named ``fieldlink`` (a zip with dist-info)."""
    info = f"fieldlink-{version}.dist-info"
    files = {
        "fieldlink/__init__.py": f"__version__ = {version!r}\n".encode(),
        "fieldlink/agent.py": _AGENT.format(behaviour=behaviour, version=version).encode(),
        "fieldlink/__main__.py": b"from fieldlink.agent import main\n\nmain()\n",
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: fieldlink\nVersion: {version}\n"
        ).encode(),
        f"{info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: fieldlink-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
        f"{info}/entry_points.txt": b"[console_scripts]\nfieldlink = fieldlink.agent:main\n",
    }
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    record += f"{info}/RECORD,,\n"
    path = directory / f"fieldlink-{version}-py3-none-any.whl"
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr(f"{info}/RECORD", record)
    return path


def manifest_for(version: str, wheels: list[Path]) -> dict[str, Any]:
    return {
        "format": 1,
        "version": version,
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "wheels": [
            {
                "name": w.name,
                "sha256": hashlib.sha256(w.read_bytes()).hexdigest(),
                "size": w.stat().st_size,
            }
            for w in wheels
        ],
        "entry": "fieldlink",
    }


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    member.mode = 0o644
    tar.addfile(member, io.BytesIO(data))


def build_bundle(
    path: Path,
    version: str,
    wheels: list[Path],
    *,
    manifest: dict[str, Any] | bytes | None = None,
    extra: Callable[[tarfile.TarFile], None] | None = None,
    with_manifest: bool = True,
) -> Path:
    """``fieldlink-agent-<version>.tar``; ``manifest``/``extra`` let a test make it hostile."""
    doc = manifest_for(version, wheels) if manifest is None else manifest
    raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        if extra is not None:
            extra(tar)
        if with_manifest:
            add_file(tar, "manifest.json", raw)
        for wheel in wheels:
            add_file(tar, f"wheels/{wheel.name}", wheel.read_bytes())
    return path


# -- installed slots, shared by the tests of one session ------------------------------------


def install_template(directory: Path) -> Path:
    """A home with one real slot per version in BEHAVIOURS, installed by the real pip."""
    home = directory / "template-home"
    for version, behaviour in BEHAVIOURS.items():
        wheel = build_wheel(directory / "wheels" / version, version, behaviour)
        bundle = build_bundle(directory / f"fieldlink-agent-{version}.tar", version, [wheel])
        slots.install_bundle(bundle, home, version)
    return home


def copy_slots(template: Path, home: Path, versions: list[str]) -> None:
    (home / "slots").mkdir(parents=True, exist_ok=True)
    for version in versions:
        shutil.copytree(template / "slots" / version, home / "slots" / version, symlinks=True)


# -- waiting -------------------------------------------------------------------------------


def wait_for(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.03)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def starts(home: Path) -> list[tuple[str, int]]:
    try:
        lines = (home / "starts.log").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [(line.split()[0], int(line.split()[1])) for line in lines]


# -- the supervisor process ----------------------------------------------------------------------


@dataclass
class SupervisorProcess:
    process: subprocess.Popen[bytes]
    home: Path
    log: Path

    def agents(self) -> list[psutil.Process]:
        try:
            return [
                c
                for c in psutil.Process(self.process.pid).children()
                if c.status() != psutil.STATUS_ZOMBIE
            ]
        except psutil.NoSuchProcess:
            return []

    def running_agent(self, version: str) -> int | None:
        """The pid of the supervisor's agent child when it is ``version`` and healthy."""
        healthy = slots.read_healthy(self.home)
        if healthy is None or healthy.version != version:
            return None
        if healthy.pid not in [a.pid for a in self.agents()]:
            return None
        return healthy.pid

    def stop(self, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_supervisor(
    home: Path, *, health_timeout: float = 2.0, crash_at: str = "", name: str = "supervisor"
) -> SupervisorProcess:
    config = home / "edge.toml"
    if not config.exists():
        config.write_text("# the fake agent reads nothing\n")
    env = {k: v for k, v in os.environ.items() if k != "FIELDLINK_SUPERVISOR_CRASH_AT"}
    if crash_at:
        env["FIELDLINK_SUPERVISOR_CRASH_AT"] = crash_at
    log = home.parent / f"{name}-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fieldlink",
                "edge",
                "supervise",
                "--config",
                str(config),
                "--home",
                str(home),
                "--health-timeout",
                str(health_timeout),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return SupervisorProcess(process, home, log)


@contextmanager
def supervisor(home: Path, **kwargs: Any) -> Iterator[SupervisorProcess]:
    running = start_supervisor(home, **kwargs)
    try:
        yield running
    finally:
        children = running.agents()
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait(10)
        for child in children:
            if alive(child.pid):
                child.kill()
