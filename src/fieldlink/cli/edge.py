"""``fieldlink edge …``: the agent's commands. Nothing here imports Django (checked by a test)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fieldlink import __version__

edge_app = typer.Typer(
    help="The edge agent: enroll this device once, then run it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@edge_app.command("enroll")
def enroll(
    url: Annotated[str, typer.Option(help="The cloud, e.g. https://fieldlink.example.com")],
    code: Annotated[
        str,
        typer.Option(
            help="The one-time enrollment code (fle_…) from the cloud's device page",
            envvar="FIELDLINK_ENROLLMENT_CODE",
        ),
    ],
    ca: Annotated[Path, typer.Option(help="CA bundle the cloud's certificate must chain to")],
    credential_file: Annotated[
        Path, typer.Option(help="Where to keep the device credential (mode 0600)")
    ] = Path("var/edge/credential"),
) -> None:
    """Exchange a one-time enrollment code for this device's credential."""
    from fieldlink.edge.enroll import EnrollmentError  # noqa: PLC0415
    from fieldlink.edge.enroll import enroll as do_enroll  # noqa: PLC0415

    try:
        done = do_enroll(
            url, code, ca_file=ca, credential_file=credential_file, software_version=__version__
        )
    except EnrollmentError as exc:
        typer.echo(f"fieldlink edge enroll: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"Enrolled as {done.device_name} ({done.device_id}); "
        f"credential stored in {done.credential_file} (mode 0600)."
    )


@edge_app.command("run")
def run(
    config: Annotated[Path, typer.Option(help="The agent's edge.toml")] = Path("edge.toml"),
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Run the agent: read the field, buffer every value on disk, send it to the cloud."""
    import asyncio  # noqa: PLC0415

    from fieldlink.edge.agent import main  # noqa: PLC0415
    from fieldlink.edge.config import ConfigError, load_config  # noqa: PLC0415
    from fieldlink.edge.enroll import EnrollmentError  # noqa: PLC0415
    from fieldlink.edge.uplink import UplinkConfigError  # noqa: PLC0415
    from fieldlink.kit.logging import configure_logging  # noqa: PLC0415

    configure_logging(log_level.upper())
    try:
        loaded = load_config(config)
        # Relative paths in the file are relative to the file, wherever the agent is started.
        code = asyncio.run(
            main(loaded, software_version=__version__, base_dir=config.resolve().parent)
        )
    except (ConfigError, EnrollmentError, UplinkConfigError) as exc:
        typer.echo(f"fieldlink edge run: {exc}", err=True)
        raise typer.Exit(2) from exc
    # 75 (slots.EXIT_RESTART_FOR_UPDATE) tells the supervisor to switch to the staged slot.
    raise typer.Exit(code)


@edge_app.command("supervise")
def supervise(
    config: Annotated[Path, typer.Option(help="The agent's edge.toml")] = Path("edge.toml"),
    home: Annotated[
        Path | None,
        typer.Option(
            help="Slots and update state (default: update.home in edge.toml, else its dir)"
        ),
    ] = None,
    health_timeout: Annotated[
        float,
        typer.Option(min=1.0, help="Seconds a new version has to reach the cloud, else rollback"),
    ] = 120.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error")] = "info",
) -> None:
    """Run the agent of the current slot; switch to a staged update, roll back a failed one."""
    from fieldlink.edge.slots import default_home  # noqa: PLC0415
    from fieldlink.edge.supervisor import SupervisorError  # noqa: PLC0415
    from fieldlink.edge.supervisor import supervise as run_supervisor  # noqa: PLC0415
    from fieldlink.kit.logging import configure_logging  # noqa: PLC0415

    configure_logging(log_level.upper())
    try:
        code = run_supervisor(config, home or default_home(config), health_timeout_s=health_timeout)
    except SupervisorError as exc:
        typer.echo(f"fieldlink edge supervise: {exc}", err=True)
        raise typer.Exit(2) from exc
    raise typer.Exit(code)
