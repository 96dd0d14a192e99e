"""``fieldlink plant``: the simulated plant (Modbus TCP and OPC UA instruments) for demos.

It listens on 127.0.0.1 by default: it plays the field instruments an agent reads. No Django is
loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Annotated

import typer


def plant(
    *,
    modbus_port: Annotated[int, typer.Option(help="Modbus TCP port")] = 5020,
    opcua_port: Annotated[int, typer.Option(help="OPC UA port")] = 4840,
    host: Annotated[str, typer.Option(help="Address both servers listen on")] = "127.0.0.1",
    seed: Annotated[int, typer.Option(help="Seed of the plant's random events")] = 1,
    write_config: Annotated[
        Path | None,
        typer.Option(
            help="Write the matching sources section into this edge.toml (created if missing)"
        ),
    ] = None,
    opcua_cert: Annotated[
        Path | None, typer.Option(help="Server certificate (PEM): also offer Basic256Sha256")
    ] = None,
    opcua_key: Annotated[Path | None, typer.Option(help="Private key for --opcua-cert")] = None,
) -> None:
    """Run a simulated water works: flow, pressure, level, temperature and pH instruments."""
    from fieldlink.edge.config import ConfigError  # noqa: PLC0415
    from fieldlink.edge.plant.run import PlantServers, run_plant, write_plant_config  # noqa: PLC0415
    from fieldlink.kit.logging import configure_logging  # noqa: PLC0415

    if (opcua_cert is None) != (opcua_key is None):
        typer.echo("fieldlink plant: --opcua-cert and --opcua-key go together", err=True)
        raise typer.Exit(2)
    configure_logging("WARNING")
    # asyncua warns at start that a demo server without keys offers no signing; that is the point.
    logging.getLogger("asyncua").setLevel(logging.ERROR)
    if write_config is not None:
        try:
            write_plant_config(
                write_config, host=host, modbus_port=modbus_port, opcua_port=opcua_port
            )
        except ConfigError as exc:
            typer.echo(f"fieldlink plant: {exc.message}", err=True)
            raise typer.Exit(2) from exc
        typer.echo(f"Sources for this plant written to {write_config}.")

    def ready(servers: PlantServers) -> None:
        typer.echo(f"Modbus TCP: {host}:{servers.modbus.port} (unit 1)")
        typer.echo(f"OPC UA:     {servers.opcua.endpoint}")
        typer.echo("Plant running; Ctrl-C stops it.")

    with contextlib.suppress(KeyboardInterrupt):
        try:
            asyncio.run(
                run_plant(
                    host=host,
                    modbus_port=modbus_port,
                    opcua_port=opcua_port,
                    seed=seed,
                    opcua_certificate=opcua_cert,
                    opcua_private_key=opcua_key,
                    ready=ready,
                )
            )
        except OSError as exc:
            typer.echo(f"fieldlink plant: cannot listen: {exc.strerror or exc}", err=True)
            raise typer.Exit(1) from exc
