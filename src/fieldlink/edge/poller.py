"""Runs every source's driver on its poll interval and hands the results to the agent.

One task per source on the agent's event loop. Each cycle waits ``poll_ms`` ±10 % (jitter, so
sources and agents do not fall into lockstep), reads, and passes the readings and the health
*changes* to ``on_readings(readings, health)`` (a plain or async callable: the agent appends
them to its durable buffer).

Failures never end the loop. A source that cannot be connected or read is closed and retried
with exponential backoff (the poll interval doubled per failure, at most ``max_backoff_s``,
with jitter). Its points get one ``0.0, QUALITY_BAD`` reading when it becomes unreachable and
nothing more until it answers (``drivers.base`` explains why). Logging happens on transitions
only: "connected" once at start, "unreachable" once per outage, "recovered" once when it ends;
the same for a failing ``on_readings``. ``stop()`` ends every loop after its current cycle and
closes the drivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Final

from fieldlink.edge.config import Source
from fieldlink.edge.drivers import Driver, make_driver
from fieldlink.edge.model import HealthReading, InstrumentInfo, Reading, now_ms
from fieldlink.kit.logging import get_logger
from fieldlink.protocol.telemetry import QUALITY_BAD

__all__ = ["OnReadings", "Poller", "SourceState"]

log = get_logger(__name__)

OnReadings = Callable[[list[Reading], list[HealthReading]], Awaitable[None] | None]

JITTER: Final = 0.10
MAX_BACKOFF_S: Final = 60.0


class SourceState(Enum):
    STARTING = "starting"
    CONNECTED = "connected"
    UNREACHABLE = "unreachable"


@dataclass
class _Run:
    source: Source
    driver: Driver
    state: SourceState = SourceState.STARTING
    failures: int = 0
    delivering: bool = True
    health: dict[str, tuple[str, str]] = field(default_factory=dict)


def _error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Poller:
    def __init__(
        self,
        sources: Sequence[Source],
        on_readings: OnReadings,
        *,
        driver_factory: Callable[[Source], Driver] = make_driver,
        clock: Callable[[], int] = now_ms,
        rng: random.Random | None = None,
        max_backoff_s: float = MAX_BACKOFF_S,
    ) -> None:
        # Drivers are built here, not in run(): a source that cannot work (a bad node id)
        # stops the agent at start with ConfigError instead of failing forever later.
        self._runs = [_Run(source, driver_factory(source)) for source in sources]
        self._on_readings = on_readings
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret
        self._max_backoff_s = max_backoff_s
        self._stopping = asyncio.Event()

    def describe(self) -> list[InstrumentInfo]:
        """Every instrument of every source, for discovery."""
        return [info for run in self._runs for info in run.driver.describe()]

    def states(self) -> dict[str, SourceState]:
        return {run.source.name: run.state for run in self._runs}

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        """Poll until ``stop()`` (or cancellation); drivers are closed on the way out.

        A ``stop()`` that came before ``run()`` is kept: the flag is reset only on the way out.
        """
        try:
            async with asyncio.TaskGroup() as group:
                for run in self._runs:
                    group.create_task(self._loop(run), name=f"poll {run.source.name}")
        finally:
            for run in self._runs:
                await _close(run.driver)
            self._stopping.clear()

    def _jittered(self, seconds: float) -> float:
        return seconds * self._rng.uniform(1 - JITTER, 1 + JITTER)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), timeout=max(seconds, 0.0))
        except TimeoutError:
            return

    async def _loop(self, run: _Run) -> None:
        loop = asyncio.get_running_loop()
        interval = run.source.poll_ms / 1000
        # A guard above the drivers' own timeouts: a cycle never hangs the loop.
        guard = run.source.timeout_ms / 1000 * 4 + 1
        connected = False
        while not self._stopping.is_set():
            started = loop.time()
            try:
                async with asyncio.timeout(guard):
                    if not connected:
                        await run.driver.connect()
                        connected = True
                    readings, health = await run.driver.read()
            except Exception as exc:  # noqa: BLE001 - whatever a driver raises, polling goes on
                connected = False
                await _close(run.driver)
                await self._failed(run, exc)
                backoff = min(interval * 2 ** min(run.failures, 16), self._max_backoff_s)
                await self._sleep(self._jittered(max(backoff, interval)))
                continue
            self._succeeded(run)
            await self._deliver(run, readings, self._health_changes(run, health))
            await self._sleep(self._jittered(interval) - (loop.time() - started))

    def _succeeded(self, run: _Run) -> None:
        if run.state is SourceState.UNREACHABLE:
            log.info("field source recovered", source=run.source.name, after_failures=run.failures)
        elif run.state is SourceState.STARTING:
            log.info("field source connected", source=run.source.name)
        run.state = SourceState.CONNECTED
        run.failures = 0

    async def _failed(self, run: _Run, exc: BaseException) -> None:
        run.failures += 1
        if run.state is SourceState.UNREACHABLE:
            return
        run.state = SourceState.UNREACHABLE
        log.warning("field source unreachable", source=run.source.name, error=_error(exc))
        ts = self._clock()
        bad = [
            Reading(f"{info.tag}/{point.key}", ts, 0.0, QUALITY_BAD)
            for info in run.driver.describe()
            for point in info.points
        ]
        # What the instruments last said about their health no longer holds; the first
        # answer after recovery is passed on again.
        run.health.clear()
        await self._deliver(run, bad, [])

    def _health_changes(self, run: _Run, health: list[HealthReading]) -> list[HealthReading]:
        changed: list[HealthReading] = []
        for report in health:
            key = (report.status, report.code)
            if run.health.get(report.asset) != key:
                run.health[report.asset] = key
                changed.append(report)
        return changed

    async def _deliver(
        self, run: _Run, readings: list[Reading], health: list[HealthReading]
    ) -> None:
        if not readings and not health:
            return
        try:
            result = self._on_readings(readings, health)
            if inspect.isawaitable(result):
                await result
        except Exception as exc:
            if run.delivering:
                run.delivering = False
                log.exception("readings not stored", source=run.source.name, error=_error(exc))
            return
        if not run.delivering:
            run.delivering = True
            log.info("readings stored again", source=run.source.name)


async def _close(driver: Driver) -> None:
    # Best effort and silent: the failure that made us close was reported once already, and
    # the next connect starts from scratch.
    with contextlib.suppress(Exception):
        await driver.close()
