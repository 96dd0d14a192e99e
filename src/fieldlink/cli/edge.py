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


def _home_for(config: Path, credential_file: Path) -> Path:
    """The agent's home: ``[update] home`` of edge.toml, its directory; else the credential's."""
    from fieldlink.edge.slots import default_home  # noqa: PLC0415

    return default_home(config) if config.exists() else credential_file.resolve().parent


@edge_app.command("enroll")
def enroll(  # noqa: PLR0917 - Typer maps each option to a parameter
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
    config: Annotated[
        Path, typer.Option(help="The agent's edge.toml (its [update] home is the default home)")
    ] = Path("edge.toml"),
    home: Annotated[
        Path | None,
        typer.Option(help="Where the trusted update metadata and device.json are kept"),
    ] = None,
    root: Annotated[
        Path | None,
        typer.Option(help="TUF root metadata to trust instead of downloading 1.root.json"),
    ] = None,
) -> None:
    """Exchange a one-time enrollment code for this device's credential; pin the update root."""
    from fieldlink.edge.enroll import EnrollmentError  # noqa: PLC0415
    from fieldlink.edge.enroll import enroll as do_enroll  # noqa: PLC0415

    try:
        done = do_enroll(
            url,
            code,
            ca_file=ca,
            credential_file=credential_file,
            software_version=__version__,
            home=home or _home_for(config, credential_file),
            root_file=root,
        )
    except EnrollmentError as exc:
        typer.echo(f"fieldlink edge enroll: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"Enrolled as {done.device_name} ({done.device_id}); "
        f"credential stored in {done.credential_file} (mode 0600)."
    )
    if done.trust_error:
        # Enrolled all the same (the code is spent, the credential kept): telemetry works;
        # signed updates and configuration wait until a root is pinned with `pin-root`.
        typer.echo(
            f"fieldlink edge enroll: updates are not trusted yet: {done.trust_error} "
            "Once the cloud has published its repository, run `fieldlink edge pin-root`.",
            err=True,
        )
        return
    typer.echo(f"Update trust anchor pinned at {done.trust_anchor}.")


@edge_app.command("pin-root")
def pin_root(  # noqa: PLR0917 - Typer maps each option to a parameter
    url: Annotated[str, typer.Option(help="The cloud, e.g. https://fieldlink.example.com")],
    ca: Annotated[Path, typer.Option(help="CA bundle the cloud's certificate must chain to")],
    credential_file: Annotated[
        Path, typer.Option(help="The device credential from enrollment")
    ] = Path("var/edge/credential"),
    config: Annotated[
        Path, typer.Option(help="The agent's edge.toml (its [update] home is the default home)")
    ] = Path("edge.toml"),
    home: Annotated[Path | None, typer.Option(help="The agent's home")] = None,
    root: Annotated[
        Path | None,
        typer.Option(help="TUF root metadata to trust instead of downloading 1.root.json"),
    ] = None,
) -> None:
    """Pin the update trust anchor when enrollment could not (no repository published yet).

    What enrollment does, later: the first root is downloaded with this device's credential over
    the CA-pinned connection (or taken from --root). An existing anchor is never replaced: root
    keys change by signed rotation, which the agent follows by itself.
    """
    from fieldlink.edge import enroll as enrolling  # noqa: PLC0415

    where = home or _home_for(config, credential_file)
    anchor = enrolling.trust_anchor_path(where)
    if anchor.exists():
        typer.echo(f"fieldlink edge pin-root: {anchor} is pinned already.", err=True)
        raise typer.Exit(1)
    try:
        if root is not None:
            data = root.read_bytes()
        else:
            data = enrolling.download_root(
                enrolling.check_https(url),
                ca_file=ca,
                credential=enrolling.read_credential(credential_file),
            )
        path = enrolling.pin_root(where, data, where=str(root or "the downloaded root"))
    except (enrolling.EnrollmentError, OSError) as exc:
        typer.echo(f"fieldlink edge pin-root: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"Update trust anchor pinned at {path}.")


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
