"""The signed per-device configuration: the part of edge.toml the cloud may change remotely.

Pure (no I/O): the cloud uses ``parse_desired_config`` to check what an operator typed before it
signs anything, and the agent uses ``load_config_target`` on the bytes TUF verified. Both go
through ``edge.config``'s structs and ``check_sources``, so a source list from the cloud is held
to exactly the rules of one written in edge.toml, and errors name the key the same way
(``sources[0].port: Expected `int` <= 65535``).

Only ``log_level`` and ``[[sources]]`` can be configured remotely. The cloud URL, the CA, the
credential file and the buffer stay in the device's own edge.toml on purpose: whoever holds the
cloud's online configuration key must not be able to point a device at another server, or at
its own buffer file.

The target (``config/<device uuid>.json``, canonical JSON)::

    {"format": 1, "device_id": "<uuid>", "version": 7, "log_level": "info", "sources": [...]}

A target for another device is refused even though it is correctly signed: bins are shared,
and a device must never run a configuration meant for its neighbour.
"""

from __future__ import annotations

import tomllib
import uuid
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta

from fieldlink.edge.config import ConfigError, Source, check_sources, convert

__all__ = [
    "LOG_LEVELS",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_TEXT",
    "DesiredConfig",
    "load_config_target",
    "parse_desired_config",
]

MAX_CONFIG_BYTES: Final = 1024 * 1024  # the signed target (JSON)
MAX_CONFIG_TEXT: Final = 256 * 1024  # the TOML an operator edits
MAX_SOURCES: Final = 100
TARGET_FORMAT: Final = 1

LogLevel = Literal["debug", "info", "warning", "error"]
LOG_LEVELS: Final = ("debug", "info", "warning", "error")


class _Desired(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    log_level: LogLevel = "info"
    sources: Annotated[list[Source], Meta(max_length=MAX_SOURCES)] = []


class DesiredConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A verified configuration target, its sources parsed into the poller's structs."""

    format: Literal[1]
    device_id: Annotated[str, Meta(min_length=1, max_length=64)]
    version: Annotated[int, Meta(ge=1, le=2**31 - 1)]
    log_level: LogLevel = "info"
    sources: Annotated[list[Source], Meta(max_length=MAX_SOURCES)] = []


def parse_desired_config(toml_text: str) -> dict[str, Any]:
    """The operator's TOML as the canonical dict the cloud stores and signs.

    Every default is written out, so the device runs exactly what was reviewed, whatever its
    own version's defaults are. Raises ConfigError naming the key at fault.
    """
    if len(toml_text.encode()) > MAX_CONFIG_TEXT:
        raise ConfigError(f"the configuration is larger than {MAX_CONFIG_TEXT // 1024} KiB")
    try:
        raw = tomllib.loads(toml_text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"the configuration is not valid TOML: {exc}") from exc
    desired = convert(raw, _Desired)
    check_sources(desired.sources)
    canonical: dict[str, Any] = msgspec.to_builtins(desired)
    return {"log_level": canonical["log_level"], "sources": canonical["sources"]}


def _canonical_id(value: str, what: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise ConfigError(f"{what}: {value[:64]!r} is not a device id") from exc


def load_config_target(data: bytes, device_id: str) -> DesiredConfig:
    """The configuration target's bytes (already verified by TUF) checked for this device.

    Refused with ConfigError: more than ``MAX_CONFIG_BYTES``, not JSON, another format, a
    config for another device, any source the edge.toml rules refuse.
    """
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"the configuration is larger than {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise ConfigError(f"the configuration is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError("the configuration is not a JSON object")
    if raw.get("format") != TARGET_FORMAT:
        raise ConfigError(f"format: {raw.get('format')!r} is not a format this agent reads (1)")
    desired = convert(raw, DesiredConfig)
    ours = _canonical_id(device_id, "this device's id")
    if _canonical_id(desired.device_id, "device_id") != ours:
        raise ConfigError(
            f"device_id: this configuration is for device {desired.device_id}, not for {ours}"
        )
    check_sources(desired.sources)
    return desired
