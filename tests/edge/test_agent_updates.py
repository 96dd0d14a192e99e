"""The running agent with a real TUF repository over HTTPS: configuration and software arrive
signed, are applied or staged only when they verify, and every outcome is reported.

The cloud here is ``tuf_support.TufServer``: it serves the repository (signed by
``updates.tuf_repo``) and answers the agent's telemetry, announce and report posts with what
a test wants the cloud to say. The agent is the real one, in process, with the simulator as its
field; the installer is a stand-in (``slots.install_bundle`` builds a venv with pip, which is
its own module's business and tests), everything else is what runs on a device.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fieldlink.edge import slots
from fieldlink.edge.agent import APPLIED_CONFIG, Agent
from fieldlink.edge.buffer import Buffer
from fieldlink.edge.config import (
    BufferConfig,
    CloudConfig,
    EdgeConfig,
    SimModel,
    SimulatedInstrument,
    SimulatorSource,
)
from fieldlink.edge.enroll import write_device_identity
from fieldlink.edge.uplink import TELEMETRY_PATH
from fieldlink.protocol.edge import ANNOUNCE_PATH
from fieldlink.protocol.updates import REPORT_PATH
from fieldlink.updates.tuf_repo import Repository
from tests.edge.tuf_support import (
    Device,
    TufServer,
    bundle_bytes,
    make_device,
    make_keys,
    make_repo,
)

OTHER_DEVICE = "0b7f2a44-6a43-4f0c-9d7e-3d7a9b6f0c11"
DEADLINE_S = 30.0


@dataclass
class FakeCloud:
    """What the cloud says in every answer, and what it was told."""

    desired_config: int = 0
    update_available: str | None = None
    reports: list[dict[str, Any]] = field(default_factory=list)
    announced: list[list[str]] = field(default_factory=list)
    points: list[str] = field(default_factory=list)

    def post(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        signals = {
            "desired_config_version": self.desired_config,
            "update_available": self.update_available,
        }
        if path == TELEMETRY_PATH:
            batch = json.loads(gzip.decompress(body))
            self.points.extend(value[0] for value in batch["values"])
            ack = {
                "acked_sequence": batch["sequence"],
                "accepted": True,
                "duplicate": False,
                "rotate_credential": False,
                **signals,
            }
            return 200, json.dumps(ack).encode()
        if path == ANNOUNCE_PATH:
            self.announced.append([i["tag"] for i in json.loads(body)["instruments"]])
            return 200, b'{"created_assets": 0, "created_points": 0, "updated_assets": 0}'
        if path == REPORT_PATH:
            self.reports.append(json.loads(body))
            return 200, json.dumps(signals).encode()
        return 404, b"{}"

    def last_report(self) -> dict[str, Any]:
        return self.reports[-1] if self.reports else {}


@dataclass
class Setup:
    device: Device
    repo: Repository
    server: TufServer
    cloud: FakeCloud
    tmp_path: Path

    def publish(self) -> None:
        self.server.publish(self.repo)

    def config(self) -> EdgeConfig:
        return EdgeConfig(
            cloud=CloudConfig(
                url=self.server.url,
                ca=str(self.device.ca),
                credential_file=str(self.device.credential),
            ),
            buffer=BufferConfig(path=str(self.tmp_path / "buffer.sqlite")),
            sources=[simulator("plant-a", "FIT-1", "flow")],
        )

    def agent(self, **kwargs: Any) -> Agent:
        options: dict[str, Any] = {"software_version": "1.2.0", "supervised": True}
        options.update(kwargs)
        return Agent(self.config(), base_dir=self.tmp_path, home=self.device.home, **options)


def simulator(name: str, tag: str, model: SimModel) -> SimulatorSource:
    return SimulatorSource(
        name=name, poll_ms=100, instruments=[SimulatedInstrument(tag=tag, model=model)]
    )


def config_target(device_id: str, version: int, sources: list[dict[str, Any]]) -> bytes:
    doc = {
        "format": 1,
        "device_id": device_id,
        "version": version,
        "log_level": "info",
        "sources": sources,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


PLANT_B = [
    {"kind": "simulator", "name": "plant-b", "poll_ms": 100, "instruments": [
        {"tag": "PIT-7", "model": "pressure"}
    ]}
]  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    device, pki = make_device(tmp_path)
    write_device_identity(device.home, device.device_id, "edge-1")
    repo = make_repo(make_keys())
    repo.add_software("1.3.0", bundle_bytes("1.3.0"))
    device.pin_root(repo)
    cloud = FakeCloud()
    with TufServer(tmp_path / "served", pki, post=cloud.post) as server:
        built = Setup(device, repo, server, cloud, tmp_path)
        built.publish()
        yield built


async def run_until(agent: Agent, done: Callable[[], bool], seconds: float = DEADLINE_S) -> None:
    """Run the agent until ``done()`` (or it stops by itself), then stop it; bounded."""
    task = asyncio.create_task(agent.run())
    try:
        async with asyncio.timeout(seconds):
            # Polling on purpose: the conditions are what a stub server was told.
            while not done() and not task.done():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        agent.stop()
        await asyncio.wait_for(task, 20)


def fake_installer(calls: list[bytes]) -> Callable[[Path, Path, str], Path]:
    """Records the verified bundle and lays out a slot ``slots.write_staged`` accepts."""

    def install(bundle: Path, home: Path, version: str) -> Path:
        calls.append(bundle.read_bytes())
        slot = slots.slot_dir(home, version)
        python = slot / "venv" / "bin" / "python"
        python.parent.mkdir(parents=True)
        python.write_text("")
        (slot / "installed.json").write_text(json.dumps({"version": version}))
        return slot

    return install


# -- configuration ---------------------------------------------------------------------------


def test_signed_configuration_replaces_the_sources_keeps_the_buffer_and_is_reported(
    setup: Setup,
) -> None:
    data = config_target(setup.device.device_id, 1, PLANT_B)
    setup.repo.set_config(setup.device.device_id, data)
    setup.publish()
    agent = setup.agent()
    buffer_file = setup.tmp_path / "buffer.sqlite"
    inode = buffer_file.stat().st_ino
    cloud = setup.cloud

    async def scenario() -> None:
        # First the edge.toml source runs and is sent; then the cloud asks for version 1.
        task = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(DEADLINE_S):
                while not any(p.startswith("FIT-1/") for p in cloud.points):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                cloud.desired_config = 1
                while not any(p.startswith("PIT-7/") for p in cloud.points):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
                while cloud.last_report().get("config_version") != 1:  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
        finally:
            agent.stop()
            await asyncio.wait_for(task, 20)

    asyncio.run(scenario())

    assert set(agent.poller.states()) == {"plant-b"}
    assert ["PIT-7"] in cloud.announced  # the new instruments were announced before polling
    report = cloud.last_report()
    assert report["config_hash"] == hashlib.sha256(data).hexdigest()
    assert report["config_error"] == ""
    assert (setup.device.home / APPLIED_CONFIG).read_bytes() == data
    assert (setup.device.home / APPLIED_CONFIG).stat().st_mode & 0o777 == 0o600
    # The buffer is the same file and lost nothing across the switch.
    assert buffer_file.stat().st_ino == inode
    with Buffer(buffer_file) as buffer:
        assert buffer.stats().dropped_total == 0
    healthy = slots.read_healthy(setup.device.home)
    assert healthy is not None
    assert healthy.version == "1.2.0"


def test_the_applied_configuration_is_used_at_the_next_start_without_network_or_tuf(
    setup: Setup,
) -> None:
    data = config_target(setup.device.device_id, 4, PLANT_B)
    (setup.device.home / "config").mkdir()
    (setup.device.home / APPLIED_CONFIG).write_bytes(data)
    probe = """
import sys
from pathlib import Path
from fieldlink.edge.agent import Agent
from fieldlink.edge.config import load_config
config = load_config(Path(sys.argv[1]))
agent = Agent(config, base_dir=Path(sys.argv[2]), home=Path(sys.argv[3]), software_version="1.2.0")
print(sorted(agent.poller.states()), agent.reported.config_version)
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tuf", "cryptography")) or "none")
agent.buffer.close()
"""
    toml = setup.tmp_path / "edge.toml"
    toml.write_text(
        f'[cloud]\nurl = "https://127.0.0.1:9"\nca = "{setup.device.ca}"\n'
        f'credential_file = "{setup.device.credential}"\n'
        f'[buffer]\npath = "{setup.tmp_path / "b2.sqlite"}"\n'
        '[[sources]]\nname = "plant-a"\nkind = "simulator"\n'
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(toml), str(setup.tmp_path), str(setup.device.home)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    states, loaded = done.stdout.strip().splitlines()
    assert states == "['plant-b'] 4"
    assert loaded == "none"


@pytest.mark.parametrize(
    ("target", "error"),
    [
        (
            lambda device_id: config_target(device_id, 1, PLANT_B + PLANT_B),
            "sources[1].name",
        ),
        (lambda device_id: config_target(OTHER_DEVICE, 1, PLANT_B), "device_id"),
        (
            lambda device_id: config_target(
                device_id, 1, [{"kind": "simulator", "name": "x", "poll_ms": 5}]
            ),
            "sources[0].poll_ms",
        ),
    ],
    ids=["duplicate-source", "other-device", "out-of-range"],
)
def test_a_configuration_that_fails_validation_is_reported_and_not_applied(
    setup: Setup, target: Callable[[str], bytes], error: str
) -> None:
    setup.repo.set_config(setup.device.device_id, target(setup.device.device_id))
    setup.publish()
    setup.cloud.desired_config = 1
    agent = setup.agent()
    asyncio.run(run_until(agent, lambda: bool(setup.cloud.last_report().get("config_error"))))

    report = setup.cloud.last_report()
    assert error in report["config_error"]
    assert (report["config_version"], report["config_hash"]) == (0, "")
    assert set(agent.poller.states()) == {"plant-a"}  # the old configuration keeps running
    assert not (setup.device.home / APPLIED_CONFIG).exists()


def test_a_tampered_configuration_is_reported_as_a_failed_check_and_not_applied(
    setup: Setup,
) -> None:
    data = config_target(setup.device.device_id, 1, PLANT_B)
    setup.repo.set_config(setup.device.device_id, data)
    setup.publish()
    served = next(n for n in setup.repo.target_files() if n.startswith("config/"))
    setup.server.misbehave.replace[served] = data.replace(b"PIT-7", b"PIT-8")
    setup.cloud.desired_config = 1
    agent = setup.agent()
    asyncio.run(run_until(agent, lambda: setup.cloud.last_report().get("check_ok") is False))

    report = setup.cloud.last_report()
    assert report["check_error_code"] == "bad_target"
    assert report["config_error"].startswith("bad_target")
    assert set(agent.poller.states()) == {"plant-a"}


# -- software ------------------------------------------------------------------------------------


def test_a_signed_update_is_installed_staged_reported_and_the_agent_exits_75(
    setup: Setup,
) -> None:
    installed: list[bytes] = []
    setup.cloud.update_available = "1.3.0"
    agent = setup.agent(installer=fake_installer(installed))
    asyncio.run(run_until(agent, lambda: False))

    assert agent.exit_code == slots.EXIT_RESTART_FOR_UPDATE == 75
    assert installed == [bundle_bytes("1.3.0")]  # exactly the signed bytes
    assert slots.read_staged(setup.device.home) == "1.3.0"
    states = [r["update_state"] for r in setup.cloud.reports if r["update_version"] == "1.3.0"]
    assert states[-1] == "restarting"
    assert setup.cloud.last_report()["check_ok"] is True
    # The downloaded bundle does not stay behind once installed.
    assert list((setup.device.home / "tuf" / "targets").iterdir()) == []


def test_a_downgrade_offer_is_refused_reported_and_the_agent_keeps_running(setup: Setup) -> None:
    setup.repo.add_software("1.1.0", bundle_bytes("1.1.0"))
    setup.publish()
    installed: list[bytes] = []
    setup.cloud.update_available = "1.1.0"
    agent = setup.agent(installer=fake_installer(installed))
    asyncio.run(
        run_until(agent, lambda: setup.cloud.last_report().get("update_state") == "refused")
    )

    report = setup.cloud.last_report()
    assert (report["update_version"], report["check_error_code"]) == ("1.1.0", "downgrade_refused")
    assert agent.exit_code == 0
    assert installed == []
    assert slots.read_staged(setup.device.home) is None


def test_an_update_whose_bundle_the_installer_refuses_is_reported_failed(setup: Setup) -> None:
    def refuse(bundle: Path, home: Path, version: str) -> Path:
        raise slots.BundleHashMismatchError("wheel x does not match its manifest sha256/size")

    setup.cloud.update_available = "1.3.0"
    agent = setup.agent(installer=refuse)
    asyncio.run(run_until(agent, lambda: setup.cloud.last_report().get("update_state") == "failed"))
    assert "does not match its manifest" in setup.cloud.last_report()["update_error"]
    assert agent.exit_code == 0
    assert slots.read_staged(setup.device.home) is None


def test_an_agent_not_run_by_the_supervisor_does_not_install(setup: Setup) -> None:
    setup.cloud.update_available = "1.3.0"
    installed: list[bytes] = []
    agent = setup.agent(supervised=False, installer=fake_installer(installed))
    asyncio.run(
        run_until(agent, lambda: setup.cloud.last_report().get("update_state") == "refused")
    )
    assert "supervisor" in setup.cloud.last_report()["update_error"]
    assert installed == []
    assert not any("/tuf/targets/" in g for g in setup.server.gets)


def test_a_version_the_supervisor_rolled_back_is_reported_and_not_staged_again(
    setup: Setup,
) -> None:
    slots.write_last_update(setup.device.home, "1.3.0", "rolled_back", "no healthy start")
    setup.cloud.update_available = "1.3.0"  # the cloud has not caught up yet
    installed: list[bytes] = []
    agent = setup.agent(installer=fake_installer(installed))
    asyncio.run(run_until(agent, lambda: len(setup.cloud.points) > 0 and bool(setup.cloud.reports)))

    first = setup.cloud.reports[0]
    assert (first["update_version"], first["update_state"]) == ("1.3.0", "rolled_back")
    assert first["update_error"] == "no healthy start"
    # The offer arrived with every acknowledgement and is still declined.
    assert agent.update_wanted() is False
    assert installed == []
    assert agent.exit_code == 0
    assert not any("/tuf/" in g for g in setup.server.gets)


def test_the_start_report_says_the_update_is_running(setup: Setup) -> None:
    slots.write_last_update(setup.device.home, "1.2.0", "updated")
    agent = setup.agent()
    asyncio.run(run_until(agent, lambda: bool(setup.cloud.reports)))
    first = setup.cloud.reports[0]
    assert (first["software_version"], first["update_state"]) == ("1.2.0", "running")


# -- the periodic check --------------------------------------------------------------------------


def test_the_periodic_check_reports_expired_metadata_without_any_signal(tmp_path: Path) -> None:
    device, pki = make_device(tmp_path)
    write_device_identity(device.home, device.device_id, "edge-1")
    repo = make_repo(make_keys(), now=datetime.now(UTC) - timedelta(days=2))
    device.pin_root(repo)
    cloud = FakeCloud()
    with TufServer(tmp_path / "served", pki, post=cloud.post) as server:
        server.publish(repo)
        setup = Setup(device, repo, server, cloud, tmp_path)
        agent = setup.agent(check_interval_s=0.2)
        asyncio.run(run_until(agent, lambda: cloud.last_report().get("check_ok") is False))
    report = cloud.last_report()
    assert report["check_error_code"] == "expired_metadata"
    assert report["checked_at_ms"] > 0
    assert agent.exit_code == 0
