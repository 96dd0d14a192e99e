"""The simulated plant as a process: physics ticking, a Modbus TCP and an OPC UA server.

``fieldlink plant`` runs it. It listens (it plays the field instruments); the agent never does.
``sources_toml`` / ``write_plant_config`` produce the matching ``[[sources]]`` for the agent's
``edge.toml``, so nobody types a register map.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from fieldlink.edge.config import ConfigError, parse_config
from fieldlink.edge.plant.catalog import PLANT, InstrumentSpec, health_node_id, node_id
from fieldlink.edge.plant.modbus import RegisterServer, register_image, table_sizes
from fieldlink.edge.plant.physics import Plant
from fieldlink.kit.files import write_atomically

__all__ = [
    "BEGIN_MARK",
    "END_MARK",
    "PlantServers",
    "run_plant",
    "sources_toml",
    "write_plant_config",
]

BEGIN_MARK: Final = "# >>> fieldlink plant: generated sources (replaced by --write-config) >>>"
END_MARK: Final = "# <<< fieldlink plant <<<"
MODBUS_SOURCE: Final = "plant-modbus"
OPCUA_SOURCE: Final = "plant-opcua"


class PlantServers:
    """The plant's physics and both servers; ``start``, then ``tick`` now and then, ``stop``."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        modbus_port: int = 5020,
        opcua_port: int = 4840,
        seed: int = 1,
        specs: Sequence[InstrumentSpec] = PLANT,
        opcua_certificate: Path | None = None,
        opcua_private_key: Path | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        from fieldlink.edge.plant.opcua import PlantOpcUaServer  # noqa: PLC0415

        self.plant = Plant(seed, specs)
        self._modbus_specs = [s for s in specs if s.protocol == "modbus"]
        self._sizes = table_sizes(self._modbus_specs)
        self.modbus = RegisterServer(
            host,
            modbus_port,
            holding=[0] * max(self._sizes["holding"], 1),
            input_=[0] * max(self._sizes["input"], 1),
        )
        self.opcua = PlantOpcUaServer(
            host,
            opcua_port,
            [s for s in specs if s.protocol == "opcua"],
            certificate=opcua_certificate,
            private_key=opcua_private_key,
        )
        self._monotonic = monotonic
        self._last = monotonic()

    async def start(self) -> None:
        await self.modbus.start()
        try:
            await self.opcua.start()
        except BaseException:
            await self.modbus.stop()
            raise
        self._last = self._monotonic()
        await self.publish()

    async def stop(self) -> None:
        try:
            await self.opcua.stop()
        finally:
            await self.modbus.stop()

    async def publish(self) -> None:
        samples = self.plant.samples()
        image = register_image(self._modbus_specs, samples, self._sizes)
        self.modbus.holding[: len(image["holding"])] = image["holding"]
        self.modbus.input[: len(image["input"])] = image["input"]
        await self.opcua.publish(samples)

    async def tick(self) -> None:
        now = self._monotonic()
        self.plant.advance(now - self._last)
        self._last = now
        await self.publish()


async def run_plant(
    *,
    host: str = "127.0.0.1",
    modbus_port: int = 5020,
    opcua_port: int = 4840,
    seed: int = 1,
    tick_s: float = 0.5,
    opcua_certificate: Path | None = None,
    opcua_private_key: Path | None = None,
    ready: Callable[[PlantServers], None] | None = None,
) -> None:
    """Serve the plant until cancelled; ``ready`` is called once both servers listen."""
    servers = PlantServers(
        host=host,
        modbus_port=modbus_port,
        opcua_port=opcua_port,
        seed=seed,
        opcua_certificate=opcua_certificate,
        opcua_private_key=opcua_private_key,
    )
    await servers.start()
    try:
        if ready is not None:
            ready(servers)
        while True:
            await asyncio.sleep(tick_s)
            await servers.tick()
    finally:
        await servers.stop()


def _s(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes.
    return json.dumps(text)


def _identity(spec: InstrumentSpec) -> list[str]:
    return [
        f"tag = {_s(spec.tag)}",
        f"manufacturer = {_s(spec.manufacturer)}",
        f"product_code = {_s(spec.product_code)}",
        f"serial_number = {_s(spec.serial_number)}",
        f"firmware_version = {_s(spec.firmware_version)}",
    ]


def sources_toml(
    *,
    host: str = "127.0.0.1",
    modbus_port: int = 5020,
    opcua_port: int = 4840,
    poll_ms: int = 1000,
    specs: Sequence[InstrumentSpec] = PLANT,
) -> str:
    """The ``[[sources]]`` that read this plant: one Modbus source and one OPC UA source."""
    lines = [
        "[[sources]]",
        f'name = "{MODBUS_SOURCE}"',
        'kind = "modbus"',
        f"host = {_s(host)}",
        f"port = {modbus_port}",
        "unit_id = 1",
        f"poll_ms = {poll_ms}",
    ]
    for spec in (s for s in specs if s.protocol == "modbus"):
        lines += ["", "[[sources.instruments]]", *_identity(spec)]
        if spec.health_register is not None:
            lines += [
                f"health_register = {spec.health_register}",
                f'health_table = "{spec.health_table}"',
            ]
        for point in spec.points:
            slot = point.modbus
            if slot is None:
                continue
            lines += [
                "[[sources.instruments.points]]",
                f"key = {_s(point.key)}",
                f"unit = {_s(point.unit)}",
                f"description = {_s(point.description)}",
                f'table = "{slot.table}"',
                f"register = {slot.register}",
                f'type = "{slot.type}"',
                f'byte_order = "{slot.byte_order}"',
                f'word_order = "{slot.word_order}"',
                f"scale = {slot.scale!r}",
                f"offset = {slot.offset!r}",
            ]
    lines += [
        "",
        "[[sources]]",
        f'name = "{OPCUA_SOURCE}"',
        'kind = "opcua"',
        f"endpoint = {_s(f'opc.tcp://{host}:{opcua_port}/fieldlink/')}",
        'security_mode = "None"',
        f"poll_ms = {poll_ms}",
    ]
    for spec in (s for s in specs if s.protocol == "opcua"):
        lines += [
            "",
            "[[sources.instruments]]",
            *_identity(spec),
            f"health_node = {_s(health_node_id(spec.tag))}",
        ]
        for point in spec.points:
            lines += [
                "[[sources.instruments.points]]",
                f"key = {_s(point.key)}",
                f"unit = {_s(point.unit)}",
                f"description = {_s(point.description)}",
                f"node_id = {_s(node_id(spec.tag, point.key))}",
            ]
    return "\n".join(lines) + "\n"


_NEW_FILE_HEAD: Final = """\
# The Fieldlink edge agent's configuration (see src/fieldlink/edge/config.py for every key).
[cloud]
url = "https://localhost:8443"
ca = "var/tls/ca.pem"
credential_file = "var/edge/credential"

[buffer]
path = "var/edge/buffer.sqlite"
max_mb = 512

"""


def write_plant_config(
    path: Path, *, host: str = "127.0.0.1", modbus_port: int = 5020, opcua_port: int = 4840
) -> str:
    """Put the plant's ``[[sources]]`` into ``path`` and return the file's new text.

    A new file gets a ``[cloud]`` and ``[buffer]`` for a local ``fieldlink serve`` as well. In an
    existing file only the block between the plant's marker lines is replaced (or appended), so
    everything else stays as written. The result must load as a valid configuration, else
    ConfigError and nothing is written.
    """
    sources = sources_toml(host=host, modbus_port=modbus_port, opcua_port=opcua_port)
    block = f"{BEGIN_MARK}\n{sources}{END_MARK}\n"
    try:
        old = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        old, mode = None, 0o644
    if old is None:
        text = _NEW_FILE_HEAD + block
    elif BEGIN_MARK in old and END_MARK in old.split(BEGIN_MARK, 1)[1]:
        head, rest = old.split(BEGIN_MARK, 1)
        tail = rest.split(END_MARK, 1)[1].removeprefix("\n")
        text = head + block + tail
    else:
        text = old + ("" if old.endswith("\n") or not old else "\n") + "\n" + block
    try:
        parse_config(text)
    except ConfigError as exc:
        raise ConfigError(f"{path} would not be a valid configuration: {exc.message}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, text.encode(), mode)
    return text
