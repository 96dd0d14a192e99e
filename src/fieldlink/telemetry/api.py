"""REST endpoints of the telemetry context (thin: parse, call one service, render).

The query endpoints live under ``/orgs/{org_id}/…`` (``orgs_router``, mounted at the API root);
``router`` (``/telemetry``) is kept for the context's other endpoints.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Generator, Iterator
from datetime import datetime
from typing import Final
from uuid import UUID

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import HttpRequest, StreamingHttpResponse
from ninja import Field, Query, Router, Schema
from ninja.errors import ValidationError

from fieldlink.accounts.auth import scope as scope_of
from fieldlink.devices.models import Health
from fieldlink.telemetry import services
from fieldlink.telemetry.services import AssetValues

router = Router(tags=["telemetry"])
orgs_router = Router(tags=["telemetry"])

DAY: Final = 86_400_000
STREAM_BATCH: Final = 500  # CSV lines per chunk handed to the server

TIME_HELP: Final = "ISO 8601 with a UTC offset (`2026-11-28T05:00:00Z`) or UTC milliseconds"


class AssetHealthOut(Schema):
    id: UUID
    tag: str
    health: str
    health_code: str
    health_cause: str
    health_remedy: str
    health_changed_at: datetime | None


class PointLatestOut(Schema):
    id: UUID
    key: str
    unit: str
    description: str
    ts: str | None = Field(description="ISO 8601 UTC of the latest value; null before the first")
    ts_ms: int | None
    value: float | None
    quality: int | None


class AssetLatestOut(Schema):
    asset: AssetHealthOut
    points: list[PointLatestOut]


class OverviewAssetOut(AssetLatestOut):
    site: str
    path: list[str] = Field(description="Site, then the areas from the outermost inwards")


class RangeQuery(Schema):
    start: str | None = Field(None, description=f"{TIME_HELP}; default: end - 24 h")
    end: str | None = Field(None, description=f"{TIME_HELP}; default: now")


class ValuesQuery(RangeQuery):
    after: int | None = Field(None, description="The `next_after` of the previous page")
    limit: int = Field(services.DEFAULT_PAGE, ge=1, le=services.MAX_PAGE)


class SeriesQuery(RangeQuery):
    max_points: int = Field(services.DEFAULT_POINTS, ge=2, le=services.MAX_POINTS)


class OverviewQuery(Schema):
    site_id: UUID | None = None
    area_id: UUID | None = None
    health: Health | None = None


class ValuesOut(Schema):
    point_id: UUID
    unit: str
    start_ms: int
    end_ms: int
    t: list[int] = Field(description="UTC milliseconds, ascending")
    value: list[float]
    quality: list[int]
    next_after: int | None = Field(description="Pass as `after` for the next page; null at the end")


class SeriesOut(Schema):
    point_id: UUID
    unit: str
    start_ms: int
    end_ms: int
    mode: str = Field(description="`raw` (fewer values than max_points) or `buckets`")
    bucket_ms: int | None
    t: list[int] = Field(description="Value time (raw) or bucket start (buckets), UTC ms")
    min: list[float | None] = Field(description="null for a bucket without values (a gap)")
    max: list[float | None]
    avg: list[float | None]
    count: list[int]


def _known_only(request: HttpRequest, query: type[Schema]) -> None:
    # Refused rather than ignored: a misspelt "strat" would silently chart the default range.
    unknown = sorted(set(request.GET) - set(query.model_fields))
    if unknown:
        raise ValidationError(
            [
                {"loc": ("query", name), "type": "extra_forbidden", "msg": "Unknown parameter"}
                for name in unknown
            ]
        )


def _latest_out(entry: AssetValues) -> AssetLatestOut:
    return AssetLatestOut(asset=_health(entry), points=_points(entry))


def _health(entry: AssetValues) -> AssetHealthOut:
    return AssetHealthOut.model_validate(entry.asset, from_attributes=True)


def _points(entry: AssetValues) -> list[PointLatestOut]:
    return [
        PointLatestOut(
            id=p.point.pk,
            key=p.point.key,
            unit=p.point.unit,
            description=p.point.description,
            ts=services.iso(p.latest[0]) if p.latest else None,
            ts_ms=p.latest[0] if p.latest else None,
            value=p.latest[1] if p.latest else None,
            quality=p.latest[2] if p.latest else None,
        )
        for p in entry.points
    ]


@orgs_router.get(
    "/orgs/{org_id}/assets/{asset_id}/latest",
    response=AssetLatestOut,
    summary="An asset's NE 107 health and the latest value of each of its measuring points",
)
def asset_latest(request: HttpRequest, org_id: UUID, asset_id: UUID) -> AssetLatestOut:
    return _latest_out(services.latest_of_asset(scope_of(request, org_id), asset_id))


@orgs_router.get(
    "/orgs/{org_id}/overview",
    response=list[OverviewAssetOut],
    summary="Every asset with its health and latest values (asset list, mobile app home)",
)
def overview(
    request: HttpRequest, org_id: UUID, query: Query[OverviewQuery]
) -> list[OverviewAssetOut]:
    _known_only(request, OverviewQuery)
    filters = services.OverviewFilter(
        site_id=query.site_id, area_id=query.area_id, health=query.health
    )
    return [
        OverviewAssetOut(
            asset=_health(entry),
            points=_points(entry),
            site=entry.asset.site.name,
            path=services.breadcrumbs(entry.asset),
        )
        for entry in services.overview(scope_of(request, org_id), filters)
    ]


@orgs_router.get(
    "/orgs/{org_id}/points/{point_id}/values",
    response=ValuesOut,
    summary=f"Raw values of a range, paged (at most {services.MAX_PAGE:,} per page)",
)
def point_values(
    request: HttpRequest, org_id: UUID, point_id: UUID, query: Query[ValuesQuery]
) -> ValuesOut:
    _known_only(request, ValuesQuery)
    page = services.values(
        scope_of(request, org_id),
        point_id,
        start=query.start,
        end=query.end,
        after=query.after,
        limit=query.limit,
    )
    return ValuesOut(
        point_id=page.point.pk,
        unit=page.point.unit,
        start_ms=page.span.start_ms,
        end_ms=page.span.end_ms,
        t=[s[0] for s in page.samples],
        value=[s[1] for s in page.samples],
        quality=[s[2] for s in page.samples],
        next_after=page.next_after,
    )


@orgs_router.get(
    "/orgs/{org_id}/points/{point_id}/series",
    response=SeriesOut,
    summary=f"A range for a chart: at most max_points (≤ {services.MAX_POINTS}) time buckets",
)
def point_series(
    request: HttpRequest, org_id: UUID, point_id: UUID, query: Query[SeriesQuery]
) -> SeriesOut:
    _known_only(request, SeriesQuery)
    found = services.chart(
        scope_of(request, org_id),
        point_id,
        start=query.start,
        end=query.end,
        max_points=query.max_points,
    )
    chart = found.chart
    return SeriesOut(
        point_id=found.point.pk,
        unit=found.point.unit,
        start_ms=found.span.start_ms,
        end_ms=found.span.end_ms,
        mode=chart.mode,
        bucket_ms=chart.bucket_ms,
        t=chart.t,
        min=chart.min,
        max=chart.max,
        avg=chart.avg,
        count=chart.count,
    )


@orgs_router.get(
    "/orgs/{org_id}/points/{point_id}/export.csv",
    summary=f"Raw values of a range as CSV (at most {services.EXPORT_MAX_SPAN_MS // DAY} days)",
    openapi_extra={
        "responses": {
            200: {
                "description": "CSV (RFC 4180): timestamp_utc, ts_ms, value, quality",
                "content": {"text/csv; charset=utf-8": {"schema": {"type": "string"}}},
            }
        }
    },
)
def point_export(
    request: HttpRequest, org_id: UUID, point_id: UUID, query: Query[RangeQuery]
) -> StreamingHttpResponse:
    _known_only(request, RangeQuery)
    export = services.export_csv(
        scope_of(request, org_id), point_id, start=query.start, end=query.end
    )
    response = StreamingHttpResponse(
        _body(request, export.lines), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="{export.filename}"'
    response["Cache-Control"] = "no-store"
    return response


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
    """The body, streamed the way the server in front can stream it (as the audit export does).

    Under ASGI Django would read a synchronous iterator into memory first; the database cursor
    is sync-only, so each chunk is read on the request's own sync thread and handed over.
    """
    chunks = _batched(lines)
    if not isinstance(request, ASGIRequest):
        return chunks

    async def pump() -> AsyncIterator[str]:
        fetch = sync_to_async(lambda: next(chunks, None), thread_sensitive=True)
        while (chunk := await fetch()) is not None:
            yield chunk

    return pump()
