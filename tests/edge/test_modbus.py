"""The Modbus TCP driver against a real pymodbus server on 127.0.0.1.

Register contents are built here with ``struct`` directly (not with the driver's encoder), so a
decoding mistake cannot cancel itself out.
"""

from __future__ import annotations

import asyncio
import functools
import math
import struct
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldlink.edge.config import ModbusInstrument, ModbusPoint, ModbusSource
from fieldlink.edge.drivers.base import DriverError
from fieldlink.edge.drivers.modbus import (
    ModbusDriver,
    decode_registers,
    encode_registers,
    plan_requests,
)
from fieldlink.edge.model import HealthReading, Reading
from fieldlink.edge.plant.modbus import RegisterServer
from fieldlink.protocol.telemetry import QUALITY_BAD, QUALITY_GOOD

T = TypeVar("T")
P = ParamSpec("P")

TYPES = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f", "float64": "d"}
ORDERS = [("big", "big"), ("big", "little"), ("little", "big"), ("little", "little")]


def sync(test: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, T]:
    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> T:
        return asyncio.run(asyncio.wait_for(test(*args, **kwargs), timeout=60))

    return run


def device_registers(raw: float, type_: str, byte_order: str, word_order: str) -> list[int]:
    """What a device with this byte and word order holds, built from the IEEE/two's complement
    big-endian bytes: swap bytes within registers, then reverse the register order."""
    fmt = TYPES[type_]
    data = struct.pack(">" + fmt, raw if fmt in "fd" else int(raw))
    pairs = [data[i : i + 2] for i in range(0, len(data), 2)]
    if byte_order == "little":
        pairs = [p[::-1] for p in pairs]
    if word_order == "little":
        pairs.reverse()
    return [int.from_bytes(p, "big") for p in pairs]


def source(port: int, points: list[ModbusPoint], **kw: Any) -> ModbusSource:
    instrument = ModbusInstrument(
        tag="DEV-1", points=points, health_register=kw.pop("health", None)
    )
    return ModbusSource(
        name="test", host="127.0.0.1", port=port, instruments=[instrument], timeout_ms=1000, **kw
    )


def point(key: str, register: int, type_: str = "uint16", **kw: Any) -> ModbusPoint:
    return ModbusPoint(key=key, unit="1", register=register, type=type_, **kw)  # type: ignore[arg-type]


async def one_cycle(
    server: RegisterServer, config: ModbusSource
) -> tuple[list[Reading], list[HealthReading], int]:
    driver = ModbusDriver(config, clock=lambda: 1_700_000_000_000)
    await driver.connect()
    try:
        before = server.requests
        readings, health = await driver.read()
        return readings, health, server.requests - before
    finally:
        await driver.close()


def test_known_register_layouts_decode() -> None:
    # 12.5 as float32 is 0x41480000: ABCD, CDAB (word swap), BADC (byte swap), DCBA.
    assert decode_registers([0x4148, 0x0000], "float32") == 12.5
    assert decode_registers([0x0000, 0x4148], "float32", word_order="little") == 12.5
    assert decode_registers([0x4841, 0x0000], "float32", byte_order="little") == 12.5
    assert decode_registers([0x0000, 0x4841], "float32", "little", "little") == 12.5
    assert decode_registers([0xFFFF], "int16") == -1
    assert decode_registers([0xFFFF], "uint16") == 65535
    assert decode_registers([0x0001, 0x0000], "int32", word_order="little") == 1
    assert decode_registers([0xFFFF, 0xFFFE], "int32") == -2


@given(
    st.sampled_from(sorted(TYPES)),
    st.sampled_from(ORDERS),
    st.integers(min_value=-(2**31), max_value=2**32 - 1),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.floats(allow_nan=False, allow_infinity=False),
)
def test_every_type_and_order_decodes_what_a_device_holds(
    type_: str, orders: tuple[str, str], integer: int, single: float, double: float
) -> None:
    byte_order, word_order = orders
    bits = 16 * {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2}.get(type_, 0)
    if type_ == "float32":
        raw: float = single
    elif type_ == "float64":
        raw = double
    elif type_.startswith("u"):
        raw = integer % 2**bits
    else:
        raw = (integer % 2**bits) - 2 ** (bits - 1)
    registers = device_registers(raw, type_, byte_order, word_order)
    assert decode_registers(registers, type_, byte_order, word_order) == raw
    assert encode_registers(raw, type_, byte_order, word_order) == registers


@sync
async def test_driver_reads_every_type_and_order_from_a_real_server() -> None:
    samples = {
        "int16": -12345.0,
        "uint16": 54321.0,
        "int32": -2_000_000_001.0,
        "uint32": 4_000_000_001.0,
        "float32": 3.25,
        "float64": -1234.5678901234,
    }
    holding: list[int] = []
    points: list[ModbusPoint] = []
    expected: dict[str, float] = {}
    for type_, raw in samples.items():
        for byte_order, word_order in ORDERS:
            key = f"{type_}-{byte_order}-{word_order}"
            points.append(
                point(
                    key,
                    len(holding),
                    type_,
                    byte_order=byte_order,
                    word_order=word_order,
                    scale=0.5,
                    offset=10.0,
                )
            )
            expected[f"DEV-1/{key}"] = raw * 0.5 + 10.0
            holding += device_registers(raw, type_, byte_order, word_order)
    health_at = len(holding)
    holding.append(4)
    server = RegisterServer("127.0.0.1", 0, holding=holding, input_=[7, 8])
    await server.start()
    try:
        config = source(
            server.port, [*points, point("from-input", 1, table="input")], health=health_at
        )
        readings, health, requests = await one_cycle(server, config)
    finally:
        await server.stop()
    got = {r.point: r.value for r in readings}
    assert got.pop("DEV-1/from-input") == 8  # input registers are a table of their own
    assert got == expected
    assert {r.quality for r in readings} == {QUALITY_GOOD}
    assert {r.ts for r in readings} == {1_700_000_000_000}
    assert health == [HealthReading("DEV-1", "maintenance_required", 1_700_000_000_000)]
    assert requests == 2  # one holding range (89 registers) and one input range


@pytest.mark.parametrize("count", [1, 124, 125, 126, 250, 251, 400])
@sync
async def test_contiguous_registers_cost_ceil_n_over_125_requests(count: int) -> None:
    server = RegisterServer("127.0.0.1", 0, holding=list(range(count)))
    await server.start()
    try:
        config = source(server.port, [point(f"r{i}", i) for i in range(count)])
        readings, _, requests = await one_cycle(server, config)
    finally:
        await server.stop()
    assert requests == math.ceil(count / 125)
    assert sorted(r.value for r in readings) == list(range(count))


@sync
async def test_a_value_never_straddles_two_requests_and_gaps_split_unless_allowed() -> None:
    server = RegisterServer("127.0.0.1", 0, holding=[0] * 300)
    await server.start()
    try:
        # 63 float32 at 0..125: the 63rd would end at register 126, so it starts request two.
        floats = [point(f"f{i}", 2 * i, "float32") for i in range(63)]
        assert [(r.start, r.length) for r in plan_requests(source(1, floats))] == [
            (0, 124),
            (124, 2),
        ]
        _, _, requests = await one_cycle(server, source(server.port, floats))
        assert requests == 2
        gapped = [point("a", 0), point("b", 1), point("c", 10), point("d", 200)]
        assert len(plan_requests(source(1, gapped))) == 3
        assert len(plan_requests(source(1, gapped, max_gap=8))) == 2
        _, _, requests = await one_cycle(server, source(server.port, gapped, max_gap=8))
        assert requests == 2
    finally:
        await server.stop()


@sync
async def test_refused_range_and_nan_are_bad_values_while_the_rest_stays_good() -> None:
    nan = device_registers(math.nan, "float32", "big", "big")
    server = RegisterServer("127.0.0.1", 0, holding=[*nan, 42])
    await server.start()
    try:
        config = source(
            server.port,
            [point("nan", 0, "float32"), point("ok", 2), point("unmapped", 500)],
        )
        readings, _, _ = await one_cycle(server, config)
    finally:
        await server.stop()
    by_point = {r.point: (r.value, r.quality) for r in readings}
    assert by_point == {
        "DEV-1/nan": (0.0, QUALITY_BAD),
        "DEV-1/ok": (42.0, QUALITY_GOOD),
        "DEV-1/unmapped": (0.0, QUALITY_BAD),
    }


@sync
async def test_lost_and_refused_connections_raise_driver_error() -> None:
    server = RegisterServer("127.0.0.1", 0, holding=[1])
    await server.start()
    driver = ModbusDriver(source(server.port, [point("a", 0)]))
    await driver.connect()
    assert (await driver.read())[0][0].value == 1
    await server.stop()
    await asyncio.sleep(0.1)
    with pytest.raises(DriverError):
        await driver.read()
    await driver.close()
    with pytest.raises(DriverError, match="cannot connect"):
        await driver.connect()
    await driver.close()
