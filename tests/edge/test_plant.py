"""The simulated plant: plausible deterministic physics, served over real Modbus TCP and OPC UA,
and an edge.toml the agent can read without typing."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from fieldlink.edge.config import ConfigError, SimulatorSource, load_config
from fieldlink.edge.drivers import make_driver
from fieldlink.edge.drivers.simulator import SimulatorDriver
from fieldlink.edge.plant.catalog import PLANT
from fieldlink.edge.plant.physics import STEP_S, HealthState, Plant
from fieldlink.edge.plant.run import BEGIN_MARK, PlantServers, write_plant_config
from fieldlink.protocol.edge import Announce, decode_announce
from fieldlink.protocol.telemetry import HEALTH_STATES, QUALITY_BAD, QUALITY_GOOD
from tests.edge.test_modbus import sync
from tests.edge.test_opcua import free_port

RANGES = {
    "FIT-101/volume_flow": (0.0, 50.0),
    "PIT-101/pressure": (0.2, 6.0),
    "LIT-101/level": (0.0, 100.0),
    "TIT-101/temperature": (5.0, 25.0),
    "AIT-101/ph": (6.5, 7.9),
    "AIT-101/temperature": (5.0, 25.0),
}


def test_six_hours_of_plant_stay_physical_and_eventful() -> None:
    plant = Plant(seed=3)
    totals: list[float] = []
    pump: set[bool] = set()
    statuses: list[str] = []
    flows_when_off: list[float] = []
    seen: dict[str, list[float]] = {point: [] for point in RANGES}
    for _ in range(6 * 3600 // 60):
        plant.advance(60)
        pump.add(plant.process.pump_on)
        for sample in plant.samples():
            statuses.append(sample.health.status)
            for key, value in sample.values.items():
                point = f"{sample.tag}/{key}"
                if point in seen:
                    seen[point].append(value)
            if sample.tag == "FIT-101":
                totals.append(sample.values["totalizer"])
                if not plant.process.pump_on and plant.process.flow < 0.5:
                    flows_when_off.append(sample.values["volume_flow"])
    for point, (low, high) in RANGES.items():
        values = seen[point]
        assert low <= min(values), point
        assert max(values) <= high, point
        assert len({round(v, 3) for v in values}) > 50, f"{point} hardly moves"
    assert all(b >= a for a, b in itertools.pairwise(totals))  # only grows
    assert totals[-1] > 100  # ~40 m3/h for a good part of 6 h
    assert pump == {True, False}  # the level switches the pump on and off
    assert flows_when_off
    assert set(flows_when_off) == {0.0}  # low-flow cut-off
    assert set(statuses) <= HEALTH_STATES
    assert len(set(statuses) - {"ok"}) >= 2  # NE 107 episodes happen …
    assert statuses[-5:].count("ok") >= 3  # … and end


def test_same_seed_same_plant_whatever_the_call_pattern() -> None:
    coarse, fine, tiny, other = Plant(7), Plant(7), Plant(7), Plant(8)
    coarse.advance(30.0)
    for _ in range(60):
        fine.advance(STEP_S)
    for _ in range(300):
        tiny.advance(0.1)
    other.advance(30.0)
    assert coarse.samples() == fine.samples() == tiny.samples()
    assert coarse.samples() != other.samples()
    assert coarse.steps == fine.steps == tiny.steps == 61


def test_failure_freezes_values_and_makes_them_bad() -> None:
    plant = Plant(1)
    plant.inject("PIT-101", HealthState("failure", "F882", "Input signal faulty"), 60)
    frozen = next(s for s in plant.samples() if s.tag == "PIT-101")
    plant.advance(30)
    during = next(s for s in plant.samples() if s.tag == "PIT-101")
    assert during.values == frozen.values
    assert (during.quality, during.health.code) == (QUALITY_BAD, "F882")
    plant.advance(60)
    after = next(s for s in plant.samples() if s.tag == "PIT-101")
    assert (after.quality, after.health.status) == (QUALITY_GOOD, "ok")


@sync
async def test_simulator_driver_reads_the_demo_plant_in_process() -> None:
    clock = [100.0]
    driver = SimulatorDriver(
        SimulatorSource(name="demo", seed=1),
        clock=lambda: 1_700_000_000_000,
        monotonic=lambda: clock[0],
    )
    await driver.connect()
    first, health = await driver.read()
    clock[0] += 120
    second, _ = await driver.read()
    assert {r.point for r in first} == set(RANGES) | {"FIT-101/totalizer"}
    assert {h.asset for h in health} == {spec.tag for spec in PLANT}
    before = {r.point: r.value for r in first}
    after = {r.point: r.value for r in second}
    assert after["FIT-101/totalizer"] > before["FIT-101/totalizer"]
    # What discovery announces is what the cloud accepts.
    announce = Announce([info.announce() for info in driver.describe()])
    assert decode_announce(msgspec.json.encode(announce)) == announce


@sync
async def test_plant_servers_deliver_what_the_plant_computes(tmp_path: Path) -> None:
    servers = PlantServers(modbus_port=0, opcua_port=free_port(), seed=5)
    await servers.start()
    try:
        path = tmp_path / "edge.toml"
        write_plant_config(path, modbus_port=servers.modbus.port, opcua_port=servers.opcua.port)
        config = load_config(path)
        servers.plant.inject("LIT-101", HealthState("maintenance_required", "M520"), 600)
        servers.plant.inject("AIT-101", HealthState("function_check", "C485"), 600)
        servers.plant.advance(5)
        await servers.publish()
        expected = {f"{s.tag}/{k}": v for s in servers.plant.samples() for k, v in s.values.items()}
        readings = {}
        health = {}
        for source in config.sources:
            driver = make_driver(source)
            await driver.connect()
            try:
                got, states = await driver.read()
            finally:
                await driver.close()
            readings.update({r.point: r for r in got})
            health.update({h.asset: h.status for h in states})
    finally:
        await servers.stop()
    assert set(readings) == set(expected)
    for point, reading in readings.items():
        # float32 and thousandths in the register map cost a little precision.
        assert reading.value == pytest.approx(expected[point], rel=1e-6, abs=1e-3), point
    assert readings["AIT-101/ph"].quality == 64  # function check: uncertain over OPC UA
    assert readings["TIT-101/temperature"].quality == QUALITY_GOOD
    assert health == {
        "FIT-101": "ok",
        "PIT-101": "ok",
        "LIT-101": "maintenance_required",
        "TIT-101": "ok",
        "AIT-101": "function_check",
    }


def test_write_config_keeps_the_rest_of_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(
        '[cloud]\nurl = "https://cloud.example"\nca = "/etc/ca.pem"\ncredential_file = "/c"\n'
        '\n[[sources]]\nname = "mine"\nkind = "simulator"\n'
        '[[sources.instruments]]\ntag = "X-1"\nmodel = "level"\n'
    )
    path.chmod(0o640)
    write_plant_config(path, modbus_port=1502)
    write_plant_config(path, modbus_port=1503)  # replaces its own block, does not add one
    text = path.read_text()
    assert text.count(BEGIN_MARK) == 1
    assert "port = 1503" in text
    assert "port = 1502" not in text
    config = load_config(path)
    assert config.cloud.url == "https://cloud.example"
    assert [s.name for s in config.sources] == ["mine", "plant-modbus", "plant-opcua"]
    assert path.stat().st_mode & 0o777 == 0o640
    # A file that would clash (a default simulator reads the same tags) is left alone.
    clash = tmp_path / "clash.toml"
    original = (
        '[cloud]\nurl = "https://cloud.example"\nca = "a"\ncredential_file = "c"\n'
        '[[sources]]\nname = "demo"\nkind = "simulator"\n'
    )
    clash.write_text(original)
    with pytest.raises(ConfigError, match="would not be a valid configuration"):
        write_plant_config(clash)
    assert clash.read_text() == original


def test_fieldlink_plant_command_serves_and_writes_config(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    modbus_port, opcua_port = free_port(), free_port()
    program = (
        "import typer\nfrom fieldlink.cli.plant import plant\n"
        "app = typer.Typer()\napp.command()(plant)\napp()\n"
    )
    env = {**os.environ, "PYTHONPATH": "src"}
    process = subprocess.Popen(
        [sys.executable, "-c", program, "--modbus-port", str(modbus_port), "--opcua-port",
         str(opcua_port), "--write-config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30
        lines: list[str] = []
        while time.monotonic() < deadline and not any("Plant running" in x for x in lines):
            lines.append(process.stdout.readline())
        assert any("Plant running" in x for x in lines), lines

        async def read_all() -> dict[str, float]:
            values: dict[str, float] = {}
            for source in load_config(path).sources:
                driver = make_driver(source)
                await driver.connect()
                try:
                    values.update({r.point: r.value for r in (await driver.read())[0]})
                finally:
                    await driver.close()
            return values

        values = asyncio.run(asyncio.wait_for(read_all(), timeout=30))
        assert set(values) == set(RANGES) | {"FIT-101/totalizer"}
        for point, (low, high) in RANGES.items():
            assert low <= values[point] <= high
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
            process.communicate(timeout=5)
    assert process.returncode == 0
