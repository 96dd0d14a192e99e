"""The poller: intervals with jitter, outages logged once, no crash, no flood, clean stop."""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
from collections.abc import Callable

import pytest

from fieldlink.edge.config import (
    ModbusInstrument,
    ModbusPoint,
    ModbusSource,
    SimulatorSource,
    Source,
)
from fieldlink.edge.drivers import Driver, make_driver
from fieldlink.edge.drivers.base import DriverError
from fieldlink.edge.model import HealthReading, InstrumentInfo, PointInfo, Reading
from fieldlink.edge.plant.modbus import RegisterServer
from fieldlink.edge.poller import Poller, SourceState
from fieldlink.protocol.telemetry import QUALITY_BAD, QUALITY_GOOD
from tests.edge.test_modbus import sync

Delivered = list[tuple[list[Reading], list[HealthReading]]]


def events(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        str(r.msg["event"])
        for r in caplog.records
        if isinstance(r.msg, dict) and r.name == "fieldlink.edge.poller"
    ]


async def until(condition: Callable[[], bool]) -> None:
    # Polling a condition is the point here: the poller exposes no event per state change.
    async with asyncio.timeout(10):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


class CountingDriver:
    """Wraps a real driver and counts connection attempts."""

    def __init__(self, inner: Driver) -> None:
        self.inner = inner
        self.name = inner.name
        self.connects = 0
        self.closed = 0

    async def connect(self) -> None:
        self.connects += 1
        await self.inner.connect()

    async def read(self) -> tuple[list[Reading], list[HealthReading]]:
        return await self.inner.read()

    async def close(self) -> None:
        self.closed += 1
        await self.inner.close()

    def describe(self) -> list[InstrumentInfo]:
        return self.inner.describe()


class ScriptedDriver:
    """Answers from a script: a value, an exception to raise, or health to report."""

    def __init__(self, script: list[object]) -> None:
        self.name = "scripted"
        self.script = script
        self.reads: list[float] = []

    async def connect(self) -> None:
        return

    async def read(self) -> tuple[list[Reading], list[HealthReading]]:
        self.reads.append(asyncio.get_running_loop().time())
        step = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(step, Exception):
            raise step
        if isinstance(step, str):
            return [], [HealthReading("DEV", step, 1_700_000_000_000)]
        return [Reading("DEV/value", 1_700_000_000_000, float(step), QUALITY_GOOD)], []  # type: ignore[arg-type]

    async def close(self) -> None:
        return

    def describe(self) -> list[InstrumentInfo]:
        return [InstrumentInfo("DEV", "", "", "", "", (PointInfo("value", "1"),))]


def modbus_source(port: int) -> ModbusSource:
    points = [ModbusPoint(key=f"p{i}", unit="1", register=i, type="uint16") for i in range(3)]
    return ModbusSource(
        name="line-1",
        host="127.0.0.1",
        port=port,
        poll_ms=100,
        timeout_ms=200,
        instruments=[ModbusInstrument(tag="DEV", points=points)],
    )


@sync
async def test_outage_is_logged_once_marked_bad_once_and_recovery_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    server = RegisterServer("127.0.0.1", 0, holding=[1, 2, 3])
    await server.start()
    port = server.port
    delivered: Delivered = []
    counting: list[CountingDriver] = []

    def factory(source: Source) -> Driver:
        counting.append(CountingDriver(make_driver(source)))
        return counting[-1]

    poller = Poller(
        [modbus_source(port)],
        lambda readings, health: delivered.append((readings, health)),
        driver_factory=factory,
        max_backoff_s=0.2,
        rng=random.Random(1),  # noqa: S311 - jitter in a test
    )
    task = asyncio.create_task(poller.run())
    try:
        await until(lambda: len(delivered) >= 3)
        assert poller.states() == {"line-1": SourceState.CONNECTED}
        await server.stop()
        await until(lambda: poller.states()["line-1"] is SourceState.UNREACHABLE)
        attempts = counting[0].connects
        await until(lambda: counting[0].connects >= attempts + 8)  # retried again and again
        outage = [r for batch, _ in delivered for r in batch if r.quality == QUALITY_BAD]
        assert sorted(r.point for r in outage) == ["DEV/p0", "DEV/p1", "DEV/p2"]
        assert {r.value for r in outage} == {0.0}
        count_before = len(delivered)

        server = RegisterServer("127.0.0.1", port, holding=[4, 5, 6])
        await server.start()
        await until(lambda: len(delivered) >= count_before + 2)
        assert delivered[-1][0][0].value == 4
        assert delivered[-1][0][0].quality == QUALITY_GOOD
    finally:
        poller.stop()
        async with asyncio.timeout(5):
            await task
        await server.stop()
    assert counting[0].closed >= 1
    assert events(caplog) == [
        "field source connected",
        "field source unreachable",
        "field source recovered",
    ]
    # Nothing else, from any library, complained while the source was retried over and over.
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 1, [r.getMessage() for r in loud]
    # Only one batch of bad values in the whole outage.
    assert sum(1 for batch, _ in delivered if batch and batch[0].quality == QUALITY_BAD) == 1


@sync
async def test_polls_every_interval_with_jitter() -> None:
    driver = ScriptedDriver([1.0])
    source = SimulatorSource(name="s", poll_ms=100)
    poller = Poller([source], lambda r, h: None, driver_factory=lambda s: driver)
    task = asyncio.create_task(poller.run())
    await until(lambda: len(driver.reads) >= 16)
    poller.stop()
    await task
    gaps = [b - a for a, b in zip(driver.reads, driver.reads[1:], strict=False)]
    assert 0.095 <= statistics.mean(gaps) <= 0.115
    assert min(gaps) >= 0.085
    assert max(gaps) <= 0.14
    assert max(gaps) - min(gaps) > 0.005  # jittered, not a fixed beat


@sync
async def test_driver_bugs_and_failing_storage_never_stop_polling(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    boom = RuntimeError("decoder bug")
    driver = ScriptedDriver([1.0, boom, boom, boom, 2.0, 3.0, 4.0, 5.0, 6.0])
    stored: list[float] = []
    failing = {3.0, 4.0}

    async def on_readings(readings: list[Reading], _: list[HealthReading]) -> None:
        value = readings[0].value
        if value in failing:
            raise OSError("disk full")
        stored.append(value)

    poller = Poller(
        [SimulatorSource(name="s", poll_ms=100)],
        on_readings,
        driver_factory=lambda s: driver,
        max_backoff_s=0.1,
    )
    task = asyncio.create_task(poller.run())
    await until(lambda: 6.0 in stored)
    poller.stop()
    await task
    assert stored == [1.0, 0.0, 2.0, 5.0, 6.0]  # 0.0: the one bad mark of the failure
    assert events(caplog) == [
        "field source connected",
        "field source unreachable",
        "field source recovered",
        "readings not stored",
        "readings stored again",
    ]


@sync
async def test_health_is_passed_on_only_when_it_changes() -> None:
    script: list[object] = ["ok", "ok", "ok", "maintenance_required", "maintenance_required"]
    driver = ScriptedDriver([*script, "ok"])
    health: list[str] = []
    poller = Poller(
        [SimulatorSource(name="s", poll_ms=100)],
        lambda r, h: health.extend(x.status for x in h),
        driver_factory=lambda s: driver,
    )
    task = asyncio.create_task(poller.run())
    await until(lambda: len(driver.reads) >= 8)
    poller.stop()
    await task
    assert health == ["ok", "maintenance_required", "ok"]


@sync
async def test_stop_ends_a_long_backoff_at_once() -> None:
    driver = ScriptedDriver([DriverError("down")])
    poller = Poller(
        [SimulatorSource(name="s", poll_ms=100)],
        lambda r, h: None,
        driver_factory=lambda s: driver,
        max_backoff_s=3600,
    )
    task = asyncio.create_task(poller.run())
    await until(lambda: len(driver.reads) >= 3)  # backoff is growing
    loop = asyncio.get_running_loop()
    started = loop.time()
    poller.stop()
    await task
    assert loop.time() - started < 0.5
    assert poller.describe()[0].tag == "DEV"
