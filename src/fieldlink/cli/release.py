"""``fieldlink release …`` (the offline signing workspace) and ``fieldlink updates keys``.

Release engineers run ``init``, ``add``, ``sign`` and ``rotate-root`` on an offline machine;
only ``publish`` and ``updates keys`` run on the cloud host, with its settings and database.
Imports are deferred to the commands: ``fieldlink edge …`` loads this module too, and must stay
free of Django and of the signing libraries (tests/edge/test_no_django.py).

Key passphrases come from ``FIELDLINK_RELEASE_PASSPHRASE`` or a hidden prompt, and are never
echoed or logged; private keys never leave ``<workspace>/keys``.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from fieldlink.updates.workspace import SignatureStatus

release_app = typer.Typer(
    help="Release engineering: offline keys and signed agent releases (TUF).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
updates_app = typer.Typer(
    help="The cloud's signed-update repository.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

Workspace = Annotated[
    Path, typer.Option("--workspace", "-w", help="The release workspace directory")
]
PASSPHRASE_ENV = "FIELDLINK_RELEASE_PASSPHRASE"  # noqa: S105 - the variable's name


@contextmanager
def _refusals(command: str) -> Iterator[None]:
    """Refusals print their reason and exit 1; anything else is a bug and keeps its traceback."""
    from fieldlink.kit.errors import FieldlinkError  # noqa: PLC0415

    try:
        yield
    except FieldlinkError as exc:
        typer.echo(f"fieldlink release {command}: {exc.message}", err=True)
        raise typer.Exit(1) from exc


def _passphrase(*, confirm: bool = False) -> bytes:
    value = os.environ.get(PASSPHRASE_ENV)
    if not value:
        value = typer.prompt(
            "Key passphrase", hide_input=True, confirmation_prompt=confirm, err=True
        )
    return value.encode()


def _boot() -> None:
    # Looked up when called, so the cloud commands share main's boot (and tests can stub it).
    from fieldlink.cli import main  # noqa: PLC0415

    main._boot()


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # a container user without a passwd entry
        return f"uid {os.getuid()}"


def _report(status: SignatureStatus) -> None:
    typer.echo(status.describe())


@release_app.command("init")
def init(
    *,
    workspace: Workspace,
    online_keys: Annotated[
        Path, typer.Option(help="The cloud's public keys (`fieldlink updates keys` output)")
    ],
    root_keys: Annotated[int, typer.Option(min=1, max=20)] = 1,
    root_threshold: Annotated[int, typer.Option(min=1, max=20)] = 1,
    targets_keys: Annotated[int, typer.Option(min=1, max=20)] = 1,
    targets_threshold: Annotated[int, typer.Option(min=1, max=20)] = 1,
    release_keys: Annotated[int, typer.Option(min=1, max=20)] = 1,
    release_threshold: Annotated[int, typer.Option(min=1, max=20)] = 1,
) -> None:
    """Create the offline keys and sign root, targets and release version 1."""
    from fieldlink.updates.workspace import Workspace as Ws  # noqa: PLC0415

    with _refusals("init"):
        try:
            document = json.loads(online_keys.read_bytes())
        except (OSError, ValueError) as exc:
            typer.echo(f"fieldlink release init: cannot read {online_keys}: {exc}", err=True)
            raise typer.Exit(1) from exc
        ws = Ws.init(
            workspace,
            online_keys=document,
            passphrase=_passphrase(confirm=True),
            root_keys=root_keys,
            root_threshold=root_threshold,
            targets_keys=targets_keys,
            targets_threshold=targets_threshold,
            release_keys=release_keys,
            release_threshold=release_threshold,
        )
    for role in ("root", "targets", "release"):
        typer.echo(f"{role}: keys {', '.join(ws.key_names(role))}")
    typer.echo(f"Signed {', '.join(sorted(ws.metadata_files()))} in {ws.metadata_dir}.")
    typer.echo("Keep keys/ offline; publish the workspace with `fieldlink release publish`.")


@release_app.command("add")
def add(
    workspace: Workspace,
    version: Annotated[str, typer.Option(help="The release version, e.g. 1.4.0")],
    bundle: Annotated[Path | None, typer.Option(help="A built fieldlink-agent bundle")] = None,
    wheels: Annotated[
        Path | None, typer.Option(help="A directory of wheels to bundle (see `release wheels`)")
    ] = None,
    allow_downgrade: Annotated[
        bool, typer.Option(help="Sign this release for a deliberate rollback to older software")
    ] = False,
) -> None:
    """Add an agent bundle to a new release version (unsigned until `release sign`)."""
    from fieldlink.updates.workspace import Workspace as Ws  # noqa: PLC0415

    with _refusals("add"):
        ws = Ws(workspace)
        status = ws.add_release(
            version, bundle=bundle, wheels=wheels, allow_downgrade=allow_downgrade
        )
        path = ws.bundle_path(version)
    typer.echo(f"Staged {path.name} in release v{status.version}.")
    _report(status)


@release_app.command("sign")
def sign(
    workspace: Workspace,
    role: Annotated[str, typer.Option(help="release, targets or root")] = "release",
    key: Annotated[
        list[str] | None,
        typer.Option(help="Key to sign with, e.g. release-2 (repeatable; default: all here)"),
    ] = None,
    renew: Annotated[
        bool, typer.Option(help="Sign a new version of an unchanged role (fresh expiry)")
    ] = False,
) -> None:
    """Add signatures to the staged version of a role; ready once its threshold is met."""
    from fieldlink.updates.workspace import Workspace as Ws  # noqa: PLC0415

    with _refusals("sign"):
        ws = Ws(workspace)
        passphrase = _passphrase()
        status = ws.sign(role, list(ws.signers_for(role, passphrase, key)), renew=renew)
    _report(status)


@release_app.command("status")
def status(workspace: Workspace) -> None:
    """Versions and expiry of the signed roles, and what is staged."""
    from fieldlink.updates.workspace import OFFLINE_ROLES  # noqa: PLC0415
    from fieldlink.updates.workspace import Workspace as Ws  # noqa: PLC0415

    with _refusals("status"):
        ws = Ws(workspace)
        repo = ws.repository()
        staged = ws.staged()
        for role in OFFLINE_ROLES:
            signed = repo.md[role].signed
            typer.echo(f"{role}: v{signed.version}, expires {signed.expires.isoformat()}")
            if role in staged:
                typer.echo(f"  staged: {ws.status(role).describe()}")
        for path in sorted(repo.md["release"].signed.targets):
            typer.echo(f"software: {path}")


@release_app.command("discard")
def discard(
    workspace: Workspace,
    role: Annotated[str, typer.Option(help="release, targets or root")] = "release",
) -> None:
    """Drop the staged (not yet fully signed) version of a role."""
    from fieldlink.updates.workspace import Workspace as Ws  # noqa: PLC0415

    with _refusals("discard"):
        found = Ws(workspace).discard(role)
    typer.echo(f"Discarded the staged {role} version." if found else f"Nothing staged for {role}.")


@release_app.command("rotate-root")
def rotate_root(
    workspace: Workspace,
    new_keys: Annotated[int, typer.Option(min=1, max=20, help="How many new root keys")],
    threshold: Annotated[int, typer.Option(min=1, max=20, help="The new root threshold")],
    key: Annotated[
        list[str] | None,
        typer.Option(help="Current root key to sign with (repeatable; default: all here)"),
    ] = None,
) -> None:
    """Replace the root keys: root N+1 signed by the current and the new root keys."""
    from fieldlink.updates.workspace import Workspace as Ws  # noqa: PLC0415

    with _refusals("rotate-root"):
        ws = Ws(workspace)
        passphrase = _passphrase()
        old = ws.signers_for("root", passphrase, key, required=key is not None)
        status = ws.rotate_root(
            new_keys=new_keys, threshold=threshold, old_signers=list(old), passphrase=passphrase
        )
    typer.echo(f"New root keys: {', '.join(ws.key_names('root')[-new_keys:])}.")
    _report(status)


@release_app.command("publish")
def publish(
    workspace: Workspace,
    actor: Annotated[
        str | None, typer.Option(help="Who publishes, for the audit trail (default: OS user)")
    ] = None,
) -> None:
    """On the cloud host: verify the workspace's signed metadata and bundles, then serve them."""
    _boot()
    from django.db import transaction  # noqa: PLC0415

    from fieldlink.updates import repository  # noqa: PLC0415
    from fieldlink.updates.services import AuditActor, publish_release  # noqa: PLC0415
    from fieldlink.updates.workspace import Workspace as Ws  # noqa: PLC0415

    ws = Ws(workspace)
    with _refusals("publish"):
        published = {role: int(info["version"]) for role, info in repository.describe().items()}
        publication = ws.publication(published)
        for role in ws.staged():
            typer.echo(f"not published (staged): {ws.status(role).describe()}", err=True)
    if ws.holds_private_keys():
        typer.echo(
            f"warning: {ws.keys_dir} holds private keys; the cloud host needs only metadata/ "
            "and bundles/",
            err=True,
        )
    if not publication.files:
        typer.echo("Nothing new to publish: the cloud already serves every signed version here.")
        return
    label = actor or f"{_os_user()} (fieldlink release publish)"
    with _refusals("publish"), transaction.atomic():
        releases = publish_release(
            publication.files, publication.bundles, actor=AuditActor.command(label)
        )
    for name in sorted(publication.files):
        typer.echo(f"published {name}")
    for release in releases:
        typer.echo(
            f"software {release.version}: {release.target_path} ({release.length} bytes, "
            f"sha256 {release.sha256})"
        )


@release_app.command("wheels")
def wheels(
    out: Annotated[Path, typer.Option(help="Directory for the wheels")],
    project: Annotated[Path, typer.Option(help="The fieldlink source tree")] = Path(),
    requirements: Annotated[Path, typer.Option(help="Pinned requirements of the agent")] = Path(
        "requirements/edge.txt"
    ),
) -> None:
    """Build the fieldlink wheel and download its pinned dependency wheels (binary only)."""
    from fieldlink.updates.bundle import collect_wheels  # noqa: PLC0415

    if not requirements.exists():
        typer.echo(f"fieldlink release wheels: {requirements} does not exist", err=True)
        raise typer.Exit(2)
    with _refusals("wheels"):
        found = collect_wheels(project, requirements, out)
    for path in found:
        typer.echo(path.name)


@updates_app.command("keys")
def keys(
    create: Annotated[bool, typer.Option(help="Create the online keys if there are none")] = False,
) -> None:
    """Print the cloud's online public keys (JSON) for `fieldlink release init --online-keys`."""
    _boot()
    from fieldlink.updates import repository  # noqa: PLC0415
    from fieldlink.updates.errors import RepositoryMissingError  # noqa: PLC0415

    try:
        document = repository.online_public_keys(create=create)
    except RepositoryMissingError as exc:
        typer.echo(f"fieldlink updates keys: {exc.message} (or pass --create)", err=True)
        raise typer.Exit(1) from exc
    typer.echo(json.dumps(document, indent=2, sort_keys=True))
