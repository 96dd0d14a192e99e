"""The ``fieldlink`` command."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from fieldlink import __version__
from fieldlink.cli.demo import demo
from fieldlink.cli.edge import edge_app
from fieldlink.cli.plant import plant
from fieldlink.cli.release import release_app, updates_app

app = typer.Typer(
    name="fieldlink",
    help="Fieldlink: secure Industrial IoT platform (cloud and edge agent).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,  # tracebacks would bypass the redacting log layer
)


app.add_typer(edge_app, name="edge")
app.add_typer(release_app, name="release")
app.add_typer(updates_app, name="updates")
app.command("plant")(plant)
app.command("demo")(demo)


def _boot() -> None:
    """Load settings (refusing insecure production values), configure logging, set up Django."""
    from fieldlink.kit.errors import FieldlinkError  # noqa: PLC0415
    from fieldlink.kit.logging import configure_logging  # noqa: PLC0415
    from fieldlink.settings import load_settings  # noqa: PLC0415

    try:
        settings = load_settings()
    except FieldlinkError as exc:
        typer.echo(f"fieldlink: {exc.message}", err=True)
        raise typer.Exit(2) from exc
    except ValueError as exc:  # pydantic's ValidationError names the variable and the problem
        typer.echo(f"fieldlink: invalid settings:\n{exc}", err=True)
        raise typer.Exit(2) from exc
    configure_logging(settings.log_level, log_file=settings.log_file)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "fieldlink.cloud.django_settings")
    import django  # noqa: PLC0415

    django.setup(set_prefix=False)


@app.command()
def serve(
    cert: Annotated[Path | None, typer.Option(help="PEM certificate chain (CA-issued)")] = None,
    key: Annotated[Path | None, typer.Option(help="PEM private key for --cert")] = None,
) -> None:
    """Apply migrations and serve the cloud over HTTPS (port 8443), with its task worker."""
    if (cert is None) != (key is None):
        typer.echo("fieldlink: --cert and --key go together", err=True)
        raise typer.Exit(2)
    _boot()
    from django.conf import settings  # noqa: PLC0415

    from fieldlink.cloud.server import serve as run_server  # noqa: PLC0415

    run_server(settings.FIELDLINK, cert=cert, key=key, announce=typer.echo)


@app.command()
def worker() -> None:
    """Run the background task worker on its own (for deployments that scale it apart)."""
    _boot()
    from fieldlink.cloud.server import run_worker  # noqa: PLC0415

    run_worker()


@app.command()
def migrate() -> None:
    """Apply database migrations and exit."""
    _boot()
    from django.core.management import call_command  # noqa: PLC0415

    call_command("migrate", interactive=False)


@app.command("check-settings")
def check_settings() -> None:
    """Load the settings and report whether they are fit for the configured mode."""
    _boot()
    from django.conf import settings  # noqa: PLC0415

    problems = settings.FIELDLINK.insecure_values()
    if problems and not settings.FIELDLINK.is_production:
        typer.echo("development mode; production would refuse:")
        for problem in problems:
            typer.echo(f"  - {problem}")
    else:
        typer.echo("settings are fit for " + settings.FIELDLINK.mode)


staff_app = typer.Typer(help="Platform staff accounts (support, platform admin).")
app.add_typer(staff_app, name="staff")


@staff_app.command("enroll")
def staff_enroll(
    email: Annotated[str, typer.Option(help="The staff member's e-mail address")],
    role: Annotated[str, typer.Option(help="support or platform_admin")] = "support",
) -> None:
    """Create or update a staff account with a fresh TOTP authenticator (printed once)."""
    _boot()
    from django.db import transaction  # noqa: PLC0415

    from fieldlink.accounts.models import StaffRole  # noqa: PLC0415
    from fieldlink.accounts.services import enroll_staff  # noqa: PLC0415

    if role not in (StaffRole.SUPPORT, StaffRole.PLATFORM_ADMIN):
        typer.echo("fieldlink: --role must be support or platform_admin", err=True)
        raise typer.Exit(2)
    with transaction.atomic():
        enrollment = enroll_staff(email, StaffRole(role))
    # Printed to the admin's terminal only (never logged): hand it over in person.
    typer.echo(f"Staff account {enrollment.user.email} ({role}) has a new TOTP authenticator.")
    typer.echo(f"Add it to an authenticator app:\n  {enrollment.otpauth_uri}")
    typer.echo("Then set a password with 'Forgot password?' on the sign-in page.")


audit_app = typer.Typer(help="The append-only, hash-chained audit trail.")
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify(
    chain: Annotated[
        str | None, typer.Option(help="One chain: an organisation id, or 'platform'")
    ] = None,
) -> None:
    """Re-check the audit chains; name every altered, deleted or reordered entry (exit 1)."""
    _boot()
    from fieldlink.audit.services import verify_report  # noqa: PLC0415

    report = verify_report(chain)
    if report.intact:
        typer.echo(f"audit trail intact: {report.entries} entries in {report.chains} chains")
        return
    for finding in report.findings:
        typer.echo(
            f"{finding.kind}: chain {finding.chain} sequence {finding.sequence}"
            f" entry {finding.entry_id}: {finding.detail}"
        )
    typer.echo(f"audit trail NOT intact: {len(report.findings)} findings", err=True)
    raise typer.Exit(1)


@app.command()
def version() -> None:
    """Print the Fieldlink version."""
    typer.echo(__version__)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
