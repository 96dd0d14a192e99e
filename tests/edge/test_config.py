"""edge.toml: everything is checked at load, and a refusal names the key at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from fieldlink.devices.services import POINT_KEY as CLOUD_POINT_KEY
from fieldlink.devices.units import UNITS
from fieldlink.edge.config import (
    ConfigError,
    ModbusSource,
    OpcUaSource,
    SimulatorSource,
    load_config,
    parse_config,
)
from fieldlink.edge.model import POINT_KEY, UNIT_CODES

GOOD = """
[cloud]
url = "https://fieldlink.example.com"
ca = "/etc/fieldlink/ca.pem"
credential_file = "/var/lib/fieldlink/credential"

[[sources]]
name = "line-1"
kind = "modbus"
host = "192.0.2.10"
port = 5020
[[sources.instruments]]
tag = "FIT-101"
manufacturer = "Endress+Hauser"
health_register = 100
[[sources.instruments.points]]
key = "volume_flow"
unit = "m3/h"
register = 0
type = "float32"
word_order = "little"
scale = 0.1

[[sources]]
name = "panel"
kind = "opcua"
endpoint = "opc.tcp://192.0.2.11:4840/"
security_mode = "Sign"
certificate = "client.pem"
private_key = "client.key"
[[sources.instruments]]
tag = "AIT-101"
health_node = "ns=2;s=AIT-101.DeviceHealth"
[[sources.instruments.points]]
key = "ph"
unit = "pH"
node_id = "ns=2;s=AIT-101.ph"

[[sources]]
name = "demo"
kind = "simulator"
seed = 7
[[sources.instruments]]
tag = "FIT-900"
model = "flow"
"""


def refused(text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    return caught.value.message


def test_a_complete_file_loads_into_typed_frozen_structs(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(GOOD)
    config = load_config(path)
    modbus, opcua, simulator = config.sources
    assert isinstance(modbus, ModbusSource)
    assert isinstance(opcua, OpcUaSource)
    assert isinstance(simulator, SimulatorSource)
    point = modbus.instruments[0].points[0]
    assert (point.register, point.type, point.byte_order, point.word_order) == (
        0,
        "float32",
        "big",
        "little",
    )
    assert (point.scale, point.table, modbus.unit_id, modbus.poll_ms) == (0.1, "holding", 1, 1000)
    assert modbus.instruments[0].health_register == 100
    assert opcua.security_mode == "Sign"
    assert opcua.instruments[0].points[0].node_id == "ns=2;s=AIT-101.ph"
    assert simulator.seed == 7
    assert config.buffer.max_mb == 512
    with pytest.raises(AttributeError):
        modbus.port = 1  # type: ignore[misc]


def test_plain_http_cloud_url_is_refused() -> None:
    message = refused(GOOD.replace("https://fieldlink", "http://fieldlink"))
    assert message.startswith("cloud:")
    assert "url must be an https:// URL" in message


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("port = 5020", "port = 5020\npotr = 1", "sources[0].potr: unknown key 'potr'"),
        ("[cloud]", 'colour = "red"\n[cloud]', "colour: unknown key 'colour'"),
        (
            "scale = 0.1",
            "scale = 0.1\nregsiter = 3",
            "sources[0].instruments[0].points[0].regsiter: unknown key",
        ),
        (
            "register = 0",
            'register = "0"',
            "sources[0].instruments[0].points[0].register: Expected `int`, got `str`",
        ),
        ("port = 5020", "port = 70000", "sources[0].port: Expected `int` <= 65535"),
        (
            'type = "float32"',
            'type = "float16"',
            "sources[0].instruments[0].points[0].type: Invalid enum value 'float16'",
        ),
        ('kind = "modbus"', 'kind = "profinet"', "sources[0].kind: Invalid value 'profinet'"),
        ("seed = 7", "seed = 7.5", "sources[2].seed: Expected `int`, got `float`"),
        ('unit = "m3/h"', 'unit = "C"', "unit 'C' is not a unit code the cloud knows"),
        (
            'key = "ph"',
            'key = "pH value"',
            "sources[1].instruments[0].points[0]: key 'pH value' must be",
        ),
        ("scale = 0.1", "scale = inf", "scale and offset must be finite"),
        ("register = 0", "register = 65535", "register: a float32 at 65535 runs past 65535"),
        (
            'certificate = "client.pem"',
            "certificate = 3",
            "sources[1].certificate: Expected `str | null`, got `int`",
        ),
        (
            'certificate = "client.pem"\n',
            "",
            "security_mode Sign needs certificate and private_key",
        ),
        ('endpoint = "opc.tcp://', 'endpoint = "http://', "endpoint must be opc.tcp://"),
        ('url = "https://fieldlink.example.com"\n', "", "cloud.url: required key is missing"),
        (
            'name = "panel"',
            'name = "line-1"',
            "sources[1].name: 'line-1' is used by another source",
        ),
        (
            'tag = "FIT-900"',
            'tag = "FIT-101"',
            "sources[2].instruments[0].tag: 'FIT-101' is also in source 'line-1'",
        ),
        (
            'host = "192.0.2.10"',
            'host = "tcp://192.0.2.10/"',
            "host 'tcp://192.0.2.10/' must be a host name",
        ),
    ],
)
def test_bad_files_are_refused_naming_the_key(old: str, new: str, expected: str) -> None:
    assert old in GOOD
    assert expected in refused(GOOD.replace(old, new, 1))


def test_duplicate_point_keys_and_default_simulator_tags_are_refused() -> None:
    twice = GOOD.replace(
        'key = "ph"\nunit = "pH"\nnode_id = "ns=2;s=AIT-101.ph"',
        'key = "ph"\nunit = "pH"\nnode_id = "ns=2;s=AIT-101.ph"\n'
        '[[sources.instruments.points]]\nkey = "ph"\nunit = "pH"\nnode_id = "ns=2;s=x"',
    )
    assert "sources[1].instruments[0].points[1].key: 'ph' appears twice" in refused(twice)
    # A simulator without instruments reads the demo plant, whose tags then count too.
    plant_twice = GOOD.replace('tag = "FIT-900"\nmodel = "flow"\n', "").replace(
        "[[sources.instruments]]\n\n", ""
    )
    plant_twice = plant_twice.rstrip().removesuffix("[[sources.instruments]]")
    assert "demo plant's 'FIT-101' is also in source 'line-1'" in refused(plant_twice)


def test_not_toml_and_unreadable_files_are_refused(tmp_path: Path) -> None:
    assert "not valid TOML" in refused("[cloud\nurl=")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_edge_unit_codes_and_key_rule_match_the_cloud() -> None:
    # Both sides use the wire contract's unit list; the key rule is a copy kept honest here.
    assert set(UNITS) == UNIT_CODES
    assert POINT_KEY.pattern == CLOUD_POINT_KEY.pattern
