"""The agent's configuration file, ``edge.toml``, parsed into frozen structs.

Everything is checked when the file is loaded, before anything connects: unknown keys, wrong
types, out-of-range numbers, a cloud URL that is not ``https://``, point keys and unit codes the
cloud would refuse, duplicate names. ``ConfigError`` names the key at fault with its path, e.g.
``sources[0].instruments[1].points[0].register: Expected `int` >= 0``.

Shape (relative paths are relative to the agent's working directory)::

    [cloud]
    url = "https://fieldlink.example.com"      # https only
    ca = "/etc/fieldlink/ca.pem"                # the CA the cloud's certificate must chain to
    credential_file = "/var/lib/fieldlink/credential"

    [buffer]                                    # optional
    path = "/var/lib/fieldlink/buffer.sqlite"
    max_mb = 512

    [update]                                    # optional: signed updates and configuration
    home = "/var/lib/fieldlink"                 # default: this file's directory
    check_interval_s = 3600                     # ±20 % jitter; a check also follows the cloud
    health_timeout_s = 120                      # the supervisor's wait for a healthy start

    [[sources]]
    name = "plant-modbus"
    kind = "modbus"                             # modbus | opcua | simulator
    host = "192.0.2.10"
    port = 502
    unit_id = 1
    poll_ms = 1000                              # ±10 % jitter
    timeout_ms = 3000
    max_gap = 0                                 # unused registers one request may span

    [[sources.instruments]]
    tag = "FIT-101"
    manufacturer = "Endress+Hauser"             # these four are announced for discovery
    product_code = "Promag 10W"
    serial_number = "X1234"
    firmware_version = "1.2.0"
    health_register = 100                       # optional NE 107 status, uint16 enum:
    health_table = "holding"                    #   0 ok, 1 failure, 2 function check,
                                                #   3 out of specification, 4 maintenance
    [[sources.instruments.points]]
    key = "volume_flow"                         # lowercase, digits, _ or -
    unit = "m3/h"                               # a unit code the cloud knows
    description = "Volume flow"
    table = "holding"                           # holding (FC 3) | input (FC 4)
    register = 0                                # 0-based address
    type = "float32"                            # int16 uint16 int32 uint32 float32 float64
    byte_order = "big"                          # within each 16-bit register
    word_order = "big"                          # big: most significant register first
    scale = 1.0                                 # value = raw * scale + offset
    offset = 0.0

    [[sources]]
    name = "plant-opcua"
    kind = "opcua"
    endpoint = "opc.tcp://192.0.2.11:4840/"
    security_mode = "None"                      # None | Sign | SignAndEncrypt
    security_policy = "Basic256Sha256"
    certificate = "/etc/fieldlink/opcua-client.pem"   # Sign / SignAndEncrypt: this client's
    private_key = "/etc/fieldlink/opcua-client.key"   # certificate and key (key mode 0600)
    server_certificate = "/etc/fieldlink/opcua-server.pem"  # optional: pin the server
    [[sources.instruments]]
    tag = "TIT-201"
    health_node = "ns=2;s=TIT-201.DeviceHealth"  # optional, DI DeviceHealth enumeration
    [[sources.instruments.points]]
    key = "temperature"; unit = "Cel"; node_id = "ns=2;s=TIT-201.temperature"

    [[sources]]
    name = "demo"
    kind = "simulator"                          # in-process plant physics, no network
    seed = 1
    # [[sources.instruments]] tag = "FIT-900"; model = "flow"   (default: the demo plant)
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from fieldlink.edge.model import POINT_KEY, UNIT_CODES
from fieldlink.edge.plant.catalog import PLANT
from fieldlink.kit.errors import FieldlinkError

__all__ = [
    "REGISTER_COUNT",
    "BufferConfig",
    "CloudConfig",
    "ConfigError",
    "EdgeConfig",
    "ModbusInstrument",
    "ModbusPoint",
    "ModbusSource",
    "OpcUaInstrument",
    "OpcUaPoint",
    "OpcUaSource",
    "SimulatedInstrument",
    "SimulatorSource",
    "Source",
    "UpdateConfig",
    "check_sources",
    "convert",
    "load_config",
    "parse_config",
]


_T = TypeVar("_T")


class ConfigError(FieldlinkError):
    code = "edge_config_invalid"
    kind = "invalid"


RegisterType = Literal["int16", "uint16", "int32", "uint32", "float32", "float64"]
REGISTER_COUNT: Final[dict[str, int]] = {
    "int16": 1,
    "uint16": 1,
    "int32": 2,
    "uint32": 2,
    "float32": 2,
    "float64": 4,
}
Order = Literal["big", "little"]
Table = Literal["holding", "input"]

Text = Annotated[str, Meta(max_length=100)]
Tag = Annotated[str, Meta(min_length=1, max_length=64)]
Name = Annotated[str, Meta(min_length=1, max_length=64)]
Register = Annotated[int, Meta(ge=0, le=65535)]
PollMs = Annotated[int, Meta(ge=100, le=3_600_000)]
TimeoutMs = Annotated[int, Meta(ge=100, le=60_000)]
FilePath = Annotated[str, Meta(min_length=1, max_length=4096)]


class _Struct(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class CloudConfig(_Struct, frozen=True, kw_only=True):
    url: str
    ca: FilePath
    credential_file: FilePath

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"url must be an https:// URL (got {self.url!r}); http is refused")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("url must be https://host[:port] with no user, query or fragment")


class BufferConfig(_Struct, frozen=True, kw_only=True):
    path: FilePath = "var/edge/buffer.sqlite"
    max_mb: Annotated[int, Meta(ge=1, le=1_048_576)] = 512


class UpdateConfig(_Struct, frozen=True, kw_only=True):
    # Where slots, trusted metadata and the applied configuration live; relative to this file.
    home: FilePath | None = None
    check_interval_s: Annotated[int, Meta(ge=60, le=7 * 86_400)] = 3600
    health_timeout_s: Annotated[int, Meta(ge=10, le=3600)] = 120


class _Point(_Struct, frozen=True, kw_only=True):
    key: str
    unit: str
    description: Annotated[str, Meta(max_length=200)] = ""

    def __post_init__(self) -> None:
        if not POINT_KEY.match(self.key):
            raise ValueError(
                f"key {self.key!r} must be 1 to 64 lowercase letters, digits, '_' or '-'"
            )
        if self.unit not in UNIT_CODES:
            raise ValueError(
                f"unit {self.unit!r} is not a unit code the cloud knows "
                f"(e.g. m3/h, bar, %, Cel, pH; see GET /api/v1/units)"
            )


class _Instrument(_Struct, frozen=True, kw_only=True):
    tag: Tag
    manufacturer: Text = ""
    product_code: Text = ""
    serial_number: Text = ""
    firmware_version: Text = ""

    def __post_init__(self) -> None:
        if self.tag != self.tag.strip():
            raise ValueError(f"tag {self.tag!r} has leading or trailing spaces")


class ModbusPoint(_Point, frozen=True, kw_only=True):
    register: Register
    type: RegisterType = "float32"
    byte_order: Order = "big"
    word_order: Order = "big"
    scale: float = 1.0
    offset: float = 0.0
    table: Table = "holding"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.scale) and math.isfinite(self.offset)):
            raise ValueError("scale and offset must be finite numbers")
        if self.register + REGISTER_COUNT[self.type] > 65536:
            raise ValueError(f"register: a {self.type} at {self.register} runs past 65535")


class ModbusInstrument(_Instrument, frozen=True, kw_only=True):
    points: Annotated[list[ModbusPoint], Meta(min_length=1, max_length=200)]
    health_register: Register | None = None
    health_table: Table = "holding"


class OpcUaPoint(_Point, frozen=True, kw_only=True):
    node_id: Annotated[str, Meta(min_length=1, max_length=512)]


class OpcUaInstrument(_Instrument, frozen=True, kw_only=True):
    points: Annotated[list[OpcUaPoint], Meta(min_length=1, max_length=200)]
    health_node: Annotated[str, Meta(min_length=1, max_length=512)] | None = None


SimModel = Literal["flow", "pressure", "level", "temperature", "ph"]


class SimulatedInstrument(_Instrument, frozen=True, kw_only=True):
    model: SimModel


class _Source(_Struct, frozen=True, kw_only=True):
    name: Name
    poll_ms: PollMs = 1000
    timeout_ms: TimeoutMs = 3000


class ModbusSource(_Source, tag="modbus", tag_field="kind", frozen=True, kw_only=True):
    host: Annotated[str, Meta(min_length=1, max_length=253)]
    instruments: Annotated[list[ModbusInstrument], Meta(min_length=1)]
    port: Annotated[int, Meta(ge=1, le=65535)] = 502
    unit_id: Annotated[int, Meta(ge=0, le=255)] = 1
    max_gap: Annotated[int, Meta(ge=0, le=124)] = 0

    def __post_init__(self) -> None:
        if "/" in self.host or any(c.isspace() for c in self.host):
            raise ValueError(f"host {self.host!r} must be a host name or address, not a URL")


SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]


class OpcUaSource(_Source, tag="opcua", tag_field="kind", frozen=True, kw_only=True):
    endpoint: str
    instruments: Annotated[list[OpcUaInstrument], Meta(min_length=1)]
    security_mode: SecurityMode = "None"
    security_policy: Literal["Basic256Sha256"] = "Basic256Sha256"
    certificate: FilePath | None = None
    private_key: FilePath | None = None
    server_certificate: FilePath | None = None

    def __post_init__(self) -> None:
        parts = urlsplit(self.endpoint)
        if parts.scheme != "opc.tcp" or not parts.hostname:
            raise ValueError(f"endpoint must be opc.tcp://host:port/… (got {self.endpoint!r})")
        if parts.username or parts.password:
            raise ValueError("endpoint must not carry a user name or password")
        if self.security_mode != "None" and (self.certificate is None or self.private_key is None):
            raise ValueError(
                f"security_mode {self.security_mode} needs certificate and private_key"
            )


class SimulatorSource(_Source, tag="simulator", tag_field="kind", frozen=True, kw_only=True):
    seed: int = 1
    instruments: list[SimulatedInstrument] = []


Source = ModbusSource | OpcUaSource | SimulatorSource


class EdgeConfig(_Struct, frozen=True, kw_only=True):
    cloud: CloudConfig
    buffer: BufferConfig = BufferConfig()
    update: UpdateConfig = UpdateConfig()
    sources: list[Source] = []


def check_sources(sources: Sequence[Source]) -> None:
    """The rules no single table can check: unique source names, tags and point keys.

    Shared by edge.toml and the signed per-device configuration (``edge.device_config``): a
    source list the cloud sends is held to exactly the rules of one written by hand.
    """
    names: set[str] = set()
    tags: dict[str, str] = {}
    for i, source in enumerate(sources):
        if source.name in names:
            raise ConfigError(f"sources[{i}].name: {source.name!r} is used by another source")
        names.add(source.name)
        if isinstance(source, SimulatorSource) and not source.instruments:
            # The demo plant's instruments, which this source reads when it names none.
            for tag in (spec.tag for spec in PLANT):
                if tag in tags:
                    raise ConfigError(
                        f"sources[{i}]: the simulated demo plant's {tag!r} is also in source "
                        f"{tags[tag]!r}; list this simulator's instruments with other tags"
                    )
                tags[tag] = source.name
        for j, instrument in enumerate(source.instruments):
            where = f"sources[{i}].instruments[{j}]"
            if instrument.tag in tags:
                raise ConfigError(
                    f"{where}.tag: {instrument.tag!r} is also in source {tags[instrument.tag]!r}"
                )
            tags[instrument.tag] = source.name
            if not isinstance(instrument, ModbusInstrument | OpcUaInstrument):
                continue
            keys: set[str] = set()
            for k, point in enumerate(instrument.points):
                if point.key in keys:
                    raise ConfigError(f"{where}.points[{k}].key: {point.key!r} appears twice")
                keys.add(point.key)


_UNKNOWN: Final = re.compile(r"^Object contains unknown field `(?P<key>[^`]*)`$")
_MISSING: Final = re.compile(r"^Object missing required field `(?P<key>[^`]*)`$")


def _where(message: str) -> str:
    # msgspec says "… - at `$.sources[0].port`"; we lead with the key, which is what a reader
    # of a TOML file looks for.
    text, sep, path = message.rpartition(" - at `")
    if not sep:
        text, path = message, "$`"
    path = path.rstrip("`").removeprefix("$").removeprefix(".")
    if unknown := _UNKNOWN.match(text):
        key = unknown["key"]
        return f"{path}.{key}: unknown key {key!r}" if path else f"{key}: unknown key {key!r}"
    if missing := _MISSING.match(text):
        key = missing["key"]
        return (
            f"{path}.{key}: required key is missing" if path else f"{key}: required key is missing"
        )
    return f"{path}: {text}" if path else text


def convert(raw: Any, kind: type[_T]) -> _T:
    """``raw`` (parsed TOML or JSON) as ``kind``, or ConfigError naming the key at fault."""
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as exc:
        raise ConfigError(_where(str(exc))) from exc


def parse_config(text: str) -> EdgeConfig:
    """The configuration in ``text`` (TOML), fully checked, or ConfigError naming the key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"edge.toml is not valid TOML: {exc}") from exc
    config = convert(raw, EdgeConfig)
    check_sources(config.sources)
    return config


def load_config(path: Path) -> EdgeConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text") from exc
    return parse_config(text)
