"""A real Modbus TCP server (pymodbus) holding registers that the plant or a test sets.

``RegisterServer`` serves two register tables (holding: function 3, input: function 4) for any
unit id, refuses writes and counts the read requests it answers, so tests can check how many
requests one poll cycle costs. Addresses beyond the tables are refused with an exception
response, as a real device does for unmapped registers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Final

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from fieldlink.edge.drivers.modbus import encode_registers
from fieldlink.edge.plant.catalog import InstrumentSpec
from fieldlink.edge.plant.physics import Sample

__all__ = ["RegisterServer", "register_image", "table_sizes"]

_HOLDING_CODES: Final = frozenset({3, 6, 16, 22, 23})
_INPUT_CODES: Final = frozenset({4})
_HEALTH_CODE: Final = {
    "ok": 0,
    "failure": 1,
    "function_check": 2,
    "out_of_specification": 3,
    "maintenance_required": 4,
}


class RegisterServer:
    def __init__(
        self, host: str, port: int, *, holding: Sequence[int] = (0,), input_: Sequence[int] = (0,)
    ) -> None:
        self.host = host
        self.port = port
        self.holding = list(holding) or [0]
        self.input = list(input_) or [0]
        self.requests = 0
        self._server: ModbusTcpServer | None = None

    def _device(self) -> SimDevice:
        def table(size: int) -> list[SimData]:
            return [SimData(0, count=size, values=0, datatype=DataType.REGISTERS, readonly=True)]

        bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS, readonly=True)]
        return SimDevice(
            0,
            simdata=(bits, list(bits), table(len(self.holding)), table(len(self.input))),
            action=self._on_request,
        )

    async def _on_request(
        self,
        function_code: int,
        start_address: int,
        _address: int,
        _count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION
        if function_code in _HOLDING_CODES:
            source = self.holding
        elif function_code in _INPUT_CODES:
            source = self.input
        else:
            return None
        self.requests += 1
        # The served block starts at address 0; copy the current image in before pymodbus
        # slices the answer out of it.
        registers[start_address : start_address + len(source)] = source
        return None

    async def start(self) -> None:
        server = ModbusTcpServer(self._device(), address=(self.host, self.port))
        try:
            await server.serve_forever(background=True)
        except RuntimeError as exc:  # pymodbus' way of saying the address is taken
            raise OSError(f"cannot listen on {self.host}:{self.port}: {exc}") from exc
        self._server = server
        transport = server.transport
        if self.port == 0 and isinstance(transport, asyncio.Server):
            self.port = transport.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves it untyped


def table_sizes(specs: Sequence[InstrumentSpec]) -> dict[str, int]:
    """How many registers each table needs for ``specs``' Modbus map."""
    sizes = {"holding": 0, "input": 0}
    for spec in specs:
        if spec.health_register is not None:
            end = spec.health_register + 1
            sizes[spec.health_table] = max(sizes[spec.health_table], end)
        for point in spec.points:
            if point.modbus is not None:
                slot = point.modbus
                end = slot.register + len(encode_registers(0, slot.type))
                sizes[slot.table] = max(sizes[slot.table], end)
    return sizes


def register_image(
    specs: Sequence[InstrumentSpec], samples: Sequence[Sample], sizes: dict[str, int]
) -> dict[str, list[int]]:
    """The registers the plant's devices hold for ``samples``, per table."""
    image = {table: [0] * size for table, size in sizes.items()}
    by_tag = {sample.tag: sample for sample in samples}
    for spec in specs:
        sample = by_tag[spec.tag]
        for point in spec.points:
            slot = point.modbus
            if slot is None:
                continue
            raw = (sample.values[point.key] - slot.offset) / slot.scale
            words = encode_registers(raw, slot.type, slot.byte_order, slot.word_order)
            image[slot.table][slot.register : slot.register + len(words)] = words
        if spec.health_register is not None:
            image[spec.health_table][spec.health_register] = _HEALTH_CODE[sample.health.status]
    return image
