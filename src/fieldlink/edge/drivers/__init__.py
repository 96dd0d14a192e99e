"""Field drivers: one per source in ``edge.toml`` (interface and quality rules in ``base``).

``make_driver`` imports a protocol's module only when a source of that kind is configured: the
OPC UA stack is large and most agents never load it.
"""

from __future__ import annotations

from fieldlink.edge.config import ModbusSource, OpcUaSource, SimulatorSource, Source
from fieldlink.edge.drivers.base import Driver, DriverError

__all__ = ["Driver", "DriverError", "make_driver"]


def make_driver(source: Source) -> Driver:
    """The driver for ``source``; ConfigError when its settings cannot work (bad node ids)."""
    if isinstance(source, ModbusSource):
        from fieldlink.edge.drivers.modbus import ModbusDriver  # noqa: PLC0415

        return ModbusDriver(source)
    if isinstance(source, OpcUaSource):
        from fieldlink.edge.drivers.opcua import OpcUaDriver  # noqa: PLC0415

        return OpcUaDriver(source)
    if isinstance(source, SimulatorSource):
        from fieldlink.edge.drivers.simulator import SimulatorDriver  # noqa: PLC0415

        return SimulatorDriver(source)
    raise TypeError(f"unknown source kind {type(source).__name__}")
