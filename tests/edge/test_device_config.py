"""The signed per-device configuration: parsed like edge.toml, refused naming the key at fault."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fieldlink.edge.config import ConfigError, ModbusSource, SimulatorSource, parse_config
from fieldlink.edge.device_config import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_TEXT,
    load_config_target,
    parse_desired_config,
)

DEVICE = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
OTHER = "0b7f2a44-6a43-4f0c-9d7e-3d7a9b6f0c11"

SOURCES = """
[[sources]]
name = "line-1"
kind = "modbus"
host = "192.0.2.10"
[[sources.instruments]]
tag = "FIT-101"
[[sources.instruments.points]]
key = "volume_flow"
unit = "m3/h"
register = 0

[[sources]]
name = "demo"
kind = "simulator"
[[sources.instruments]]
tag = "PIT-900"
model = "pressure"
"""


def target(desired: dict[str, Any], *, device_id: str = DEVICE, version: int = 3) -> bytes:
    doc = {"format": 1, "device_id": device_id, "version": version, **desired}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def test_desired_toml_becomes_canonical_json_the_agent_loads_back() -> None:
    desired = parse_desired_config('log_level = "debug"\n' + SOURCES)
    assert set(desired) == {"log_level", "sources"}
    assert desired["log_level"] == "debug"
    # Every default is written out: the device runs what was reviewed, not its own defaults.
    modbus = desired["sources"][0]
    assert modbus["kind"] == "modbus"
    assert (modbus["port"], modbus["unit_id"], modbus["poll_ms"]) == (502, 1, 1000)

    loaded = load_config_target(target(desired), DEVICE)
    assert loaded.version == 3
    assert loaded.log_level == "debug"
    assert isinstance(loaded.sources[0], ModbusSource)
    assert isinstance(loaded.sources[1], SimulatorSource)


def test_the_same_sources_parse_to_the_same_structs_as_in_edge_toml() -> None:
    edge_toml = (
        '[cloud]\nurl = "https://cloud.example"\nca = "ca.pem"\ncredential_file = "c"\n' + SOURCES
    )
    desired = load_config_target(target(parse_desired_config(SOURCES)), DEVICE)
    assert desired.sources == parse_config(edge_toml).sources


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ('[cloud]\nurl = "https://attacker.example"\n', "cloud: unknown key"),
        ('[buffer]\npath = "/tmp/other"\n', "buffer: unknown key"),
        ('log_level = "trace"\n', "log_level"),
        (SOURCES.replace('host = "192.0.2.10"', "host = 1"), "sources[0].host"),
        (SOURCES.replace("register = 0", "register = 70000"), "sources[0].instruments[0]"),
        (SOURCES.replace('unit = "m3/h"', 'unit = "furlong"'), "sources[0].instruments[0]"),
        (SOURCES.replace('tag = "PIT-900"', 'tag = "FIT-101"'), "sources[1].instruments[0].tag"),
        (SOURCES.replace('name = "demo"', 'name = "line-1"'), "sources[1].name"),
        ("[[sources]]\nname = 'x'\nkind = 'ftp'\n", "sources[0]"),
    ],
)
def test_a_desired_configuration_edge_toml_would_refuse_is_refused_naming_the_key(
    toml: str, key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_desired_config(toml)
    assert key in caught.value.message


def test_the_remote_configuration_cannot_redirect_the_device_to_another_cloud() -> None:
    desired = parse_desired_config(SOURCES)
    forged = target({**desired, "cloud": {"url": "https://attacker.example"}})
    with pytest.raises(ConfigError, match="cloud: unknown key"):
        load_config_target(forged, DEVICE)


def test_invalid_toml_and_oversized_text_are_refused() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_desired_config("[[sources]\n")
    with pytest.raises(ConfigError, match="larger than"):
        parse_desired_config("#" * (MAX_CONFIG_TEXT + 1))


def test_config_for_another_device_refused() -> None:
    data = target(parse_desired_config(SOURCES), device_id=OTHER)
    with pytest.raises(ConfigError, match="device_id: this configuration is for device"):
        load_config_target(data, DEVICE)


def test_the_device_id_compares_as_a_uuid_not_as_text() -> None:
    data = target(parse_desired_config(SOURCES), device_id=DEVICE.upper())
    assert load_config_target(data, DEVICE).device_id == DEVICE.upper()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not valid JSON"),
        (b"[1, 2]", "not a JSON object"),
        (target({}).replace(b'"format":1', b'"format":2'), "format: 2"),
        (target({}, version=0), "version"),
        (target({}, device_id="not-a-uuid"), "device_id"),
        (target({"extra": True}), "extra: unknown key"),
        (target({"sources": [{"kind": "simulator", "name": "a", "poll_ms": 1}]}), "poll_ms"),
        (b" " * (MAX_CONFIG_BYTES + 1), "larger than"),
    ],
)
def test_a_malformed_configuration_target_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_target(data, DEVICE)
    assert message in caught.value.message


def test_duplicate_tags_are_refused_in_a_target_as_in_edge_toml() -> None:
    desired = parse_desired_config(SOURCES)
    desired["sources"][1]["instruments"][0]["tag"] = "FIT-101"
    with pytest.raises(ConfigError, match=r"sources\[1\]\.instruments\[0\]\.tag"):
        load_config_target(target(desired), DEVICE)
