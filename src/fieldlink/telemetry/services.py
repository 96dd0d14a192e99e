"""Use cases of the telemetry context: reading values (latest, ranges, charts, CSV exports).

Every read starts from a ``Scope``: the asset or measuring point is fetched with ``scope.get``
(another tenant's id is a 404) and only then is its series read from storage, which knows series
by integer id and nothing about organisations. The rules (ranges, buckets, CSV) are the pure
core in ``querying``.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, cast

from django.apps import apps

from fieldlink.accounts.access import Permission, Scope
from fieldlink.devices.models import Area, Asset, Health, MeasuringPoint, Site
from fieldlink.telemetry.querying import (
    DAY_MS,
    DEFAULT_PAGE,
    DEFAULT_POINTS,
    EXPORT_CHUNK,
    EXPORT_MAX_SPAN_MS,
    MAX_PAGE,
    MAX_POINTS,
    MAX_SPAN_MS,
    Chart,
    InvalidTimeRangeError,
    Sample,
    TimeRange,
    bucket_chart,
    csv_lines,
    iso,
    now_ms,
    raw_chart,
    safe_filename,
    time_range,
)

__all__ = [
    "DAY_MS",
    "DEFAULT_PAGE",
    "DEFAULT_POINTS",
    "EXPORT_MAX_SPAN_MS",
    "MAX_PAGE",
    "MAX_POINTS",
    "MAX_SPAN_MS",
    "AssetValues",
    "Chart",
    "Export",
    "InvalidTimeRangeError",
    "OverviewFilter",
    "PointChart",
    "PointValue",
    "TimeRange",
    "ValuesPage",
    "breadcrumbs",
    "chart",
    "export_csv",
    "iso",
    "latest_of_asset",
    "now_ms",
    "overview",
    "point_of",
    "time_range",
    "values",
]


# -- storage ----------------------------------------------------------------------------------

Bucket = tuple[int, float, float, float, int]  # (bucket_start_ms, min, max, avg, count)


class QueryStorage(Protocol):
    """What the queries need of the storage engine (``fieldlink.telemetry.storage``)."""

    def series_of(self, point_ids: Sequence[Any]) -> Mapping[Any, int]:
        """Measuring point id -> series id, for the points that have a series."""
        ...

    def latest(self, series_ids: Sequence[int]) -> Mapping[int, Sample]: ...

    def range(
        self, series_id: int, start_ms: int, end_ms: int, *, after: int | None, limit: int
    ) -> Sequence[Sample]: ...

    def buckets(self, series_id: int, start_ms: int, end_ms: int, n: int) -> Sequence[Bucket]: ...


class _EngineStorage:
    """The storage engine and its ``Series`` table, looked up when first used.

    Looked up by name, not imported: the engine is written alongside these queries (issue 5) and
    the queries must not break the application while it is not there yet.
    """

    def __init__(self) -> None:
        self._engine: Any = None

    @property
    def engine(self) -> Any:
        if self._engine is None:
            self._engine = importlib.import_module("fieldlink.telemetry.storage")
        return self._engine

    def series_of(self, point_ids: Sequence[Any]) -> Mapping[Any, int]:
        label = "telemetry.Series"  # by name: see the class docstring
        try:
            series = apps.get_model(label)
        except LookupError:
            return {}  # no series table yet, so no point has values
        rows = series.objects.filter(point_id__in=list(point_ids)).values_list("point_id", "id")
        return dict(rows)

    def latest(self, series_ids: Sequence[int]) -> Mapping[int, Sample]:
        found = self.engine.latest(list(series_ids))
        return {int(k): _sample(v) for k, v in found.items()}

    def range(
        self, series_id: int, start_ms: int, end_ms: int, *, after: int | None, limit: int
    ) -> Sequence[Sample]:
        rows = self.engine.range(series_id, start_ms, end_ms, after=after, limit=limit)
        return [_sample(r) for r in rows]

    def buckets(self, series_id: int, start_ms: int, end_ms: int, n: int) -> Sequence[Bucket]:
        rows = self.engine.buckets(series_id, start_ms, end_ms, n)
        return [(int(r[0]), float(r[1]), float(r[2]), float(r[3]), int(r[4])) for r in rows]


def _sample(row: Sequence[Any]) -> Sample:
    return int(row[0]), float(row[1]), int(row[2])


_ENGINE: Final = _EngineStorage()
_storage: list[QueryStorage] = []  # a replacement (tests), on top of the engine


def storage() -> QueryStorage:
    return _storage[-1] if _storage else cast("QueryStorage", _ENGINE)


def use_storage(replacement: QueryStorage | None) -> None:
    """Read from ``replacement`` instead of the engine (None: back to the engine)."""
    _storage.clear()
    if replacement is not None:
        _storage.append(replacement)


# -- use cases ---------------------------------------------------------------------------------


def _series_ids(points: Sequence[MeasuringPoint]) -> Mapping[Any, int]:
    """Measuring point id -> series id, for the points that have received values."""
    return storage().series_of([p.pk for p in points]) if points else {}


def _series_id(point: MeasuringPoint) -> int | None:
    return _series_ids([point]).get(point.pk)


@dataclass(frozen=True)
class PointValue:
    point: MeasuringPoint
    latest: Sample | None


@dataclass(frozen=True)
class AssetValues:
    asset: Asset
    points: list[PointValue]


def _with_latest(assets: Sequence[Asset]) -> list[AssetValues]:
    points = list(MeasuringPoint.objects.filter(asset__in=assets).order_by("asset_id", "key"))
    series = _series_ids(points)
    latest = storage().latest(list(series.values())) if series else {}
    by_asset: dict[Any, list[PointValue]] = {}
    for point in points:
        sid = series.get(point.pk)
        value = latest.get(sid) if sid is not None else None
        by_asset.setdefault(point.asset_id, []).append(PointValue(point, value))
    return [AssetValues(asset, by_asset.get(asset.pk, [])) for asset in assets]


def latest_of_asset(scope: Scope, asset_id: Any) -> AssetValues:
    scope.require(Permission.DATA_VIEW)
    asset = scope.get(Asset.objects.select_related("site", "area"), asset_id, what="asset")
    return _with_latest([asset])[0]


@dataclass(frozen=True)
class OverviewFilter:
    site_id: Any = None
    area_id: Any = None
    health: str | None = None


def overview(scope: Scope, filters: OverviewFilter | None = None) -> list[AssetValues]:
    """Every asset of the organisation (optionally narrowed) with its health and latest values."""
    scope.require(Permission.DATA_VIEW)
    filters = filters or OverviewFilter()
    assets = scope.filter(Asset.objects.select_related("site", "area")).filter(hidden=False)
    if filters.site_id is not None:
        assets = assets.filter(site=scope.get(Site.objects.all(), filters.site_id, what="site"))
    if filters.area_id is not None:
        area = scope.get(Area.objects.all(), filters.area_id, what="area")
        assets = assets.filter(area__in=[area, *_descendants(area)])
    if filters.health:
        assets = assets.filter(health=Health(filters.health))
    return _with_latest(list(assets.order_by("tag")))


def _descendants(area: Area) -> list[Area]:
    found: list[Area] = []
    level = [area]
    while level:  # a few levels at most (building → hall → line)
        level = list(Area.objects.filter(parent__in=level))
        found.extend(level)
    return found


def breadcrumbs(asset: Asset) -> list[str]:
    """Site, then the areas from the outermost to the asset's own."""
    chain: list[str] = []
    area = asset.area
    while area is not None:
        chain.append(area.name)
        area = area.parent
    return [asset.site.name, *reversed(chain)]


def point_of(scope: Scope, point_id: Any) -> MeasuringPoint:
    scope.require(Permission.DATA_VIEW)
    return scope.get(
        MeasuringPoint.objects.select_related("asset"), point_id, what="measuring point"
    )


@dataclass(frozen=True)
class ValuesPage:
    point: MeasuringPoint
    span: TimeRange
    samples: list[Sample]
    next_after: int | None  # pass as ``after`` for the next page; None on the last one


def _span(start: str | None, end: str | None, max_span_ms: int = MAX_SPAN_MS) -> TimeRange:
    # Checked after the point is found: another tenant's id is a 404 whatever the range says.
    return time_range(start, end, now_ms=now_ms(), max_span_ms=max_span_ms)


def values(
    scope: Scope,
    point_id: Any,
    *,
    start: str | None,
    end: str | None,
    after: int | None = None,
    limit: int,
) -> ValuesPage:
    """One page of raw values in time order; paging by timestamp (one value per ms per series)."""
    point = point_of(scope, point_id)
    span = _span(start, end)
    sid = _series_id(point)
    if sid is None:
        return ValuesPage(point, span, [], None)
    # One more than asked says whether another page exists without a second query.
    rows = storage().range(sid, span.start_ms, span.end_ms, after=after, limit=limit + 1)
    page = list(rows[:limit])
    more = len(rows) > limit
    return ValuesPage(point, span, page, page[-1][0] if more and page else None)


@dataclass(frozen=True)
class PointChart:
    point: MeasuringPoint
    span: TimeRange
    chart: Chart


def chart(
    scope: Scope, point_id: Any, *, start: str | None, end: str | None, max_points: int
) -> PointChart:
    """At most ``max_points`` points: the raw values when there are fewer, else time buckets."""
    point = point_of(scope, point_id)
    span = _span(start, end)
    sid = _series_id(point)
    if sid is None:
        return PointChart(point, span, raw_chart([]))
    raw = storage().range(sid, span.start_ms, span.end_ms, after=None, limit=max_points)
    if len(raw) < max_points:
        return PointChart(point, span, raw_chart(raw))
    rows = storage().buckets(sid, span.start_ms, span.end_ms, max_points)
    return PointChart(point, span, bucket_chart(rows, span, max_points))


@dataclass(frozen=True)
class Export:
    point: MeasuringPoint
    filename: str
    lines: Iterator[str]


def export_csv(scope: Scope, point_id: Any, *, start: str | None, end: str | None) -> Export:
    """A range of raw values as CSV lines, read from storage a page at a time as they are sent."""
    point = point_of(scope, point_id)
    span = _span(start, end, EXPORT_MAX_SPAN_MS)
    sid = _series_id(point)
    header = ["timestamp_utc", "ts_ms", f"{point.asset.tag}/{point.key} [{point.unit}]", "quality"]
    samples: Iterator[Sample] = iter(()) if sid is None else _pages(sid, span)
    name = safe_filename(f"{point.asset.tag}-{point.key}-{iso(span.start_ms)[:10]}")
    return Export(point, f"{name}.csv", csv_lines(header, samples))


def _pages(sid: int, span: TimeRange) -> Iterator[Sample]:
    after: int | None = None
    while True:
        rows = storage().range(sid, span.start_ms, span.end_ms, after=after, limit=EXPORT_CHUNK)
        yield from rows
        if len(rows) < EXPORT_CHUNK:
            return
        after = rows[-1][0]
