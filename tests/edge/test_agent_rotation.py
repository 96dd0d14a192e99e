"""Credential rotation carried out by the running agent, against the real cloud over TLS.

An admin asks for a rotation; the cloud says so in its next acknowledgement; the agent fetches
its next credential, stores it (0600) and switches — and not one value is lost or doubled on
the way. Afterwards the old credential is refused.
"""

from __future__ import annotations

import asyncio
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from fieldlink.edge.agent import Agent
from fieldlink.edge.config import BufferConfig, CloudConfig, EdgeConfig
from fieldlink.edge.enroll import read_credential
from tests.edge.conftest import (
    _BOOT,
    CloudDevice,
    cloud_counts,
    make_device,
    now_ms,
    readings,
    run_in_cloud,
)
from tests.plugins.log_canary import register_canary
from tests.support.server import RunningServer

pytestmark = [pytest.mark.backend]

_ASK_ROTATION = (
    _BOOT
    + """
from fieldlink.devices.models import EdgeDevice
EdgeDevice.objects.filter(pk=sys.argv[1]).update(rotate_credential=True)
print("{}")
"""
)

_ACCEPTS = (
    _BOOT
    + """
from fieldlink.devices import credentials
from fieldlink.devices.errors import DeviceCredentialInvalidError
try:
    credentials.authenticate(sys.argv[1])
    print("true")
except DeviceCredentialInvalidError:
    print("false")
"""
)


def _agent(server: RunningServer, device: CloudDevice, tmp_path: Path) -> Agent:
    config = EdgeConfig(
        cloud=CloudConfig(
            url=server.base_url,
            ca=str(server.ca_cert),
            credential_file=str(device.credential_file),
        ),
        buffer=BufferConfig(path=str(tmp_path / "buffer.sqlite")),
        sources=[],  # values are appended by the test: it knows exactly what was produced
    )
    return Agent(config, software_version="test", base_dir=tmp_path)


async def _until(predicate: Callable[[], bool], seconds: float) -> None:
    # Polling on purpose: the conditions are a file's content and the buffer's depth, which
    # nothing signals.
    async with asyncio.timeout(seconds):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.2)


def test_rotation_asked_by_the_cloud_is_carried_out_without_losing_a_value(
    server: RunningServer, tmp_path: Path
) -> None:
    device = make_device(server, tmp_path)
    old = device.token
    run_in_cloud(server, _ASK_ROTATION, device.id)
    start = now_ms() - 60_000

    async def scenario() -> None:
        agent = _agent(server, device, tmp_path)
        running = asyncio.create_task(agent.run())
        try:
            for block in range(6):
                agent.buffer.append(
                    readings(device.point(), 50, start_ms=start + block * 50, first=block * 50)
                )
                await asyncio.sleep(0.3)
            await _until(lambda: read_credential(device.credential_file) != old, 20)
            await _until(lambda: agent.buffer.stats().depth == 0, 20)
        finally:
            agent.stop()
            await running

    asyncio.run(scenario())
    new = read_credential(device.credential_file)
    register_canary(new)
    assert new != old
    assert stat.S_IMODE(device.credential_file.stat().st_mode) == 0o600
    counts = cloud_counts(server, device)
    assert counts.samples == 300  # every value once
    assert counts.values == 300  # and in one batch each
    assert [r[0] for r in counts.receipts] == list(range(1, counts.acked + 1))
    assert run_in_cloud(server, _ACCEPTS, old) is False
    assert run_in_cloud(server, _ACCEPTS, new) is True
