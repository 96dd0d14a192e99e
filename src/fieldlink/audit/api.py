"""REST endpoints of the audit context (thin: parse, call one service, render).

An organisation's owners and admins (``audit.view``; read-only API keys keep it) read, export and
verify that organisation's chain. Entries are only ever selected through the caller's
``Scope.filter``, so another tenant's organisation answers 404 like one that does not exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from datetime import UTC, datetime
from typing import Any, Literal
from uuid import UUID

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpRequest, StreamingHttpResponse
from ninja import Field, Query, Router, Schema
from ninja.errors import ValidationError
from pydantic import ValidationInfo, field_validator

from fieldlink.accounts import services as accounts_services
from fieldlink.accounts.access import Permission, Scope
from fieldlink.accounts.auth import scope as scope_of
from fieldlink.audit import services
from fieldlink.audit.models import AuditEntry

router = Router(tags=["audit"])

EXPORT_MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "json": "application/json"}
# Entries per chunk handed to the server: one send per entry would be thousands of tiny writes.
STREAM_BATCH = 200

EXPORT_DESCRIPTION = f"""\
The organisation's audit trail as a download, in chain order (oldest first), with every field
the hash covers plus `hash` and `prev_hash`, so that the chain can be re-checked offline.

At most {services.EXPORT_LIMIT:,} entries per export. The response headers say what it holds:
`Fieldlink-Export-Entries`, `Fieldlink-Export-Limit`, `Fieldlink-Export-Up-To-Sequence` (the
chain's head when the export began) and `Fieldlink-Export-Truncated` (`true`/`false`). When it is
truncated, `Fieldlink-Export-Next-Since` is the `since` to pass for the rest (narrow with `since`
and `until`). Every export is itself recorded in the trail (`audit.exported`).

CSV: RFC 4180, UTF-8; `before` and `after` are JSON text. A cell that would start with `=`, `+`,
`-`, `@`, a tab, a carriage return or `'` gets a leading `'` so spreadsheets do not run it as a
formula: drop one leading `'` from every cell before re-hashing. JSON: one array of objects.
"""


_MAX = services.FILTER_MAX_LENGTH


class AuditFilterQuery(Schema):
    action: str = Field(
        "",
        description="Exact action, or a prefix ending in '.', e.g. `member.`",
        max_length=_MAX["action"],
    )
    actor: str = Field(
        "",
        description="Part of the actor's label (e-mail), or its exact id",
        max_length=_MAX["actor"],
    )
    target_type: str = Field(
        "", description="e.g. `membership`, `organisation`", max_length=_MAX["target_type"]
    )
    target_id: str = Field("", max_length=_MAX["target_id"])
    since: datetime | None = Field(None, description="From (inclusive), UTC unless an offset")
    until: datetime | None = Field(None, description="Until (exclusive), UTC unless an offset")

    @field_validator("action", "actor", "target_type", "target_id")
    @classmethod
    def _text(cls, value: str, info: ValidationInfo) -> str:
        return services.check_filter_text(str(info.field_name), value)

    @field_validator("since", "until")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else services.as_utc(value)

    @field_validator("until")
    @classmethod
    def _after_since(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        since = info.data.get("since")
        if value is not None and since is not None and value <= since:
            raise ValueError("must be later than since")
        return value

    def filters(self) -> services.AuditFilters:
        return services.AuditFilters(
            action=self.action,
            actor=self.actor,
            target_type=self.target_type,
            target_id=self.target_id,
            since=self.since,
            until=self.until,
        )


class AuditListQuery(AuditFilterQuery):
    before_sequence: int | None = Field(
        None,
        ge=1,
        le=services.SEQUENCE_MAX,
        description="Cursor: the `next_before_sequence` of the previous page",
    )
    limit: int = Field(services.PAGE_SIZE_DEFAULT, ge=1, le=services.PAGE_SIZE_MAX)


class AuditExportQuery(AuditFilterQuery):
    format: Literal["csv", "json"] = "csv"


class AuditEntryOut(Schema):
    id: UUID
    sequence: int
    # Text rather than a datetime: JSON encoding would cut it to milliseconds, and this is the
    # exact UTC value the hash covers.
    created_at: str = Field(
        description="UTC, ISO 8601 with microseconds", json_schema_extra={"format": "date-time"}
    )
    actor_type: str
    actor_id: str
    actor_label: str
    on_behalf_of_grant: str = Field(description="The support grant the actor acted under, if any")
    action: str
    target_type: str
    target_id: str
    before: Any
    after: Any
    ip: str
    client: str
    prev_hash: str
    hash: str


class AuditPageOut(Schema):
    entries: list[AuditEntryOut]
    next_before_sequence: int | None = Field(
        description="Pass as `before_sequence` for older entries; null on the last page"
    )


class FindingOut(Schema):
    sequence: int
    entry_id: str
    kind: str = Field(description="altered, deleted or reordered")
    detail: str


class VerificationOut(Schema):
    intact: bool
    entries: int
    findings: list[FindingOut]


def _known_only(request: HttpRequest, query: type[Schema]) -> None:
    # Refused rather than ignored: a misspelt filter ("sinse") would silently export everything.
    unknown = sorted(set(request.GET) - set(query.model_fields))
    if unknown:
        raise ValidationError(
            [
                {"loc": ("query", name), "type": "extra_forbidden", "msg": "Unknown parameter"}
                for name in unknown
            ]
        )


def _auditor(request: HttpRequest, org_id: UUID) -> Scope:
    scope = scope_of(request, org_id)
    scope.require(Permission.AUDIT_VIEW)
    return scope


def _trail(scope: Scope) -> QuerySet[AuditEntry]:
    return scope.filter(AuditEntry.objects.all())


@router.get(
    "/orgs/{org_id}/audit",
    response=AuditPageOut,
    summary="The organisation's audit trail, newest first, filtered and paged",
)
def list_entries(request: HttpRequest, org_id: UUID, query: Query[AuditListQuery]) -> AuditPageOut:
    _known_only(request, AuditListQuery)
    page = services.search(
        _trail(_auditor(request, org_id)),
        query.filters(),
        before_sequence=query.before_sequence,
        limit=query.limit,
    )
    return AuditPageOut(
        entries=[AuditEntryOut(**services.exported(e)) for e in page.entries],
        next_before_sequence=page.next_before_sequence,
    )


@router.get(
    "/orgs/{org_id}/audit/export",
    summary="Download the audit trail as CSV or JSON (streamed, bounded)",
    description=EXPORT_DESCRIPTION,
    openapi_extra={
        "responses": {
            200: {
                "description": "The export, as an attachment",
                "content": {
                    EXPORT_MEDIA_TYPES["csv"]: {"schema": {"type": "string"}},
                    EXPORT_MEDIA_TYPES["json"]: {
                        "schema": {"type": "array", "items": {"type": "object"}}
                    },
                },
            }
        }
    },
)
def export_entries(
    request: HttpRequest, org_id: UUID, query: Query[AuditExportQuery]
) -> StreamingHttpResponse:
    _known_only(request, AuditExportQuery)
    filters = query.filters()
    # The boundary owns the transaction: the record of who exported what commits with the plan.
    with transaction.atomic():
        scope = _auditor(request, org_id)
        plan = services.plan_export(_trail(scope), filters)
        accounts_services.audit(
            scope,
            "audit.exported",
            target=scope.organisation,
            after={
                "format": query.format,
                "filters": filters.active(),
                "entries": plan.count,
                "up_to_sequence": plan.up_to_sequence,
                "truncated": plan.truncated,
            },
            request=request,
        )
    write = services.export_csv if query.format == "csv" else services.export_json
    response = StreamingHttpResponse(
        _body(request, write(plan.stream())), content_type=EXPORT_MEDIA_TYPES[query.format]
    )
    day = datetime.now(UTC).date().isoformat()
    response["Content-Disposition"] = (
        f'attachment; filename="audit-{scope.organisation.pk}-{day}.{query.format}"'
    )
    response["Cache-Control"] = "no-store"
    response["Fieldlink-Export-Entries"] = str(plan.count)
    response["Fieldlink-Export-Limit"] = str(plan.limit)
    response["Fieldlink-Export-Up-To-Sequence"] = str(plan.up_to_sequence)
    response["Fieldlink-Export-Truncated"] = "true" if plan.truncated else "false"
    if plan.next_since is not None:
        response["Fieldlink-Export-Next-Since"] = services.as_utc(plan.next_since).isoformat()
    return response


@router.get(
    "/orgs/{org_id}/audit/verify",
    response=VerificationOut,
    summary="Re-check this organisation's hash chain; names altered, deleted, reordered entries",
)
def verify_chain(request: HttpRequest, org_id: UUID) -> VerificationOut:
    report = services.verify_entries(_trail(_auditor(request, org_id)))
    return VerificationOut(
        intact=report.intact,
        entries=report.entries,
        findings=[
            FindingOut(sequence=f.sequence, entry_id=f.entry_id, kind=f.kind, detail=f.detail)
            for f in report.findings
        ],
    )


def _batched(lines: Iterator[str]) -> Generator[str]:
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) >= STREAM_BATCH:
            yield "".join(batch)
            batch.clear()
    if batch:
        yield "".join(batch)


def _body(request: HttpRequest, lines: Iterator[str]) -> Iterator[str] | AsyncIterator[str]:
    """The response body, streamed the way the server in front of Django can stream it.

    Under ASGI, Django would first read a synchronous iterator into memory (and warn); the
    database cursor is sync-only. So each batch is fetched on the request's own sync thread,
    where its connection lives, and handed over one at a time.
    """
    chunks = _batched(lines)
    if not isinstance(request, ASGIRequest):
        return chunks

    async def pump() -> AsyncIterator[str]:
        fetch = sync_to_async(lambda: next(chunks, None), thread_sensitive=True)
        try:
            while (chunk := await fetch()) is not None:
                yield chunk
        finally:
            await sync_to_async(chunks.close, thread_sensitive=True)()

    return pump()
