"""``fieldlink demo``: the cloud, a simulated plant and an enrolled edge agent, in one command.

What ``./dev run`` starts. Three processes, as in a real installation: ``fieldlink serve`` (the
cloud), ``fieldlink plant`` (instruments on real Modbus TCP and OPC UA servers on 127.0.0.1) and
``fieldlink edge supervise`` (the agent under its update supervisor; neither opens a port). On
the first run the demo organisation, its admin and the edge device are created, a signed-update
repository is set up (``ops.demo.ensure_update_repository``: device configuration can be signed
and applied; software releases need a release engineer's own keys), the agent is enrolled with a
one-time code over TLS and pins the repository's root, and the admin's generated password is
printed once. Ctrl-C stops everything; the agent's buffer
and the database survive for the next run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Final

import typer

from fieldlink import __version__

CHILD_RESTART_S: Final = 2.0
READY_TIMEOUT_S: Final = 120.0


def _edge_toml(var_dir: Path, url: str) -> str:
    # Absolute paths: the agent resolves relative ones against the file's own directory.
    return (
        "# Written by `fieldlink demo`: the agent's configuration for the simulated plant.\n"
        "[cloud]\n"
        f'url = "{url}"\n'
        f'ca = "{(var_dir / "tls" / "ca.pem").resolve()}"\n'
        f'credential_file = "{(var_dir / "demo" / "credential").resolve()}"\n'
        "\n[buffer]\n"
        f'path = "{(var_dir / "demo" / "buffer.sqlite").resolve()}"\n'
        "max_mb = 256\n\n"
    )


def _wait_ready(url: str, ca: Path, process: subprocess.Popen[bytes]) -> None:
    import httpx  # noqa: PLC0415

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise typer.Exit(1)
        if ca.is_file():
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", verify=str(ca), timeout=2).status_code == 200:
                    return
        time.sleep(0.5)
    typer.echo("fieldlink demo: the cloud did not become ready", err=True)
    raise typer.Exit(1)


def _wait_listening(ports: list[int], process: subprocess.Popen[bytes]) -> None:
    """Until the plant's servers accept connections (the agent would start with a failure)."""
    import socket  # noqa: PLC0415

    deadline = time.monotonic() + 30
    waiting = list(ports)
    while waiting and time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", waiting[0]), 1):
            waiting.pop(0)
            continue
        time.sleep(0.2)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


class _Children:
    """The three processes; a crashed plant or agent is started again, the cloud is not."""

    def __init__(self, commands: dict[str, list[str]]) -> None:
        self.commands = commands
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> None:
        self.running[name] = subprocess.Popen(self.commands[name], env=os.environ.copy())  # noqa: S603

    def watch(self) -> None:
        while True:
            time.sleep(1)
            if self.running["cloud"].poll() is not None:
                typer.echo("fieldlink demo: the cloud stopped; stopping everything", err=True)
                raise typer.Exit(1)
            for name in ("plant", "agent"):
                if self.running[name].poll() is not None:
                    # A crashed agent loses nothing (its buffer is on disk): start it again.
                    typer.echo(f"fieldlink demo: {name} exited; restarting it", err=True)
                    time.sleep(CHILD_RESTART_S)
                    self.start(name)

    def stop(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.terminate()
        for process in self.running.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def _ports(modbus_port: int, opcua_port: int) -> list[str]:
    return ["--modbus-port", str(modbus_port), "--opcua-port", str(opcua_port)]


def _enroll_agent(url: str, ca: Path, credential: Path, code: str, home: Path) -> None:
    from fieldlink.edge.enroll import EnrollmentError, enroll  # noqa: PLC0415

    try:
        enrolled = enroll(
            url,
            code,
            ca_file=ca,
            credential_file=credential,
            software_version=__version__,
            home=home,
        )
    except EnrollmentError as exc:
        typer.echo(f"fieldlink demo: enrolling the agent failed: {exc}", err=True)
        raise typer.Exit(1) from exc
    if enrolled.trust_error:
        typer.echo(f"fieldlink demo: no update trust anchor: {enrolled.trust_error}", err=True)
    typer.echo(f"Edge agent enrolled as {enrolled.device_name}.")


def _pin_root(url: str, ca: Path, credential: Path, home: Path) -> None:
    """An agent enrolled by an older demo has no update trust anchor yet: pin it as enrollment
    would (downloaded with its credential over the CA-pinned connection)."""
    from fieldlink.edge import enroll as enrolling  # noqa: PLC0415

    if enrolling.trust_anchor_path(home).exists():
        return
    try:
        data = enrolling.download_root(
            url, ca_file=ca, credential=enrolling.read_credential(credential)
        )
        enrolling.pin_root(home, data)
    except enrolling.EnrollmentError as exc:
        typer.echo(f"fieldlink demo: no update trust anchor: {exc}", err=True)


def demo(
    modbus_port: Annotated[int, typer.Option(help="The plant's Modbus TCP port")] = 5020,
    opcua_port: Annotated[int, typer.Option(help="The plant's OPC UA port")] = 4840,
) -> None:
    """Run the cloud, a simulated plant and an enrolled edge agent (what ./dev run starts)."""
    from fieldlink.cli.main import _boot  # noqa: PLC0415

    _boot()
    from django.conf import settings  # noqa: PLC0415
    from django.core.management import call_command  # noqa: PLC0415

    from fieldlink.edge.plant.run import write_plant_config  # noqa: PLC0415
    from fieldlink.ops.demo import (  # noqa: PLC0415
        ensure_demo,
        ensure_update_repository,
        new_enrollment_code,
    )

    fl = settings.FIELDLINK
    var_dir = Path(fl.var_dir)
    url = f"https://localhost:{fl.https_port}"
    ca = var_dir / "tls" / "ca.pem"
    call_command("migrate", interactive=False, verbosity=0)
    the_demo = ensure_demo(var_dir)
    ensure_update_repository()
    home = var_dir / "demo"
    config = var_dir / "demo" / "edge.toml"
    if not config.exists():
        config.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        config.write_text(_edge_toml(var_dir, url))
    write_plant_config(config, modbus_port=modbus_port, opcua_port=opcua_port)

    me = [sys.executable, "-m", "fieldlink.cli"]
    children = _Children(
        {
            "cloud": [*me, "serve"],
            "plant": [*me, "plant", *_ports(modbus_port, opcua_port)],
            # Under its supervisor, as in production: signed updates switch slots and roll back.
            "agent": [*me, "edge", "supervise", "--config", str(config), "--home", str(home)],
        }
    )
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        children.start("cloud")
        _wait_ready(url, ca, children.running["cloud"])
        credential = var_dir / "demo" / "credential"
        if not credential.exists():
            _enroll_agent(url, ca, credential, new_enrollment_code(the_demo), home)
        else:
            _pin_root(url, ca, credential, home)
        children.start("plant")
        _wait_listening([modbus_port, opcua_port], children.running["plant"])
        children.start("agent")
        _banner(url, ca, the_demo.email, the_demo.password)
        children.watch()
    except KeyboardInterrupt:
        typer.echo("\nStopping.")
    finally:
        children.stop()


def _banner(url: str, ca: Path, email: str, password: str | None) -> None:
    lines = [
        "",
        "Fieldlink demo is running: cloud, simulated plant and edge agent.",
        f"  Open {url}/ (trust {ca.resolve()} as a certificate authority)",
        f"  Sign in as {email}",
    ]
    if password is not None:
        lines.append(f"  Password (shown this once, not stored anywhere): {password}")
    else:
        lines.append(
            "  (the password was shown at the first run; 'Forgot password?' resets it, the"
            " mail lands in var/outbox/)"
        )
    lines.append("  Assets shows the plant's live values within seconds. Ctrl-C stops.")
    # Printed to the terminal only, never through the logging pipeline.
    typer.echo("\n".join(lines) + "\n")
