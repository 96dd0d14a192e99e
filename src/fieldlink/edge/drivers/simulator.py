"""The simulated plant in-process: the same physics as ``fieldlink plant``, without a network.

For demos and tests. The plant advances by the time that really passed between reads (on the
event loop's monotonic clock), so values move at the speed of a real process; the trajectory
depends only on the seed and the elapsed time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fieldlink.edge.config import SimulatorSource
from fieldlink.edge.drivers.base import DriverError
from fieldlink.edge.model import HealthReading, InstrumentInfo, PointInfo, Reading, now_ms
from fieldlink.edge.plant.catalog import PLANT, InstrumentSpec, instrument_for
from fieldlink.edge.plant.physics import Plant
from fieldlink.protocol.telemetry import QUALITY_BAD

__all__ = ["SimulatorDriver", "simulated_instruments"]


def simulated_instruments(source: SimulatorSource) -> list[InstrumentSpec]:
    """The configured simulated instruments, or the demo plant's when none are configured."""
    if not source.instruments:
        return [spec._replace(protocol="simulator") for spec in PLANT]
    return [
        instrument_for(
            i.tag,
            i.model,
            manufacturer=i.manufacturer,
            product_code=i.product_code,
            serial_number=i.serial_number,
            firmware_version=i.firmware_version,
        )
        for i in source.instruments
    ]


class SimulatorDriver:
    def __init__(
        self,
        source: SimulatorSource,
        *,
        clock: Callable[[], int] = now_ms,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = source.name
        self._seed = source.seed
        self._specs = simulated_instruments(source)
        self._clock = clock
        self._monotonic = monotonic
        self._plant: Plant | None = None
        self._last = 0.0

    @property
    def plant(self) -> Plant | None:
        return self._plant

    def describe(self) -> list[InstrumentInfo]:
        return [
            InstrumentInfo(
                s.tag,
                s.manufacturer,
                s.product_code,
                s.serial_number,
                s.firmware_version,
                tuple(PointInfo(p.key, p.unit, p.description) for p in s.points),
            )
            for s in self._specs
        ]

    async def connect(self) -> None:
        if self._plant is None:
            self._plant = Plant(self._seed, self._specs)
            self._last = self._monotonic()

    async def close(self) -> None:
        # The process keeps its state across reconnects, like a real plant would.
        return

    async def read(self) -> tuple[list[Reading], list[HealthReading]]:
        plant = self._plant
        if plant is None:
            raise DriverError("not connected")
        now = self._monotonic()
        plant.advance(now - self._last)
        self._last = now
        ts = self._clock()
        readings: list[Reading] = []
        health: list[HealthReading] = []
        for sample in plant.samples():
            for key, value in sample.values.items():
                point = f"{sample.tag}/{key}"
                if sample.quality == QUALITY_BAD:
                    readings.append(Reading(point, ts, 0.0, QUALITY_BAD))
                else:
                    readings.append(Reading(point, ts, value, sample.quality))
            h = sample.health
            health.append(HealthReading(sample.tag, h.status, ts, h.code, h.cause, h.remedy))
        return readings, health
