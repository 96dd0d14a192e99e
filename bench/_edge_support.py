"""Helpers of ``bench/edge.py``: devices in the real cloud's database, and Modbus servers.

Run as a script it is a Modbus TCP field device for the benchmark (its own process, so the
device's CPU is not the agent's)::

    python bench/_edge_support.py modbus --registers 1000 [--devices 1] [--latency-ms 0]

It prints the ports it listens on (127.0.0.1, chosen by the OS; one server per device, all on
one event loop) and serves until stdin closes.
``--latency-ms`` delays every answer, as a real device or gateway takes a few milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Runs with the server's environment (its database): one organisation, one edge device serving
# ``assets`` assets of ``points`` points each, and the device's credential.
_MAKE_DEVICE = """
import json, sys
from fieldlink.cli.main import _boot
_boot()
from django.db import transaction
from fieldlink.accounts.models import Organisation, Region
from fieldlink.devices import credentials
from fieldlink.devices.models import Asset, EdgeDevice, MeasuringPoint, Site
prefix, assets, points = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with transaction.atomic():
    org = Organisation.objects.create(name="Bench " + prefix, region=Region.EU_CENTRAL)
    site = Site.objects.create(organisation=org, name="Bench site " + prefix)
    device = EdgeDevice.objects.create(organisation=org, name="bench-" + prefix)
    made = []
    for i in range(assets):
        asset = Asset.objects.create(organisation=org, site=site, tag=f"{prefix}-{i:03d}")
        made.append(asset)
        MeasuringPoint.objects.bulk_create(
            MeasuringPoint(organisation=org, asset=asset, key=f"p{k:03d}", unit="m3/h")
            for k in range(points)
        )
    device.assets.add(*made)
    code = credentials.issue_enrollment_code(device).secret
    token = credentials.enroll(code).secret
print(json.dumps({"device": str(device.pk), "tags": [a.tag for a in made], "token": token}))
"""

# What the cloud holds for a device: stored batches and values, the acknowledged sequence.
_COUNT = """
import json, sys
from fieldlink.cli.main import _boot
_boot()
from django.db.models import Count, Sum
from fieldlink.devices.models import EdgeDevice
from fieldlink.telemetry.models import BatchReceipt
device = EdgeDevice.objects.get(pk=sys.argv[1])
got = BatchReceipt.objects.filter(device=device).aggregate(n=Count("pk"), v=Sum("value_count"))
print(json.dumps({"batches": got["n"], "values": got["v"] or 0, "acked": device.acked_sequence}))
"""


def run_in_cloud(env: dict[str, str], script: str, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@dataclass
class BenchDevice:
    id: str
    tags: list[str]
    points_per_asset: int
    token: str = field(repr=False)

    def points(self) -> list[str]:
        return [f"{tag}/p{k:03d}" for tag in self.tags for k in range(self.points_per_asset)]


def make_device(env: dict[str, str], prefix: str, assets: int, points: int) -> BenchDevice:
    made = run_in_cloud(env, _MAKE_DEVICE, prefix, str(assets), str(points))
    return BenchDevice(made["device"], made["tags"], points, made["token"])


def cloud_counts(env: dict[str, str], device: BenchDevice) -> dict[str, int]:
    counts: dict[str, int] = run_in_cloud(env, _COUNT, device.id)
    return counts


# -- Modbus field devices ------------------------------------------------------------------------


@contextlib.contextmanager
def modbus_devices(
    count: int, registers: int, latency_ms: float = 0.0, *, per_process: int = 1
) -> Iterator[list[int]]:
    """``count`` Modbus TCP devices, ``per_process`` in each process; their ports on 127.0.0.1."""
    processes: list[subprocess.Popen[str]] = []
    try:
        for first in range(0, count, per_process):
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        str(Path(__file__).resolve()),
                        "modbus",
                        "--registers",
                        str(registers),
                        "--latency-ms",
                        str(latency_ms),
                        "--devices",
                        str(min(per_process, count - first)),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        ports = []
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline().split()
            if not line or not all(word.isdigit() for word in line):
                raise RuntimeError(f"the Modbus devices did not start: {line!r}")
            ports.extend(int(word) for word in line)
        yield ports
    finally:
        for process in processes:
            if process.stdin is not None:
                process.stdin.close()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def float_image(registers: int) -> list[int]:
    """A holding table of float32 values 20.00, 20.01, … (big-endian words)."""
    from fieldlink.edge.drivers.modbus import encode_registers  # noqa: PLC0415

    image: list[int] = []
    for i in range(registers // 2):
        image.extend(encode_registers(20.0 + (i % 1000) * 0.01, "float32"))
    return image + [0] * (registers - len(image))


async def _serve_modbus(devices: int, registers: int, latency_ms: float) -> None:
    from fieldlink.edge.plant.modbus import RegisterServer  # noqa: PLC0415

    class SlowServer(RegisterServer):
        async def _on_request(self, *args: Any, **kwargs: Any) -> Any:
            if latency_ms > 0:
                await asyncio.sleep(latency_ms / 1000)
            return await super()._on_request(*args, **kwargs)

    image = float_image(registers)
    servers = [SlowServer("127.0.0.1", 0, holding=image) for _ in range(devices)]
    for server in servers:
        await server.start()
    print(" ".join(str(server.port) for server in servers), flush=True)
    loop = asyncio.get_running_loop()
    # Serve until the benchmark closes our stdin (or goes away).
    await loop.run_in_executor(None, sys.stdin.read)
    for server in servers:
        await server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("role", choices=["modbus"])
    parser.add_argument("--registers", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--devices", type=int, default=1)
    args = parser.parse_args()
    asyncio.run(_serve_modbus(args.devices, args.registers, args.latency_ms))


if __name__ == "__main__":
    main()
