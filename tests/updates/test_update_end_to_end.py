"""End to end: a release is signed offline, published, rolled out, and a real agent updates itself.

Every part is the real one, each in its own process: ``fieldlink serve`` over TLS with its
online keys; ``fieldlink release init | add | sign | publish`` in a workspace with encrypted
offline keys; ``fieldlink edge enroll`` and ``pin-root``; ``fieldlink edge supervise`` running
``fieldlink edge run`` with a simulated source. The releases are wheels of this very source tree
built with another version number (0.1.1, and a 0.1.2 whose agent dies at start), installed by
the supervisor's real installer (a venv per slot, offline pip). Only the dependency wheels are
stood in for: a small wheel whose ``.pth`` points the slot at this test environment's
site-packages (a real bundle carries the wheels of requirements/edge.txt; the offline install
of real wheels is tests/edge/test_slots.py's). So what is checked here is the whole chain:
ack → TUF download and verification → install → switch → health → report → rollout state, and
the failing release's rollback and the rollout halting at its failure threshold.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from fieldlink.edge import slots
from fieldlink.updates.workspace import PASSPHRASE_ENV
from tests.edge.conftest import run_in_cloud
from tests.plugins.log_canary import register_canary
from tests.support.server import RunningServer, run_server

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

_BOOT = """
import json, sys
from datetime import timedelta
from fieldlink.cli.main import _boot
_boot()
from django.db import transaction
from django.utils import timezone
"""

# An organisation, its owner and an edge device with a one-time enrollment code.
_DEVICE = (
    _BOOT
    + """
from fieldlink.accounts.models import Organisation, Region, User, Membership, Role
from fieldlink.devices import credentials
from fieldlink.devices.models import EdgeDevice
with transaction.atomic():
    org = Organisation.objects.create(name="Update e2e", region=Region.EU_CENTRAL)
    owner = User.objects.create(email="owner@update-e2e.example.com")
    Membership.objects.create(organisation=org, user=owner, role=Role.OWNER)
    device = EdgeDevice.objects.create(organisation=org, name="edge-e2e")
    code = credentials.issue_enrollment_code(device).secret
print(json.dumps({"org": str(org.pk), "owner": str(owner.pk), "device": str(device.pk),
                  "code": code}))
"""
)

_ROLLOUT = (
    _BOOT
    + """
from fieldlink.accounts.access import Principal, resolve
from fieldlink.accounts.models import User
from fieldlink.updates import services
org, owner, device, version = sys.argv[1:5]
with transaction.atomic():
    scope = resolve(Principal(User.objects.get(pk=owner), "session"), org)
    rollout = services.create_rollout(
        scope, version=version, device_ids=[device], waves=[100], failure_threshold_pct=0,
        silent_timeout=timedelta(minutes=10),
    )
print(json.dumps({"rollout": str(rollout.pk)}))
"""
)

# The cloud's view: the device's report and its rollout membership (after one advance step,
# which the worker's periodic task would run within a minute).
_STATE = (
    _BOOT
    + """
from fieldlink.devices.models import EdgeDevice
from fieldlink.telemetry.models import BatchReceipt
from fieldlink.updates import services
from fieldlink.updates.models import Rollout, RolloutDevice
device_id, rollout_id = sys.argv[1:3]
with transaction.atomic():
    services.advance_rollout(rollout_id, timezone.now())
device = EdgeDevice.objects.get(pk=device_id)
member = RolloutDevice.objects.get(rollout_id=rollout_id, device_id=device_id)
sequences = sorted(BatchReceipt.objects.filter(device=device).values_list("sequence", flat=True))
print(json.dumps({
    "software_version": device.software_version,
    "update_state": device.update_state,
    "update_version": device.update_version,
    "desired": device.desired_software_version,
    "check_ok": device.update_check_ok,
    "member": member.state,
    "reason": member.reason,
    "rollout": Rollout.objects.get(pk=rollout_id).state,
    "acked": device.acked_sequence,
    "receipts": len(sequences),
    "contiguous": sequences == list(range(1, len(sequences) + 1)),
}))
"""
)


def wait_for(probe: Callable[[], T | None], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got is not None:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def fieldlink(
    env: dict[str, str], *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "fieldlink", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if check:
        assert done.returncode == 0, f"fieldlink {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def agent_wheel(directory: Path, version: str, *, broken: bool = False) -> Path:
    """A wheel of this source tree with ``version`` (and, if broken, an agent that cannot start)."""
    tree = directory / f"tree-{version}"
    shutil.copytree(
        ROOT / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    shutil.copy(ROOT / "README.md", tree / "README.md")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'version = "0.1.0"' in pyproject
    (tree / "pyproject.toml").write_text(
        pyproject.replace('version = "0.1.0"', f'version = "{version}"')
    )
    init = tree / "src" / "fieldlink" / "__init__.py"
    init.write_text(init.read_text().replace('__version__ = "0.1.0"', f'__version__ = "{version}"'))
    if broken:
        agent = tree / "src" / "fieldlink" / "edge" / "agent.py"
        agent.write_text(agent.read_text() + '\nraise SystemExit("this release is broken")\n')
    out = directory / f"wheels-{version}"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--quiet",
            "-w",
            str(out),
            str(tree),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    (wheel,) = out.glob("fieldlink-*.whl")
    dependencies_stand_in(out)
    return wheel


def dependencies_stand_in(directory: Path) -> Path:
    """A wheel holding one ``.pth``: the slot finds its dependencies in this environment."""
    name, version = "fieldlink_e2e_dependencies", "1.0"
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.pth": sysconfig.get_paths()["purelib"] + "\n",
        f"{dist_info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist_info}/RECORD"] = "\n".join([*record, f"{dist_info}/RECORD,,"]) + "\n"
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def enroll_before_any_repository(
    cloud: RunningServer, env: dict[str, str], home: Path
) -> dict[str, str]:
    """A device enrolled while the cloud has no repository: it works, its trust anchor waits."""
    home.mkdir()
    made = run_in_cloud(cloud, _DEVICE)
    register_canary(made["code"])
    config = home / "edge.toml"
    config.write_text(
        "[cloud]\n"
        f'url = "{cloud.base_url}"\nca = "{cloud.ca_cert}"\ncredential_file = "credential"\n'
        '[buffer]\npath = "buffer.sqlite"\n'
        '[[sources]]\nname = "plant"\nkind = "simulator"\nseed = 7\npoll_ms = 500\n'
    )

    enrolled = fieldlink(
        env,
        "edge",
        "enroll",
        "--url",
        cloud.base_url,
        "--code",
        made["code"],
        "--ca",
        str(cloud.ca_cert),
        "--credential-file",
        str(home / "credential"),
        "--config",
        str(config),
    )
    assert "pin-root" in enrolled.stderr
    assert not (home / "tuf" / "metadata" / "root.json").exists()

    return made


def publish_two_releases(env: dict[str, str], tmp_path: Path) -> None:
    """The release engineer: online keys from the cloud, offline keys here, 0.1.1 and 0.1.2."""
    keys = fieldlink(env, "updates", "keys", "--create").stdout
    (tmp_path / "online.json").write_text(keys)
    workspace = tmp_path / "workspace"
    fieldlink(
        env,
        "release",
        "init",
        "--workspace",
        str(workspace),
        "--online-keys",
        str(tmp_path / "online.json"),
    )
    for version, broken in (("0.1.1", False), ("0.1.2", True)):
        wheel = agent_wheel(tmp_path, version, broken=broken)
        fieldlink(
            env,
            "release",
            "add",
            "--workspace",
            str(workspace),
            "--version",
            version,
            "--wheels",
            str(wheel.parent),
        )
        fieldlink(env, "release", "sign", "--workspace", str(workspace))
    fieldlink(env, "release", "publish", "--workspace", str(workspace), "--actor", "e2e")


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # No worker: the test advances the rollout itself, at the moments it checks.
    with run_server(
        tmp_path_factory.mktemp("update-cloud"), {"FIELDLINK_RUN_WORKER": "false"}
    ) as server:
        yield server


def test_release_rolls_out_to_a_real_agent_and_a_failing_release_is_rolled_back(  # noqa: PLR0915 - one story, in order
    cloud: RunningServer, tmp_path: Path
) -> None:
    passphrase = register_canary("e2e release passphrase " + os.urandom(8).hex())
    env = {**cloud.env, PASSPHRASE_ENV: passphrase}
    home = tmp_path / "edge"
    made = enroll_before_any_repository(cloud, env, home)
    config = home / "edge.toml"
    publish_two_releases(env, tmp_path)

    pinned = fieldlink(
        env,
        "edge",
        "pin-root",
        "--url",
        cloud.base_url,
        "--ca",
        str(cloud.ca_cert),
        "--credential-file",
        str(home / "credential"),
        "--config",
        str(config),
    )
    assert "pinned" in pinned.stdout
    assert (
        json.loads((home / "tuf" / "metadata" / "root.json").read_bytes())["signed"]["version"] == 1
    )

    log = (tmp_path / "supervisor.log").open("wb")
    supervisor = subprocess.Popen(
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
            "60",
        ],
        env=cloud.env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def state(rollout: str) -> dict[str, Any]:
            got: dict[str, Any] = run_in_cloud(cloud, _STATE, made["device"], rollout)
            return got

        # The running agent (the installation itself, 0.1.0) reports in before the rollout.
        first = run_in_cloud(cloud, _ROLLOUT, made["org"], made["owner"], made["device"], "0.1.1")
        updated = wait_for(
            lambda: ((s := state(first["rollout"]))["member"] == "succeeded" and s) or None,
            240,
            "the agent to run 0.1.1",
        )
        assert updated["software_version"] == "0.1.1"
        assert updated["rollout"] == "completed"
        healthy = slots.read_healthy(home)
        assert healthy is not None
        assert healthy.version == "0.1.1"
        assert (home / "current").resolve() == (home / "slots" / "0.1.1").resolve()
        assert (home / "slots" / "0.1.1" / "venv" / "bin" / "python").exists()
        last = slots.read_last_update(home)
        assert last is not None
        assert (last.version, last.outcome) == ("0.1.1", "updated")

        # A release whose agent dies at start: installed, switched to, rolled back, reported;
        # the rollout (failure threshold 0 %) halts.
        second = run_in_cloud(cloud, _ROLLOUT, made["org"], made["owner"], made["device"], "0.1.2")
        failed = wait_for(
            lambda: ((s := state(second["rollout"]))["rollout"] == "halted" and s) or None,
            240,
            "the 0.1.2 rollout to halt",
        )
        assert failed["member"] == "failed"
        assert failed["software_version"] == "0.1.1"
        assert failed["update_state"] == "rolled_back"
        assert failed["update_version"] == "0.1.2"
        assert failed["desired"] == ""  # the offer is withdrawn: no install loop
        last = slots.read_last_update(home)
        assert last is not None
        assert (last.version, last.outcome) == ("0.1.2", "rolled_back")
        healthy = wait_for(
            lambda: (
                ((h := slots.read_healthy(home)) is not None and h.version == "0.1.1" and h) or None
            ),
            60,
            "0.1.1 to be healthy again",
        )
        assert (home / "current").resolve() == (home / "slots" / "0.1.1").resolve()

        # Telemetry went on across both switches, exactly once: the buffer is not the slot's.
        before = failed["acked"]
        after = wait_for(
            lambda: ((s := state(second["rollout"]))["acked"] > before and s) or None,
            60,
            "telemetry from the rolled-back agent",
        )
        assert after["contiguous"]
        assert after["receipts"] == after["acked"]
        assert (home / "buffer.sqlite").exists()
    finally:
        supervisor.terminate()
        try:
            supervisor.wait(timeout=30)
        except subprocess.TimeoutExpired:
            supervisor.kill()
            supervisor.wait(timeout=10)
        log.close()
