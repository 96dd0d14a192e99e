"""Modbus TCP: a register map per point, read in as few requests as the map allows.

Points (and health registers) are grouped by table (holding: function 3, input: function 4),
sorted by address and merged into requests of at most 125 registers (the protocol's limit for
one read). Ranges merge when they touch or overlap; ``max_gap`` lets one request also span that
many unused registers, which saves round trips on devices that answer for unmapped addresses
(many refuse, hence 0 by default). The plan is made once, when the driver is built.

Values: the registers are taken in ``word_order`` (big: most significant register first), each
register's two bytes in ``byte_order`` (big: high byte first, the Modbus default), the result
unpacked as ``type`` and scaled: ``value = raw * scale + offset``.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Callable, Sequence
from typing import Final, Literal, NamedTuple

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from fieldlink.edge.config import REGISTER_COUNT, ModbusSource
from fieldlink.edge.drivers.base import DriverError, sendable
from fieldlink.edge.model import (
    HEALTH_BY_CODE,
    HealthReading,
    InstrumentInfo,
    PointInfo,
    Reading,
    now_ms,
)
from fieldlink.protocol.telemetry import QUALITY_BAD, QUALITY_GOOD

__all__ = [
    "MAX_REGISTERS",
    "ModbusDriver",
    "ReadRequest",
    "decode_registers",
    "encode_registers",
    "plan_requests",
]

MAX_REGISTERS: Final = 125

_FORMAT: Final = {
    "int16": "h",
    "uint16": "H",
    "int32": "i",
    "uint32": "I",
    "float32": "f",
    "float64": "d",
}


def _to_bytes(registers: Sequence[int], byte_order: str, word_order: str) -> bytes:
    words = registers if word_order == "big" else list(reversed(registers))
    endian: Literal["big", "little"] = "big" if byte_order == "big" else "little"
    return b"".join(word.to_bytes(2, endian) for word in words)


def decode_registers(
    registers: Sequence[int], type_: str, byte_order: str = "big", word_order: str = "big"
) -> float:
    """The raw number in ``registers`` (unscaled); ints come back exact as floats."""
    data = _to_bytes(registers, byte_order, word_order)
    (raw,) = struct.unpack(">" + _FORMAT[type_], data)
    return float(raw)


def encode_registers(
    raw: float, type_: str, byte_order: str = "big", word_order: str = "big"
) -> list[int]:
    """The registers a device would hold for ``raw`` (the inverse of ``decode_registers``).

    Integer types take ``raw`` rounded and clamped to their range (what a device does when a
    scaled value does not fit).
    """
    fmt = _FORMAT[type_]
    value: float | int
    if type_.startswith(("int", "uint")):
        bits = 16 * REGISTER_COUNT[type_]
        low, high = (
            (0, 2**bits - 1) if type_.startswith("u") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        )
        value = min(max(round(raw), low), high)
    else:
        value = raw
    data = struct.pack(">" + fmt, value)
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    if byte_order != "big":
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    return words if word_order == "big" else list(reversed(words))


class _Slot(NamedTuple):
    """One thing to decode from a request: a point (``key``) or a health register (``key=None``)."""

    tag: str
    key: str | None
    register: int
    size: int
    type_: str
    byte_order: str
    word_order: str
    scale: float
    offset: float


class ReadRequest(NamedTuple):
    table: str  # "holding" | "input"
    start: int
    length: int
    slots: tuple[_Slot, ...]


def _slots(source: ModbusSource) -> list[tuple[str, _Slot]]:
    found: list[tuple[str, _Slot]] = []
    for instrument in source.instruments:
        for p in instrument.points:
            slot = _Slot(
                instrument.tag,
                p.key,
                p.register,
                REGISTER_COUNT[p.type],
                p.type,
                p.byte_order,
                p.word_order,
                p.scale,
                p.offset,
            )
            found.append((p.table, slot))
        if instrument.health_register is not None:
            health = _Slot(
                instrument.tag, None, instrument.health_register, 1, "uint16", "big", "big", 1, 0
            )
            found.append((instrument.health_table, health))
    return found


def plan_requests(source: ModbusSource) -> list[ReadRequest]:
    """The fewest reads of ≤ 125 registers that cover every point and health register."""
    plan: list[ReadRequest] = []
    slots = _slots(source)
    for table in ("holding", "input"):
        ordered = sorted((s for t, s in slots if t == table), key=lambda s: (s.register, s.size))
        start = end = -1  # the current request covers [start, end)
        members: list[_Slot] = []
        for slot in ordered:
            slot_end = slot.register + slot.size
            if (
                members
                and slot.register <= end + source.max_gap
                and (max(end, slot_end) - start <= MAX_REGISTERS)
            ):
                end = max(end, slot_end)
                members.append(slot)
                continue
            if members:
                plan.append(ReadRequest(table, start, end - start, tuple(members)))
            start, end, members = slot.register, slot_end, [slot]
        if members:
            plan.append(ReadRequest(table, start, end - start, tuple(members)))
    return plan


class ModbusDriver:
    """Reads one Modbus TCP device (one unit id) per ``edge.toml`` source."""

    def __init__(self, source: ModbusSource, *, clock: Callable[[], int] = now_ms) -> None:
        self.name = source.name
        self._source = source
        self._clock = clock
        self._plan = plan_requests(source)
        # pymodbus warns on every failed connect attempt; the poller reports an outage once.
        logging.getLogger("pymodbus").setLevel(logging.ERROR)
        self._client: AsyncModbusTcpClient | None = None

    @property
    def plan(self) -> list[ReadRequest]:
        return list(self._plan)

    def describe(self) -> list[InstrumentInfo]:
        return [
            InstrumentInfo(
                i.tag,
                i.manufacturer,
                i.product_code,
                i.serial_number,
                i.firmware_version,
                tuple(PointInfo(p.key, p.unit, p.description) for p in i.points),
            )
            for i in self._source.instruments
        ]

    async def connect(self) -> None:
        await self.close()
        source = self._source
        client = AsyncModbusTcpClient(
            source.host,
            port=source.port,
            timeout=source.timeout_ms / 1000,
            retries=0,
            # The poller reconnects with its own backoff; pymodbus' background reconnect would
            # run a second, unsupervised loop.
            reconnect_delay=0,
            name=f"fieldlink-{source.name}",
        )
        try:
            connected = await client.connect()
        except (ModbusException, OSError) as exc:
            client.close()
            raise DriverError(f"cannot connect to {source.host}:{source.port}: {exc}") from exc
        if not connected:
            client.close()
            raise DriverError(f"cannot connect to {source.host}:{source.port}")
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    async def _fetch(self, client: AsyncModbusTcpClient, request: ReadRequest) -> ModbusPDU:
        read = (
            client.read_holding_registers
            if request.table == "holding"
            else client.read_input_registers
        )
        try:
            return await read(request.start, count=request.length, device_id=self._source.unit_id)
        except (TimeoutError, ModbusException, OSError) as exc:
            raise DriverError(
                f"{request.table} registers {request.start}+{request.length}: {exc}"
            ) from exc

    async def read(self) -> tuple[list[Reading], list[HealthReading]]:
        client = self._client
        if client is None or not client.connected:
            raise DriverError("not connected")
        ts = self._clock()
        readings: list[Reading] = []
        health: list[HealthReading] = []
        for request in self._plan:
            response = await self._fetch(client, request)
            registers: Sequence[int] | None = None
            if not response.isError() and len(response.registers) >= request.length:
                registers = response.registers
            for slot in request.slots:
                raw: float | None = None
                if registers is not None:
                    at = slot.register - request.start
                    raw = decode_registers(
                        registers[at : at + slot.size],
                        slot.type_,
                        slot.byte_order,
                        slot.word_order,
                    )
                if slot.key is None:
                    if raw is not None and int(raw) < len(HEALTH_BY_CODE):
                        health.append(HealthReading(slot.tag, HEALTH_BY_CODE[int(raw)], ts))
                    continue
                value = raw * slot.scale + slot.offset if raw is not None else math.nan
                point = f"{slot.tag}/{slot.key}"
                if sendable(value):
                    readings.append(Reading(point, ts, value, QUALITY_GOOD))
                else:
                    readings.append(Reading(point, ts, 0.0, QUALITY_BAD))
        return readings, health
