"""The field driver interface every protocol implements, and what its results mean.

A driver reads ALL its configured points in one ``read()`` cycle, in as few protocol requests as
the protocol allows (Modbus: contiguous register ranges; OPC UA: one Read service call). The
poller owns the timing, reconnection and backoff; a driver only connects, reads and closes.

Quality, decided once for every driver:

* a value the instrument delivered and we could decode is ``QUALITY_GOOD`` (or what the
  instrument says, e.g. an OPC UA Uncertain status is ``QUALITY_UNCERTAIN``);
* a value that could not be read or decoded while the instrument itself answered (a Modbus
  exception for that range, a NaN, infinite or > 1e300 float, an OPC UA Bad status, a
  non-numeric value)
  is reported as ``value 0.0, QUALITY_BAD``: the wire refuses NaN, and a bad-quality value makes
  the cloud show the point as bad now instead of showing a stale good value. Bad-quality values
  are ignored by thresholds and alarms in the cloud;
* when the source as a whole cannot be reached, ``read()`` raises ``DriverError``; the poller
  then records one ``0.0, QUALITY_BAD`` reading per point at the moment the source became
  unreachable and nothing more until it answers again (no stream of bad values for hours of
  outage: the cloud already sees the device's values stop).

Health (NE 107) is reported every cycle for every instrument that exposes it; the poller passes
on only changes. A health register or node that cannot be read, or holds a number outside the
NE 107 enumeration (0 ok … 4 maintenance required), yields no health reading that cycle.

Timestamps are the agent's clock at the cycle (UTC ms): instruments' clocks are rarely
synchronised, and a polled value is a sample taken now.
"""

from __future__ import annotations

import math
from typing import Protocol

from fieldlink.edge.model import HealthReading, InstrumentInfo, Reading
from fieldlink.protocol.telemetry import MAX_ABS_VALUE

__all__ = ["Driver", "DriverError", "sendable"]


def sendable(value: float) -> bool:
    """Whether the cloud accepts ``value`` (finite, magnitude at most 1e300); else it is bad."""
    return math.isfinite(value) and abs(value) <= MAX_ABS_VALUE


class DriverError(Exception):
    """The source could not be read this cycle as a whole (unreachable, timed out, refused)."""


class Driver(Protocol):
    name: str  # the source's name in edge.toml

    async def connect(self) -> None:
        """Open the connection; DriverError when the source cannot be reached."""

    async def read(self) -> tuple[list[Reading], list[HealthReading]]:
        """One cycle over every configured point; DriverError when the source is unreachable."""

    async def close(self) -> None:
        """Release the connection; never raises, may be called when not connected."""

    def describe(self) -> list[InstrumentInfo]:
        """The instruments this source reads, for discovery (no I/O)."""
