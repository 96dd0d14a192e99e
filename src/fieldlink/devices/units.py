"""The unit code list lives in the wire contract (``fieldlink.protocol.units``): re-exported."""

from fieldlink.protocol.units import UNIT_CHOICES, UNITS

__all__ = ["UNITS", "UNIT_CHOICES"]
