"""The unit code list for measuring points (UCUM-style codes plus a human label).

A measuring point stores the code; displays use the label. Codes are stable identifiers that
clients and the edge agent may send; the list only grows. Part of the wire contract: the agent
checks its configuration against it and the cloud refuses anything else.
"""

from __future__ import annotations

from typing import Final

UNITS: Final[dict[str, str]] = {
    # flow
    "m3/h": "cubic metres per hour",
    "m3/s": "cubic metres per second",
    "l/s": "litres per second",
    "l/min": "litres per minute",
    "l/h": "litres per hour",
    "kg/h": "kilograms per hour",
    "kg/s": "kilograms per second",
    "t/h": "tonnes per hour",
    # volume, mass, level, length
    "m3": "cubic metres",
    "l": "litres",
    "kg": "kilograms",
    "t": "tonnes",
    "m": "metres",
    "mm": "millimetres",
    "cm": "centimetres",
    # pressure
    "bar": "bar",
    "mbar": "millibar",
    "Pa": "pascal",
    "kPa": "kilopascal",
    "MPa": "megapascal",
    "psi": "pounds per square inch",
    # temperature
    "Cel": "degrees Celsius",
    "K": "kelvin",
    "[degF]": "degrees Fahrenheit",
    # analysis
    "pH": "pH",
    "uS/cm": "microsiemens per centimetre",
    "mS/cm": "millisiemens per centimetre",
    "mg/l": "milligrams per litre",
    "ppm": "parts per million",
    "NTU": "nephelometric turbidity units",
    "%": "percent",
    "%[sat]": "percent saturation",
    "kg/m3": "kilograms per cubic metre",
    # electrical, mechanical
    "V": "volts",
    "mA": "milliamperes",
    "A": "amperes",
    "W": "watts",
    "kW": "kilowatts",
    "kWh": "kilowatt hours",
    "MWh": "megawatt hours",
    "Hz": "hertz",
    "rpm": "revolutions per minute",
    "mm/s": "millimetres per second",
    "s": "seconds",
    "h": "hours",
    "1": "no unit (count or ratio)",
}

UNIT_CHOICES: Final = [(code, f"{code} — {label}") for code, label in UNITS.items()]
UNIT_CODES: Final = frozenset(UNITS)
