"""What the field side of the agent produces: readings, instrument health and descriptions.

Plain immutable tuples: the poller hands lists of them to the durable buffer on every cycle, so
they carry no behaviour and cost as little as a tuple. ``Reading`` maps one to one onto the wire
``protocol.telemetry.Value`` and ``HealthReading`` onto ``HealthReport``.
"""

from __future__ import annotations

import re
import time
from typing import Final, NamedTuple

from fieldlink.protocol.edge import InstrumentAnnounce, PointAnnounce
from fieldlink.protocol.units import UNIT_CODES

__all__ = [
    "HEALTH_BY_CODE",
    "POINT_KEY",
    "UNIT_CODES",
    "HealthReading",
    "InstrumentInfo",
    "PointInfo",
    "Reading",
    "now_ms",
]


class Reading(NamedTuple):
    """A measured value: ``point`` is ``"<asset tag>/<point key>"``, ``ts`` UTC milliseconds."""

    point: str
    ts: int
    value: float
    quality: int


class HealthReading(NamedTuple):
    """An instrument's NE 107 status (one of ``protocol.telemetry.HEALTH_STATES``)."""

    asset: str
    status: str
    ts: int
    code: str = ""
    cause: str = ""
    remedy: str = ""


class PointInfo(NamedTuple):
    key: str
    unit: str
    description: str = ""


class InstrumentInfo(NamedTuple):
    """What discovery announces about an instrument (``protocol.edge.InstrumentAnnounce``)."""

    tag: str
    manufacturer: str
    product_code: str
    serial_number: str
    firmware_version: str
    points: tuple[PointInfo, ...]

    def announce(self) -> InstrumentAnnounce:
        return InstrumentAnnounce(
            tag=self.tag,
            manufacturer=self.manufacturer,
            product_code=self.product_code,
            serial_number=self.serial_number,
            firmware_version=self.firmware_version,
            points=[PointAnnounce(p.key, p.unit, p.description) for p in self.points],
        )


# The NE 107 status as a small integer, the way field devices expose it in a register or an
# enumeration node (the order of the OPC UA DI DeviceHealthEnumeration: NORMAL, FAILURE,
# CHECK_FUNCTION, OFF_SPEC, MAINTENANCE_REQUIRED).
HEALTH_BY_CODE: Final[tuple[str, ...]] = (
    "ok",
    "failure",
    "function_check",
    "out_of_specification",
    "maintenance_required",
)

# The cloud refuses a whole announcement over one bad key or unit, so the agent's configuration
# refuses them first. Same rule as the cloud's ``devices.services.POINT_KEY``.
POINT_KEY: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


def now_ms() -> int:
    return time.time_ns() // 1_000_000
