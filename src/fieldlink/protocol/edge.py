"""Edge ⇄ cloud messages besides the telemetry batch: enrollment, rotation, discovery, status.

Shared by the agent and the cloud; no I/O and nothing of ours imported. ``docs/protocol.md`` is
the contract in words. Every request body is a msgspec struct that refuses unknown fields, and
every string has a length bound checked by ``check_*`` before anything is stored.
"""

from __future__ import annotations

from typing import Final

import msgspec

from fieldlink.protocol.telemetry import BatchRefused

__all__ = [
    "ANNOUNCE_PATH",
    "ENROLL_PATH",
    "MAX_INSTRUMENTS",
    "MAX_POINTS_PER_INSTRUMENT",
    "ROTATE_PATH",
    "Announce",
    "AnnounceAck",
    "CredentialIssued",
    "EnrollRequest",
    "InstrumentAnnounce",
    "PointAnnounce",
    "decode_announce",
    "decode_enroll",
]

ENROLL_PATH: Final = "/edge/v1/enroll"
ROTATE_PATH: Final = "/edge/v1/credential"
ANNOUNCE_PATH: Final = "/edge/v1/announce"

MAX_INSTRUMENTS: Final = 1_000
MAX_POINTS_PER_INSTRUMENT: Final = 200
MAX_TEXT: Final = 100  # manufacturer, product code, serial number, software version
MAX_TAG: Final = 64
MAX_KEY: Final = 64
MAX_DESCRIPTION: Final = 200
MAX_ERROR_TEXT: Final = 300


class EnrollRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """POST /edge/v1/enroll (no credential yet): the one-time code from the cloud's UI/API."""

    code: str
    software_version: str = ""


class CredentialIssued(msgspec.Struct, frozen=True):
    """The answer to enrollment and to rotation: the credential, shown this once."""

    device_id: str
    device_name: str
    credential: str


class PointAnnounce(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    key: str
    unit: str
    description: str = ""


class InstrumentAnnounce(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    tag: str
    manufacturer: str = ""
    product_code: str = ""
    serial_number: str = ""
    firmware_version: str = ""
    points: list[PointAnnounce] = []


class Announce(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """POST /edge/v1/announce: the instruments the agent reads, so the cloud can create them."""

    instruments: list[InstrumentAnnounce]


class AnnounceAck(msgspec.Struct, frozen=True):
    created_assets: int
    created_points: int
    updated_assets: int


_enroll_decoder: Final = msgspec.json.Decoder(EnrollRequest)
_announce_decoder: Final = msgspec.json.Decoder(Announce)


def _refuse(message: str) -> BatchRefused:
    return BatchRefused("body_invalid", message)


def _bounded(value: str, limit: int, what: str) -> None:
    if len(value) > limit:
        raise _refuse(f"{what} is longer than {limit} characters.")


def decode_enroll(body: bytes) -> EnrollRequest:
    try:
        request = _enroll_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise _refuse(f"The enrollment request is not valid: {exc}") from exc
    _bounded(request.code, 128, "code")
    _bounded(request.software_version, MAX_TEXT, "software_version")
    return request


def decode_announce(body: bytes) -> Announce:
    """An announcement, checked for sizes; a refusal names the instrument or point at fault."""
    try:
        announce = _announce_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise _refuse(f"The announcement is not valid: {exc}") from exc
    if len(announce.instruments) > MAX_INSTRUMENTS:
        raise BatchRefused(
            "body_too_large",
            f"At most {MAX_INSTRUMENTS} instruments per announcement.",
            kind="too_large",
        )
    for i, instrument in enumerate(announce.instruments):
        where = f"instruments[{i}]"
        if not instrument.tag.strip():
            raise _refuse(f"{where}.tag is empty.")
        _bounded(instrument.tag, MAX_TAG, f"{where}.tag")
        for name in ("manufacturer", "product_code", "serial_number", "firmware_version"):
            _bounded(getattr(instrument, name), MAX_TEXT, f"{where}.{name}")
        if len(instrument.points) > MAX_POINTS_PER_INSTRUMENT:
            raise _refuse(f"{where} has more than {MAX_POINTS_PER_INSTRUMENT} points.")
        for j, point in enumerate(instrument.points):
            _bounded(point.key, MAX_KEY, f"{where}.points[{j}].key")
            _bounded(point.unit, 16, f"{where}.points[{j}].unit")
            _bounded(point.description, MAX_DESCRIPTION, f"{where}.points[{j}].description")
    return announce
