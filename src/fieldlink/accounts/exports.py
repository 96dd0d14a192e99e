"""Data exports: an organisation's data, or a user's own, as a zip that can be downloaded a while.

A request (``request_organisation_export`` / ``request_personal_export``) creates a pending
``DataExport`` in the caller's transaction and enqueues ``tasks.build_data_export`` once it
commits. The task is the boundary: it writes the archive *outside* any transaction (an archive
can be large, and on SQLite a transaction holds the database's one write lock), then records the
outcome with ``mark_ready`` or ``mark_failed`` in a short one. A ready archive can be downloaded
for ``EXPORT_LIFETIME``; then ``expire_exports`` (periodic) deletes its file.

The task reads an organisation's data through the *requester's* scope, resolved again when it
runs: whoever lost the right to export between request and build gets no archive, and the
scoping rule (no filtering by organisation by hand) holds here as everywhere else.

What goes into an organisation's archive is a list of sections. The accounts context registers
its own (organisation, members, invitations, audit trail); telemetry adds measurements with
``register_export_section``. Every archive carries ``manifest.json`` with each file's SHA-256 and
size, so a customer can check it offline, and the audit entries carry their chain hashes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, BinaryIO, Final
from uuid import UUID

from allauth.account.models import EmailAddress
from allauth.mfa.models import Authenticator
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models, transaction
from django.http import HttpRequest
from django.utils import timezone

from fieldlink.accounts import access, services
from fieldlink.accounts import tasks as account_tasks
from fieldlink.accounts.access import Permission, PermissionDeniedError, Principal, Scope
from fieldlink.accounts.models import (
    ApiKey,
    DataExport,
    ExportKind,
    ExportStatus,
    Invitation,
    Membership,
    Organisation,
    SecurityEvent,
    SecurityEventKind,
    User,
)
from fieldlink.audit.models import AuditEntry
from fieldlink.audit.services import HASHED_FIELDS
from fieldlink.kit.errors import FieldlinkError, NotFoundError, RateLimitedError
from fieldlink.kit.logging import get_logger

__all__ = [
    "EXPORT_LIFETIME",
    "MAX_EXPORTS_PER_DAY",
    "ArchiveWriter",
    "Download",
    "ExportSection",
    "archive_path",
    "build_archive",
    "effective_status",
    "expire_exports",
    "mark_failed",
    "mark_ready",
    "open_organisation_download",
    "open_personal_download",
    "organisation_export",
    "organisation_exports",
    "personal_export",
    "personal_exports",
    "register_export_section",
    "request_organisation_export",
    "request_personal_export",
]

log = get_logger(__name__)

FORMAT: Final = "fieldlink-export"
FORMAT_VERSION: Final = 1
MANIFEST: Final = "manifest.json"
EXPORT_LIFETIME: Final = timedelta(days=7)
# Building is minutes at most; a row still pending after this lost its worker (a crash, a
# redeploy) and would otherwise block new requests for ever.
PENDING_TIMEOUT: Final = timedelta(hours=6)
# Each archive is a full copy of the data: a few a day are plenty, and it bounds the disk a
# careless (or hostile) script can fill. Per organisation, and per user for personal exports.
MAX_EXPORTS_PER_DAY: Final = 5
_DAY: Final = timedelta(days=1)
_CHUNK: Final = 1 << 16


# -- Errors ---------------------------------------------------------------------------------------


class ExportInProgressError(FieldlinkError):
    code = "export_in_progress"
    kind = "conflict"


class ExportLimitError(RateLimitedError):
    code = "export_limit"


class ExportUnavailableError(FieldlinkError):
    """Not downloadable (still being built, failed or expired): HTTP has 410 for the last, but
    one "conflict" with the export's status in ``details`` serves clients better than two codes."""

    code = "export_unavailable"
    kind = "conflict"


class ExportInvalidError(FieldlinkError):
    code = "export_invalid"
    kind = "invalid"


class ExportRefusedError(FieldlinkError):
    code = "export_refused"
    kind = "forbidden"


# -- The archive ----------------------------------------------------------------------------------


class SectionFile:
    """One file being written into the archive; hashes and counts what passes through."""

    def __init__(self, target: IO[bytes]) -> None:
        self._target = target
        self._hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._hash.update(data)
        self.size += len(data)
        self._target.write(data)
        return len(data)

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def _json_bytes(value: object, *, indent: int | None = 2) -> bytes:
    text = json.dumps(value, cls=DjangoJSONEncoder, ensure_ascii=False, indent=indent)
    return text.encode()


@dataclass
class ArchiveWriter:
    """What a section writes through: files with names checked, hashed for the manifest."""

    zip: zipfile.ZipFile
    files: list[dict[str, Any]] = field(default_factory=list)

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[SectionFile]:
        self._check_name(name)
        # force_zip64: a section may stream more than 2 GiB (measurements) without saying so.
        with self.zip.open(name, "w", force_zip64=True) as raw:
            out = SectionFile(raw)
            yield out
        self.files.append({"name": name, "size": out.size, "sha256": out.sha256})

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.open(name) as out:
            out.write(data)

    def write_json(self, name: str, value: object) -> None:
        self.write_bytes(name, _json_bytes(value) + b"\n")

    def write_jsonl(self, name: str, rows: Iterable[object]) -> None:
        with self.open(name) as out:
            for row in rows:
                out.write(_json_bytes(row, indent=None) + b"\n")

    def _check_name(self, name: str) -> None:
        # Names come from code, not users, but a bad one would make an archive that unpacks
        # outside its folder on somebody's disk.
        parts = name.split("/")
        if (
            not name
            or name == MANIFEST
            or name.startswith("/")
            or "\\" in name
            or posixpath.normpath(name) != name
            or any(part in ("", ".", "..") for part in parts)
            or not name.isprintable()
        ):
            raise ValueError(f"bad archive member name {name!r}")
        if any(f["name"] == name for f in self.files):
            raise ValueError(f"archive member {name!r} written twice")


SectionWriter = Callable[[Scope, ArchiveWriter], None]


@dataclass(frozen=True)
class ExportSection:
    name: str
    kinds: frozenset[ExportKind]
    write: SectionWriter


_SECTIONS: list[ExportSection] = []


def register_export_section(
    name: str, kinds: Iterable[ExportKind | str], writer: SectionWriter
) -> None:
    """Add (or replace, by name) a section of organisation archives.

    ``writer(scope, out)`` writes its files with ``out.open/write_json/write_jsonl``; ``scope``
    is the requester's, so the section reads through ``scope.filter`` like any service.
    Measurement data goes under ``measurements/`` in a section whose kinds include
    ``ExportKind.MEASUREMENTS``.
    """
    section = ExportSection(name, frozenset(ExportKind(k) for k in kinds), writer)
    _SECTIONS[:] = [s for s in _SECTIONS if s.name != name]
    _SECTIONS.append(section)


def archive_path(export_id: UUID | str) -> Path:
    # UUID() both normalises and refuses anything that could climb out of the folder.
    return Path(settings.VAR_DIR) / "exports" / f"{UUID(str(export_id))}.zip"


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


@dataclass(frozen=True)
class BuiltArchive:
    path: Path
    size: int
    sha256: str


def _write_archive(
    export: DataExport, subject: dict[str, Any], write: Callable[[ArchiveWriter], None]
) -> BuiltArchive:
    final = archive_path(export.pk)
    final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = final.with_name(final.name + ".part")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(partial, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask: only the service account reads exports
        with (
            os.fdopen(fd, "wb") as handle,
            zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        ):
            writer = ArchiveWriter(archive)
            write(writer)
            manifest = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "export_id": str(export.pk),
                "kind": export.kind,
                **subject,
                "requested_at": _iso(export.created_at),
                "created_at": _iso(timezone.now()),
                "files": writer.files,
            }
            archive.writestr(MANIFEST, _json_bytes(manifest) + b"\n")
        partial.replace(final)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    digest = hashlib.sha256()
    with final.open("rb") as built:
        while chunk := built.read(_CHUNK):
            digest.update(chunk)
    return BuiltArchive(final, final.stat().st_size, digest.hexdigest())


def build_archive(export_id: UUID | str) -> BuiltArchive:
    """Write the archive of a pending export (no database writes; the task records the result)."""
    export = DataExport.objects.select_related("organisation", "requested_by").get(pk=export_id)
    if export.organisation is None:
        user = export.requested_by
        subject: dict[str, Any] = {"user": {"id": str(user.pk), "email": user.email}}
        return _write_archive(export, subject, lambda out: _write_personal(user, out))
    scope = _requester_scope(export, export.organisation)
    org = scope.organisation
    subject = {
        "organisation": {"id": str(org.pk), "name": org.name, "region": org.region},
        "requested_by": export.requested_by.email,
    }
    kind = ExportKind(export.kind)
    return _write_archive(export, subject, lambda out: _write_organisation(scope, kind, out))


def _requester_scope(export: DataExport, organisation: Organisation) -> Scope:
    try:
        scope = access.resolve(Principal(export.requested_by, "export"), organisation.pk)
        scope.require(Permission.EXPORT_REQUEST)
    except (NotFoundError, PermissionDeniedError) as exc:
        raise ExportRefusedError(
            "Whoever requested this export may no longer export this organisation's data."
        ) from exc
    return scope


def _write_organisation(scope: Scope, kind: ExportKind, out: ArchiveWriter) -> None:
    sections = [s for s in _SECTIONS if kind in s.kinds]
    for section in sections:
        section.write(scope, out)


# -- The accounts context's own sections -----------------------------------------------------------


def _organisation_section(scope: Scope, out: ArchiveWriter) -> None:
    org = scope.filter(Organisation.objects.select_related("created_by")).get()
    out.write_json(
        "organisation.json",
        {
            "id": str(org.pk),
            "name": org.name,
            "region": org.region,
            "region_label": org.get_region_display(),
            "created_at": _iso(org.created_at),
            "created_by": org.created_by.email if org.created_by else None,
            "deletion_requested_at": _iso(org.deletion_requested_at),
            "deletion_due_at": _iso(org.deletion_due_at),
        },
    )


def _members_section(scope: Scope, out: ArchiveWriter) -> None:
    scope.require(Permission.MEMBERS_VIEW)
    members = scope.filter(Membership.objects.select_related("user")).order_by("created_at")
    out.write_json(
        "members.json",
        [
            {
                "membership_id": str(m.pk),
                "user_id": str(m.user_id),
                "email": m.user.email,
                "name": m.user.get_full_name(),
                "role": m.role,
                "joined_at": _iso(m.created_at),
            }
            for m in members
        ],
    )


def _invitations_section(scope: Scope, out: ArchiveWriter) -> None:
    scope.require(Permission.MEMBERS_VIEW)
    invitations = scope.filter(
        Invitation.objects.select_related("invited_by", "accepted_by")
    ).order_by("created_at")
    out.write_json(
        "invitations.json",
        [
            {  # never the token's digest: it is the key to the invitation
                "id": str(i.pk),
                "email": i.email,
                "role": i.role,
                "status": i.status(),
                "invited_by": i.invited_by.email if i.invited_by else None,
                "created_at": _iso(i.created_at),
                "expires_at": _iso(i.expires_at),
                "accepted_at": _iso(i.accepted_at),
                "accepted_by": i.accepted_by.email if i.accepted_by else None,
                "revoked_at": _iso(i.revoked_at),
            }
            for i in invitations
        ],
    )


def _audit_row(entry: AuditEntry) -> dict[str, Any]:
    # Exactly the values the chain hash covers, in the canonical text form of
    # fieldlink.audit.services.entry_hash, so each line re-hashes to its "hash".
    row: dict[str, Any] = {}
    for name in HASHED_FIELDS:
        value = getattr(entry, name)
        if isinstance(value, datetime):
            value = value.astimezone(UTC).isoformat(timespec="microseconds")
        elif isinstance(value, UUID):
            value = str(value)
        row[name] = value
    row["hash"] = entry.hash
    return row


def _audit_section(scope: Scope, out: ArchiveWriter) -> None:
    scope.require(Permission.AUDIT_VIEW)
    entries = scope.filter(AuditEntry.objects.all()).order_by("sequence")
    out.write_jsonl("audit.jsonl", (_audit_row(e) for e in entries.iterator(chunk_size=2000)))


register_export_section("organisation", [ExportKind.COMPLETE], _organisation_section)
register_export_section("members", [ExportKind.COMPLETE], _members_section)
register_export_section("invitations", [ExportKind.COMPLETE], _invitations_section)
register_export_section("audit", [ExportKind.COMPLETE], _audit_section)


# -- A user's own data ---------------------------------------------------------------------------


def _write_personal(user: User, out: ArchiveWriter) -> None:
    # What we hold about the person; never a secret (password hash, key digests, MFA secrets).
    out.write_json(
        "profile.json",
        {
            "id": str(user.pk),
            "email": user.email,
            "first_name": user.first_name,
            "last_name": user.last_name,
            "date_joined": _iso(user.date_joined),
            "last_login": _iso(user.last_login),
        },
    )
    out.write_json(
        "email_addresses.json",
        [
            {"email": a.email, "verified": a.verified, "primary": a.primary}
            for a in EmailAddress.objects.filter(user=user).order_by("email")
        ],
    )
    out.write_json(
        "second_factors.json",
        [
            {
                "type": a.type,
                "created_at": _iso(a.created_at),
                "last_used_at": _iso(a.last_used_at),
            }
            for a in Authenticator.objects.filter(user=user).order_by("created_at")
        ],
    )
    out.write_jsonl(
        "security_history.jsonl",
        (
            {
                "at": _iso(e.created_at),
                "kind": e.kind,
                "ip": e.ip,
                "device": e.device,
                "user_agent": e.user_agent,
                "details": e.details,
            }
            for e in SecurityEvent.objects.filter(user=user).order_by("created_at").iterator()
        ),
    )
    out.write_json(
        "memberships.json",
        [
            {
                "organisation_id": str(m.organisation_id),
                "organisation_name": m.organisation.name,
                "region": m.organisation.region,
                "role": m.role,
                "joined_at": _iso(m.created_at),
            }
            for m in Membership.objects.filter(user=user).select_related("organisation")
        ],
    )
    out.write_json(
        "api_keys.json",
        [
            {
                "id": str(k.pk),
                "name": k.name,
                "prefix": k.prefix,
                "scope": k.scope,
                "created_at": _iso(k.created_at),
                "expires_at": _iso(k.expires_at),
                "last_used_at": _iso(k.last_used_at),
                "last_used_ip": k.last_used_ip,
                "revoked_at": _iso(k.revoked_at),
            }
            for k in ApiKey.objects.filter(user=user).order_by("created_at")
        ],
    )


# -- Use cases -------------------------------------------------------------------------------------


def _kind(value: str) -> ExportKind:
    try:
        return ExportKind(value)
    except ValueError:
        raise ExportInvalidError(
            "Unknown export kind.", details={"allowed": list(ExportKind.values)}
        ) from None


def _check_limits(exports: models.QuerySet[DataExport], now: datetime) -> None:
    if exports.filter(status=ExportStatus.PENDING).exists():
        raise ExportInProgressError(
            "An export is already being prepared; wait until it is ready before asking again."
        )
    today = list(
        exports.filter(created_at__gt=now - _DAY)
        .order_by("created_at")
        .values_list("created_at", flat=True)[:MAX_EXPORTS_PER_DAY]
    )
    if len(today) >= MAX_EXPORTS_PER_DAY:
        retry_after = int((today[0] + _DAY - now).total_seconds()) + 1
        raise ExportLimitError(
            f"At most {MAX_EXPORTS_PER_DAY} exports a day; please try again later.",
            retry_after=max(retry_after, 1),
            limit="exports_per_day",
        )


def _enqueue_build(export: DataExport) -> None:
    export_id = str(export.pk)
    transaction.on_commit(lambda: account_tasks.build_data_export.enqueue(export_id))


def request_organisation_export(
    scope: Scope, kind: str, request: HttpRequest | None = None
) -> DataExport:
    """Ask for an archive of the organisation's data; built in the background."""
    scope.require(Permission.EXPORT_REQUEST)
    export_kind = _kind(kind)
    # The organisation's row lock makes "one pending at a time" hold for concurrent requests.
    scope.filter(Organisation.objects.select_for_update()).get()
    now = timezone.now()
    _check_limits(scope.filter(DataExport.objects.all()), now)
    export = DataExport.objects.create(
        organisation=scope.organisation, requested_by=scope.user, kind=export_kind, created_at=now
    )
    services.audit(
        scope, "export.requested", target=export, after={"kind": export_kind}, request=request
    )
    _enqueue_build(export)
    return export


def _personal(user: User) -> models.QuerySet[DataExport]:
    # A user's own archives are the rows of no organisation: not tenant data, so no Scope.
    return DataExport.objects.filter(requested_by=user, organisation__isnull=True)


def request_personal_export(principal: Principal, request: HttpRequest | None = None) -> DataExport:
    """Ask for an archive of the caller's own data (profile, addresses, history, memberships)."""
    if not principal.can_write:
        raise PermissionDeniedError("This API key may only read.")
    user = principal.user
    User.objects.select_for_update().filter(pk=user.pk).first()  # serialises the limit check
    now = timezone.now()
    _check_limits(_personal(user), now)
    export = DataExport.objects.create(
        organisation=None, requested_by=user, kind=ExportKind.COMPLETE, created_at=now
    )
    # The user's security history, not an organisation's trail: it is nobody else's business,
    # and someone copying out a person's data with a stolen session is what the history is for.
    services.record_security_event(
        user, SecurityEventKind.DATA_EXPORT_REQUESTED, request, export_id=str(export.pk)
    )
    _enqueue_build(export)
    return export


def organisation_exports(scope: Scope) -> list[DataExport]:
    scope.require(Permission.EXPORT_REQUEST)
    rows = scope.filter(DataExport.objects.select_related("requested_by"))
    return list(rows.order_by("-created_at")[:50])


def organisation_export(scope: Scope, export_id: Any) -> DataExport:
    scope.require(Permission.EXPORT_REQUEST)
    return scope.get(DataExport.objects.select_related("requested_by"), export_id, what="export")


def personal_exports(user: User) -> list[DataExport]:
    return list(_personal(user).order_by("-created_at")[:50])


def personal_export(user: User, export_id: Any) -> DataExport:
    try:
        return _personal(user).get(pk=export_id)
    except (DataExport.DoesNotExist, ValueError, TypeError) as exc:
        # Someone else's export looks exactly like no export at all.
        raise NotFoundError("No such export.") from exc


def effective_status(export: DataExport, now: datetime | None = None) -> str:
    """The status a person should see: "expired" as soon as the time is up, clean-up or not."""
    now = now or timezone.now()
    if export.status == ExportStatus.READY and (
        export.expires_at is None or export.expires_at <= now
    ):
        return ExportStatus.EXPIRED
    return str(export.status)


@dataclass
class Download:
    export: DataExport
    file: BinaryIO
    filename: str


_UNAVAILABLE: Final = {
    ExportStatus.PENDING: "This export is still being prepared.",
    ExportStatus.FAILED: "This export failed; please request a new one.",
    ExportStatus.EXPIRED: "This export has expired and was deleted; please request a new one.",
}


def _open(export: DataExport, filename: str) -> Download:
    status = effective_status(export)
    if status != ExportStatus.READY:
        raise ExportUnavailableError(_UNAVAILABLE[ExportStatus(status)], details={"status": status})
    try:
        handle = archive_path(export.pk).open("rb")
    except FileNotFoundError:
        log.exception("export_file_missing", export=str(export.pk))
        raise ExportUnavailableError(
            _UNAVAILABLE[ExportStatus.EXPIRED], details={"status": ExportStatus.EXPIRED}
        ) from None
    return Download(export, handle, filename)


def open_organisation_download(
    scope: Scope, export_id: Any, request: HttpRequest | None = None
) -> Download:
    """The archive to stream, audited as downloaded (the caller's transaction)."""
    export = organisation_export(scope, export_id)
    date = f"{export.created_at.astimezone(UTC):%Y%m%d}"
    download = _open(export, f"fieldlink-{str(scope.organisation.pk)[:8]}-{export.kind}-{date}.zip")
    try:
        services.audit(scope, "export.downloaded", target=export, request=request)
    except BaseException:
        download.file.close()
        raise
    return download


def open_personal_download(
    principal: Principal, export_id: Any, request: HttpRequest | None = None
) -> Download:
    export = personal_export(principal.user, export_id)
    date = f"{export.created_at.astimezone(UTC):%Y%m%d}"
    download = _open(export, f"fieldlink-personal-data-{date}.zip")
    try:
        services.record_security_event(
            principal.user,
            SecurityEventKind.DATA_EXPORT_DOWNLOADED,
            request,
            export_id=str(export.pk),
        )
    except BaseException:
        download.file.close()
        raise
    return download


# -- Outcomes and clean-up (called by the tasks, which own the transactions) ---------------------


def _remove_files(export_id: UUID | str) -> None:
    path = archive_path(export_id)
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".part").unlink(missing_ok=True)


def mark_ready(export_id: UUID | str, built: BuiltArchive, now: datetime | None = None) -> bool:
    now = now or timezone.now()
    export = DataExport.objects.select_for_update().filter(pk=export_id).first()
    if export is None or export.status != ExportStatus.PENDING:
        # Purged with its organisation, or given up on as stale while it was being built: the
        # file must not outlive its row.
        _remove_files(export_id)
        return False
    export.status = ExportStatus.READY
    export.ready_at = now
    export.expires_at = now + EXPORT_LIFETIME
    export.size = built.size
    export.sha256 = built.sha256
    export.error = ""
    export.save(update_fields=["status", "ready_at", "expires_at", "size", "sha256", "error"])
    return True


def failure_message(exc: BaseException) -> str:
    """What the requester is told: our own errors' messages, never a trace or internal detail."""
    if isinstance(exc, FieldlinkError):
        return exc.message[:200]
    return "The export could not be built. Please try again later or contact support."


def mark_failed(export_id: UUID | str, message: str) -> None:
    _remove_files(export_id)
    export = DataExport.objects.select_for_update().filter(pk=export_id).first()
    if export is None or export.status != ExportStatus.PENDING:
        return
    export.status = ExportStatus.FAILED
    export.error = message[:200]
    export.save(update_fields=["status", "error"])


def expire_exports(now: datetime | None = None) -> int:
    """Expire ready exports past their time (file deleted) and give up on stale pending ones."""
    now = now or timezone.now()
    done = 0
    due = DataExport.objects.select_for_update().filter(
        status=ExportStatus.READY, expires_at__lte=now
    )
    for export in due:
        _remove_files(export.pk)
        export.status = ExportStatus.EXPIRED
        export.save(update_fields=["status"])
        done += 1
    stale = DataExport.objects.select_for_update().filter(
        status=ExportStatus.PENDING, created_at__lte=now - PENDING_TIMEOUT
    )
    for export in stale:
        _remove_files(export.pk)
        export.status = ExportStatus.FAILED
        export.error = "The export took too long and was stopped. Please request a new one."
        export.save(update_fields=["status", "error"])
        done += 1
    return done


def _remove_organisation_files(organisation: Organisation) -> None:
    # Runs inside the purge as the system, with no principal and so no Scope: the rows are the
    # organisation's own, reached from the organisation being deleted.
    for export_id in organisation.exports.values_list("pk", flat=True):
        _remove_files(export_id)


if _remove_organisation_files not in services.ORGANISATION_PURGE_HOOKS:
    # Registered on import; fieldlink.accounts.tasks (where the purge runs) imports this module.
    services.ORGANISATION_PURGE_HOOKS.append(_remove_organisation_files)
