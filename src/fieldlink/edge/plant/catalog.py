"""The simulated plant's instruments: identities, points and where each protocol exposes them.

One source of truth for three consumers: the physics (which process variable a point
measures), the plant's Modbus and OPC UA servers (register map, node ids) and the ``[[sources]]``
section written for the agent. The instruments are typical of a small water works: a pump
filling a tank that a varying demand empties.
"""

from __future__ import annotations

from typing import Final, Literal, NamedTuple

__all__ = [
    "MODELS",
    "NAMESPACE_URI",
    "PLANT",
    "InstrumentSpec",
    "ModbusSlot",
    "PointSpec",
    "health_node_id",
    "instrument_for",
    "node_id",
]

NAMESPACE_URI: Final = "urn:fieldlink:plant"
# The first namespace a server registers after its own gets index 2.
NAMESPACE_INDEX: Final = 2


class ModbusSlot(NamedTuple):
    table: Literal["holding", "input"]
    register: int
    type: str
    byte_order: str = "big"
    word_order: str = "big"
    scale: float = 1.0
    offset: float = 0.0


class PointSpec(NamedTuple):
    key: str
    unit: str
    description: str
    measures: str  # the process variable (physics.Process attribute)
    noise: float  # standard deviation of the measurement noise, in the unit
    low: float  # the instrument's measuring range: readings are clamped into it
    high: float
    modbus: ModbusSlot | None = None


class InstrumentSpec(NamedTuple):
    tag: str
    model: str
    manufacturer: str
    product_code: str
    serial_number: str
    firmware_version: str
    points: tuple[PointSpec, ...]
    protocol: Literal["modbus", "opcua", "simulator"] = "simulator"
    health_register: int | None = None
    health_table: Literal["holding", "input"] = "holding"


_FLOW = PointSpec("volume_flow", "m3/h", "Volume flow", "flow", 0.15, 0.0, 120.0)
_TOTAL = PointSpec("totalizer", "m3", "Totalizer 1 (volume)", "totalizer", 0.0, 0.0, 1e12)
_PRESSURE = PointSpec("pressure", "bar", "Discharge pressure", "pressure", 0.01, 0.0, 16.0)
_LEVEL = PointSpec("level", "%", "Tank level", "level", 0.05, 0.0, 100.0)
_TEMPERATURE = PointSpec("temperature", "Cel", "Water temperature", "temperature", 0.02, -40, 150)
_PH = PointSpec("ph", "pH", "pH value", "ph", 0.005, 0.0, 14.0)

# What an instrument of each model measures, for simulator sources that name only a model.
MODELS: Final[dict[str, tuple[PointSpec, ...]]] = {
    "flow": (_FLOW, _TOTAL),
    "pressure": (_PRESSURE,),
    "level": (_LEVEL,),
    "temperature": (_TEMPERATURE,),
    "ph": (_PH, _TEMPERATURE._replace(description="Medium temperature")),
}

PLANT: Final[tuple[InstrumentSpec, ...]] = (
    InstrumentSpec(
        "FIT-101",
        "flow",
        "Endress+Hauser",
        "Promag 10W",
        "R9A07B16000",
        "01.02.00",
        (
            _FLOW._replace(modbus=ModbusSlot("holding", 0, "float32")),
            _TOTAL._replace(modbus=ModbusSlot("holding", 2, "float64")),
        ),
        protocol="modbus",
        health_register=6,
    ),
    InstrumentSpec(
        "PIT-101",
        "pressure",
        "Siemens",
        "SITRANS P320",
        "N1-L0-7331-2",
        "4.1.0",
        # Word-swapped float ("CDAB"), as many PLC gateways deliver it.
        (_PRESSURE._replace(modbus=ModbusSlot("holding", 7, "float32", word_order="little")),),
        protocol="modbus",
        health_register=9,
    ),
    InstrumentSpec(
        "LIT-101",
        "level",
        "VEGA",
        "VEGAPULS 21",
        "44512093",
        "1.3.2",
        # Thousandths of a percent as a little-endian int32 in input registers.
        (_LEVEL._replace(modbus=ModbusSlot("input", 0, "int32", "little", "little", scale=0.001)),),
        protocol="modbus",
        health_register=2,
        health_table="input",
    ),
    InstrumentSpec(
        "TIT-101",
        "temperature",
        "WIKA",
        "T32.1S",
        "1A02FX9K",
        "2.0.4",
        (_TEMPERATURE,),
        protocol="opcua",
    ),
    InstrumentSpec(
        "AIT-101",
        "ph",
        "Endress+Hauser",
        "Liquiline CM442",
        "T3013A05G00",
        "01.07.02",
        MODELS["ph"],
        protocol="opcua",
    ),
)


def node_id(tag: str, key: str) -> str:
    return f"ns={NAMESPACE_INDEX};s={tag}.{key}"


def health_node_id(tag: str) -> str:
    return f"ns={NAMESPACE_INDEX};s={tag}.DeviceHealth"


def instrument_for(
    tag: str,
    model: str,
    *,
    manufacturer: str = "",
    product_code: str = "",
    serial_number: str = "",
    firmware_version: str = "",
) -> InstrumentSpec:
    """A simulated instrument of ``model`` (a key of MODELS) with the identity given."""
    return InstrumentSpec(
        tag,
        model,
        manufacturer or "Fieldlink",
        product_code or f"Simulated {model} transmitter",
        serial_number or f"SIM-{tag}",
        firmware_version or "1.0.0",
        MODELS[model],
    )
