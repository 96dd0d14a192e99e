"""Queries: latest values, paged ranges, downsampled series, CSV export, and their validation.

The pure rules (``fieldlink.telemetry.querying``) are tested directly; the endpoints through the
REST API with real storage, against a Python reference computed from the samples written.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import io
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from django.apps import apps
from django.db import transaction

from fieldlink.accounts import services as accounts
from fieldlink.accounts.access import Principal
from fieldlink.accounts.models import Membership, Organisation, Role, User
from fieldlink.devices.models import Area, Asset, Health, MeasuringPoint, Site
from fieldlink.telemetry import querying, services
from fieldlink.telemetry.querying import InvalidTimeRangeError, Sample, TimeRange
from tests.accounts.conftest import SecureClient

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
HOUR = 3_600_000


# -- pure rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2026-01-01T00:00:00Z", T0),
        ("2026-01-01T00:00:00.250+00:00", T0 + 250),
        ("2026-01-01T02:00:00+02:00", T0),
        (str(T0), T0),
    ],
)
def test_times_are_iso_utc_or_milliseconds(text: str, ms: int) -> None:
    assert querying.parse_time(text, "start") == ms


@pytest.mark.parametrize(
    "text", ["2026-01-01T00:00:00", "yesterday", "1e12", "", "99999999999999999", "1999-12-31Z"]
)
def test_bad_times_are_refused_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidTimeRangeError) as caught:
        querying.parse_time(text, "end")
    assert caught.value.details["field"] == "end"


def test_range_defaults_and_limits() -> None:
    span = querying.time_range(None, None, now_ms=T0)
    assert span == TimeRange(T0 - querying.DAY_MS, T0)
    with pytest.raises(InvalidTimeRangeError) as caught:
        querying.time_range(str(T0), str(T0), now_ms=T0)
    assert caught.value.details["field"] == "start"
    with pytest.raises(InvalidTimeRangeError) as caught:
        querying.time_range(str(T0), str(T0 + 401 * querying.DAY_MS), now_ms=T0)
    assert caught.value.details["field"] == "end"
    assert querying.time_range(str(T0), str(T0 + 400 * querying.DAY_MS), now_ms=T0).span_ms


def test_bucket_chart_spreads_storage_rows_and_leaves_gaps() -> None:
    span = TimeRange(T0, T0 + 10_000)
    samples = [(T0 + i * 100, float(i), 192) for i in range(100) if not 30 <= i < 50]
    rows = querying.reference_buckets(samples, span, 10)
    chart = querying.bucket_chart(rows, span, 10)
    assert chart.mode == "buckets"
    assert chart.bucket_ms == 1000
    assert chart.t == [T0 + i * 1000 for i in range(10)]
    assert chart.count == [10, 10, 10, 0, 0, 10, 10, 10, 10, 10]
    assert chart.min[3] is None  # an empty bucket is a gap, not 0
    assert chart.avg[4] is None
    assert (chart.min[0], chart.max[0], chart.avg[0]) == (0.0, 9.0, 4.5)


def test_bucket_width_covers_an_uneven_span() -> None:
    span = TimeRange(T0, T0 + 1001)
    chart = querying.bucket_chart([], span, 10)
    assert chart.bucket_ms == 101
    assert len(chart.t) == 10
    assert chart.t[-1] + chart.bucket_ms >= span.end_ms


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1", "'quoted"])
def test_csv_text_cells_cannot_start_a_formula(cell: str) -> None:
    assert querying.csv_text(cell) == "'" + cell


def test_csv_lines_parse_back() -> None:
    header = ["timestamp_utc", "ts_ms", '=HYPERLINK("http://x")/flow [m3/h]', "quality"]
    samples = [(T0, -5.25, 192), (T0 + 1, 1e-9, 0), (T0 + 2, 123456789.125, 64)]
    text = "".join(querying.csv_lines(header, iter(samples)))
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][2].startswith("'=")
    assert [(int(r[1]), float(r[2]), int(r[3])) for r in rows[1:]] == samples
    assert rows[1][0] == "2026-01-01T00:00:00.000Z"
    assert rows[1][2] == "-5.25"  # a negative number stays a number


# -- through the API ---------------------------------------------------------------------------


@dataclass
class Plant:
    org: Organisation
    owner: User
    asset: Asset
    flow: MeasuringPoint
    temp: MeasuringPoint

    def url(self, tail: str) -> str:
        return f"/api/v1/orgs/{self.org.pk}/{tail}"


def _plant(make_user: Callable[..., User], label: str, tag: str = "FIT-101") -> Plant:
    owner = make_user(f"owner-{label}@{label}.example")
    with transaction.atomic():
        org = accounts.create_organisation(
            Principal(owner, "session"), name=f"Plant {label}", region="eu-central"
        ).organisation
    site = Site.objects.create(organisation=org, name=f"Site {label}")
    hall = Area.objects.create(organisation=org, site=site, name="Hall 1")
    line = Area.objects.create(organisation=org, site=site, parent=hall, name="Line 2")
    asset = Asset.objects.create(
        organisation=org,
        site=site,
        area=line,
        tag=tag,
        health=Health.MAINTENANCE_REQUIRED,
        health_code="M104",
        health_cause="Electrode coating",
        health_remedy="Clean the electrodes",
    )
    flow = MeasuringPoint.objects.create(
        organisation=org, asset=asset, key="volume_flow", unit="m3/h"
    )
    temp = MeasuringPoint.objects.create(organisation=org, asset=asset, key="temperature", unit="C")
    return Plant(org, owner, asset, flow, temp)


ENGINE = importlib.util.find_spec("fieldlink.telemetry.storage") is not None


class MemoryStorage:
    """The storage engine's query API over a dict, for as long as the engine is not there.

    Same contract: half-open ranges, one value per series and millisecond (the last write wins),
    buckets of width ceil(span / n) from ``start`` with only the non-empty ones returned.
    """

    def __init__(self) -> None:
        self.series: dict[Any, int] = {}
        self.values: dict[int, dict[int, tuple[float, int]]] = {}

    def series_of(self, point_ids: Sequence[Any]) -> dict[Any, int]:
        return {p: self.series[p] for p in point_ids if p in self.series}

    def write(self, point_id: Any, samples: list[Sample]) -> None:
        sid = self.series.setdefault(point_id, len(self.series) + 1)
        for ts, value, quality in samples:
            self.values.setdefault(sid, {})[ts] = (value, quality)

    def _sorted(self, sid: int) -> list[Sample]:
        return sorted((ts, v, q) for ts, (v, q) in self.values.get(sid, {}).items())

    def latest(self, series_ids: Sequence[int]) -> dict[int, Sample]:
        return {sid: self._sorted(sid)[-1] for sid in series_ids if self.values.get(sid)}

    def range(
        self, series_id: int, start_ms: int, end_ms: int, *, after: int | None, limit: int
    ) -> list[Sample]:
        low = start_ms if after is None else max(start_ms, after + 1)
        return [s for s in self._sorted(series_id) if low <= s[0] < end_ms][:limit]

    def buckets(
        self, series_id: int, start_ms: int, end_ms: int, n: int
    ) -> list[tuple[int, float, float, float, int]]:
        return querying.reference_buckets(self._sorted(series_id), TimeRange(start_ms, end_ms), n)


_memory: list[MemoryStorage] = []


@pytest.fixture(autouse=True)
def _storage() -> Iterator[None]:
    """The real engine when it is there; else the in-memory stand-in."""
    if ENGINE:
        yield
        return
    memory = MemoryStorage()
    _memory.append(memory)
    services.use_storage(memory)
    try:
        yield
    finally:
        services.use_storage(None)
        _memory.remove(memory)


def write(point: MeasuringPoint, samples: list[Sample]) -> None:
    """Samples of one point into storage, the way ingestion stores them."""
    if not ENGINE:
        _memory[-1].write(point.pk, samples)
        return
    storage = importlib.import_module("fieldlink.telemetry.storage")
    series_model = apps.get_model("telemetry.Series")
    series, _ = series_model.objects.get_or_create(point=point)
    with transaction.atomic():
        storage.write_samples([(series.pk, ts, value, quality) for ts, value, quality in samples])


def _client(user: User) -> SecureClient:
    client = SecureClient(HTTP_USER_AGENT="query-tests", REMOTE_ADDR="127.0.0.1")
    client.force_login(user)
    return client


@pytest.fixture
def plant(make_user: Callable[..., User]) -> Plant:
    return _plant(make_user, "q")


@pytest.mark.django_db
@pytest.mark.backend
def test_latest_is_the_newest_value_per_point_with_health(plant: Plant) -> None:
    # Written out of order: the latest is the newest timestamp, not the last write.
    write(plant.flow, [(T0 + 2000, 3.0, 192), (T0, 1.0, 192)])
    write(plant.flow, [(T0 + 1000, 2.0, 64)])
    body = _client(plant.owner).get(plant.url(f"assets/{plant.asset.pk}/latest")).json()
    assert body["asset"]["health"] == "maintenance_required"
    assert body["asset"]["health_remedy"] == "Clean the electrodes"
    points = {p["key"]: p for p in body["points"]}
    assert points["volume_flow"]["ts_ms"] == T0 + 2000
    assert points["volume_flow"]["value"] == 3.0
    assert points["volume_flow"]["ts"] == "2026-01-01T00:00:02.000Z"
    assert points["temperature"]["value"] is None  # no value yet


@pytest.mark.django_db
@pytest.mark.backend
def test_range_paging_has_no_gaps_or_duplicates(plant: Plant) -> None:
    samples = [(T0 + i * 1000, float(i), 192) for i in range(2500)]
    write(plant.flow, samples)
    client = _client(plant.owner)
    seen: list[tuple[int, float, int]] = []
    after: int | None = None
    pages = 0
    while True:
        query = f"start={T0}&end={T0 + 3 * HOUR}&limit=1000" + (f"&after={after}" if after else "")
        body = client.get(plant.url(f"points/{plant.flow.pk}/values?{query}")).json()
        seen += list(zip(body["t"], body["value"], body["quality"], strict=True))
        pages += 1
        after = body["next_after"]
        if after is None:
            break
    assert pages == 3
    assert seen == samples


@pytest.mark.django_db
@pytest.mark.backend
def test_range_is_half_open(plant: Plant) -> None:
    write(plant.flow, [(T0, 1.0, 192), (T0 + 1000, 2.0, 192)])
    body = (
        _client(plant.owner)
        .get(plant.url(f"points/{plant.flow.pk}/values?start={T0}&end={T0 + 1000}"))
        .json()
    )
    assert body["t"] == [T0]


@pytest.mark.django_db
@pytest.mark.backend
def test_series_is_raw_below_max_points(plant: Plant) -> None:
    write(plant.flow, [(T0 + i * 1000, float(i), 192) for i in range(50)])
    body = (
        _client(plant.owner)
        .get(plant.url(f"points/{plant.flow.pk}/series?start={T0}&end={T0 + HOUR}&max_points=100"))
        .json()
    )
    assert body["mode"] == "raw"
    assert body["t"] == [T0 + i * 1000 for i in range(50)]
    assert body["avg"] == [float(i) for i in range(50)]


@pytest.mark.django_db
@pytest.mark.backend
def test_series_buckets_match_a_python_reference_with_empty_buckets(plant: Plant) -> None:
    # 2 hours at 1 s with a 20-minute hole, into 100 buckets of 72 s.
    samples = [
        (T0 + i * 1000, math.sin(i / 300) * 10 + (i % 13), 192)
        for i in range(7200)
        if not 1800 <= i < 3000
    ]
    write(plant.flow, samples)
    span = TimeRange(T0, T0 + 2 * HOUR)
    url = plant.url(f"points/{plant.flow.pk}/series?start={T0}&end={span.end_ms}&max_points=100")
    body = _client(plant.owner).get(url).json()
    expected = querying.bucket_chart(querying.reference_buckets(samples, span, 100), span, 100)
    assert body["mode"] == "buckets"
    assert body["bucket_ms"] == 72_000
    assert body["t"] == expected.t
    assert body["count"] == expected.count
    assert 0 in body["count"]  # the hole is there, as gaps
    for got, want in zip(body["avg"], expected.avg, strict=True):
        assert (got is None and want is None) or got == pytest.approx(want)
    assert body["min"] == expected.min
    assert body["max"] == expected.max
    assert sum(body["count"]) == len(samples)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("tail", "field"),
    [
        (f"values?start={T0}&end={T0}", "start"),
        (f"values?start={T0 + 1000}&end={T0}", "start"),
        (f"series?start={T0}&end={T0 + 401 * 86_400_000}", "end"),
        ("values?start=2026-01-01T00:00:00", "start"),
        ("series?end=tomorrow", "end"),
        (f"export.csv?start={T0}&end={T0 + 32 * 86_400_000}", "end"),
    ],
)
def test_bad_ranges_are_422_naming_the_field(plant: Plant, tail: str, field: str) -> None:
    response = _client(plant.owner).get(plant.url(f"points/{plant.flow.pk}/{tail}"))
    assert response.status_code == 422, response.content
    body = response.json()
    assert body["code"] == "invalid_time_range"
    assert body["details"]["field"] == field


@pytest.mark.django_db
@pytest.mark.parametrize(
    "tail",
    [
        "values?limit=10001",
        "values?limit=0",
        "series?max_points=2001",
        "series?max_points=1",
        "values?strat=1",
    ],
)
def test_out_of_bounds_parameters_are_422(plant: Plant, tail: str) -> None:
    response = _client(plant.owner).get(plant.url(f"points/{plant.flow.pk}/{tail}"))
    assert response.status_code == 422, response.content


@pytest.mark.django_db
@pytest.mark.backend
def test_csv_export_parses_back_and_is_formula_safe(make_user: Callable[..., User]) -> None:
    plant = _plant(make_user, "c", tag='=HYPERLINK("http://evil")')
    samples = [(T0 + i * 1000, -1.5 * i, 192) for i in range(25_000)]  # > one storage page
    write(plant.flow, samples)
    response = _client(plant.owner).get(
        plant.url(f"points/{plant.flow.pk}/export.csv?start={T0}&end={T0 + 8 * HOUR}")
    )
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    disposition = response["Content-Disposition"]
    assert disposition.startswith('attachment; filename="')
    assert '"' not in disposition.split('filename="')[1][:-1]
    text = b"".join(response.streaming_content).decode()
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][0] == "timestamp_utc"
    assert rows[0][2].startswith("'=")  # the tag is in the header, neutralised
    assert [(int(r[1]), float(r[2]), int(r[3])) for r in rows[1:]] == samples


@pytest.mark.django_db
@pytest.mark.backend
def test_overview_lists_assets_with_health_and_filters(
    plant: Plant, make_user: Callable[..., User]
) -> None:
    Asset.objects.create(organisation=plant.org, site=plant.asset.site, tag="PT-7")
    write(plant.flow, [(T0, 4.5, 192)])
    client = _client(plant.owner)
    body = client.get(plant.url("overview")).json()
    assert [a["asset"]["tag"] for a in body] == ["FIT-101", "PT-7"]
    assert body[0]["path"] == ["Site q", "Hall 1", "Line 2"]
    flow = next(p for p in body[0]["points"] if p["key"] == "volume_flow")
    assert flow["value"] == 4.5
    only = client.get(plant.url("overview?health=maintenance_required")).json()
    assert [a["asset"]["tag"] for a in only] == ["FIT-101"]
    hall = Area.objects.get(name="Hall 1")
    nested = client.get(plant.url(f"overview?area_id={hall.pk}")).json()
    assert [a["asset"]["tag"] for a in nested] == ["FIT-101"]  # areas include their children


@pytest.mark.django_db
def test_viewer_reads_values(plant: Plant, make_user: Callable[..., User]) -> None:
    viewer = make_user("viewer-q@q.example")
    Membership.objects.create(organisation=plant.org, user=viewer, role=Role.VIEWER)
    write(plant.flow, [(T0, 1.0, 192)])
    response = _client(viewer).get(plant.url(f"points/{plant.flow.pk}/values?start={T0}"))
    assert response.status_code == 200
    assert response.json()["value"] == [1.0]


@pytest.mark.django_db
def test_cross_tenant_point_values_is_404(plant: Plant, make_user: Callable[..., User]) -> None:
    other = _plant(make_user, "x")
    write(other.flow, [(T0, 42.0, 192)])
    client = _client(plant.owner)
    for tail in ("values", "series", "export.csv"):
        response = client.get(plant.url(f"points/{other.flow.pk}/{tail}?start={T0}"))
        assert response.status_code == 404, tail
        assert b"42" not in response.content
    response = client.get(plant.url(f"assets/{other.asset.pk}/latest"))
    assert response.status_code == 404


@pytest.mark.django_db
def test_cross_tenant_overview_filter_is_404(plant: Plant, make_user: Callable[..., User]) -> None:
    other = _plant(make_user, "y")
    response = _client(plant.owner).get(plant.url(f"overview?site_id={other.asset.site_id}"))
    assert response.status_code == 404
