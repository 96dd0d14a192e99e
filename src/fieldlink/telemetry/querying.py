"""The pure core of the telemetry queries: times and ranges, downsampling maths, CSV cells.

No I/O here (the use cases in ``services`` read storage), so every rule is tested directly.
Times are UTC milliseconds; ranges are half-open, ``[start, end)``.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from fieldlink.kit.errors import FieldlinkError

DAY_MS: Final = 86_400_000
MAX_SPAN_MS: Final = 400 * DAY_MS  # a year plus a margin: the longest chart anyone asked for
EXPORT_MAX_SPAN_MS: Final = 31 * DAY_MS  # 2.7 M rows at 1 Hz: ~100 MB of CSV per download
DEFAULT_SPAN_MS: Final = DAY_MS
MAX_PAGE: Final = 10_000
DEFAULT_PAGE: Final = 1_000
MAX_POINTS: Final = 2_000
DEFAULT_POINTS: Final = 1_000
EXPORT_CHUNK: Final = MAX_PAGE
# Before this no instrument of ours reported anything; the ingestion path refuses it too.
EARLIEST_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z
LATEST_MS: Final = 4_102_444_800_000  # 2100-01-01T00:00:00Z

Sample = tuple[int, float, int]  # (ts_ms, value, quality)


class InvalidTimeRangeError(FieldlinkError):
    """A time or range the caller sent cannot be read; ``details.field`` names the parameter."""

    code = "invalid_time_range"
    kind = "invalid"


# -- times and ranges (pure) -------------------------------------------------------------------

_DIGITS: Final = re.compile(r"-?\d{1,16}")


def parse_time(value: str, field: str) -> int:
    """UTC milliseconds from ISO 8601 with an explicit UTC offset, or from integer milliseconds."""
    text = value.strip()
    if _DIGITS.fullmatch(text):
        ms = int(text)
    else:
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise _invalid(field, "not an ISO 8601 time or a number of milliseconds") from None
        if parsed.tzinfo is None:
            # A time without an offset would be read in whatever zone the server is in.
            raise _invalid(field, "an ISO 8601 time needs a UTC offset (Z or +00:00)")
        ms = int(parsed.timestamp() * 1000)
    if not EARLIEST_MS <= ms <= LATEST_MS:
        raise _invalid(field, "must be between 2000-01-01 and 2100-01-01 UTC")
    return ms


@dataclass(frozen=True)
class TimeRange:
    start_ms: int
    end_ms: int

    @property
    def span_ms(self) -> int:
        return self.end_ms - self.start_ms


def time_range(
    start: str | None,
    end: str | None,
    *,
    now_ms: int,
    default_span_ms: int = DEFAULT_SPAN_MS,
    max_span_ms: int = MAX_SPAN_MS,
) -> TimeRange:
    """The range ``[start, end)``; no ``end`` means now, no ``start`` means end - default span."""
    end_ms = parse_time(end, "end") if end else now_ms
    start_ms = parse_time(start, "start") if start else end_ms - default_span_ms
    if start_ms >= end_ms:
        raise _invalid("start", "must be before end")
    if end_ms - start_ms > max_span_ms:
        raise _invalid("end", f"the range may span at most {max_span_ms // DAY_MS} days")
    return TimeRange(start_ms, end_ms)


def _invalid(field: str, reason: str) -> InvalidTimeRangeError:
    return InvalidTimeRangeError(f"{field}: {reason}.", details={"field": field, "reason": reason})


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def iso(ms: int) -> str:
    """ISO 8601 UTC with milliseconds, e.g. ``2026-11-28T05:00:00.000Z``."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


# -- downsampling (pure) -----------------------------------------------------------------------


def bucket_width(span_ms: int, n: int) -> int:
    """Width of each of ``n`` buckets covering ``span_ms`` (the last one may be cut short)."""
    return max(1, -(-span_ms // n))


@dataclass(frozen=True)
class Chart:
    """Columns for a chart; raw values have min = max = avg = value and count 1."""

    mode: str  # "raw" or "buckets"
    bucket_ms: int | None
    t: list[int]
    min: list[float | None]
    max: list[float | None]
    avg: list[float | None]
    count: list[int]


def raw_chart(samples: Sequence[Sample]) -> Chart:
    values: list[float | None] = [s[1] for s in samples]
    return Chart(
        "raw", None, [s[0] for s in samples], values, list(values), list(values), [1] * len(values)
    )


def bucket_chart(
    rows: Sequence[tuple[int, float, float, float, int]], span: TimeRange, n: int
) -> Chart:
    """Storage's non-empty buckets spread over all ``n`` slots; empty ones are null (a gap)."""
    width = bucket_width(span.span_ms, n)
    slots = -(-span.span_ms // width)
    t = [span.start_ms + i * width for i in range(slots)]
    low: list[float | None] = [None] * slots
    high: list[float | None] = [None] * slots
    mean: list[float | None] = [None] * slots
    count = [0] * slots
    for start, lo, hi, avg, n_values in rows:
        i = (start - span.start_ms) // width
        if 0 <= i < slots and n_values:
            low[i], high[i], mean[i], count[i] = lo, hi, avg, n_values
    return Chart("buckets", width, t, low, high, mean, count)


def reference_buckets(
    samples: Sequence[Sample], span: TimeRange, n: int
) -> list[tuple[int, float, float, float, int]]:
    """What storage.buckets must answer, computed the obvious way (tests and the benchmark)."""
    width = bucket_width(span.span_ms, n)
    groups: dict[int, list[float]] = {}
    for ts, value, _quality in samples:
        if span.start_ms <= ts < span.end_ms:
            groups.setdefault((ts - span.start_ms) // width, []).append(value)
    return [
        (span.start_ms + i * width, min(v), max(v), math.fsum(v) / len(v), len(v))
        for i, v in sorted(groups.items())
    ]


# -- CSV (pure) --------------------------------------------------------------------------------

# A spreadsheet runs a cell starting with one of these as a formula; such text cells get a
# leading apostrophe (so does one starting with an apostrophe, keeping the escape reversible).
_FORMULA_START: Final = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_text(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_START) else value


def csv_number(value: float) -> str:
    # Numbers are written by us, never as text the caller chose: "-5" is a number, not a formula.
    return repr(float(value))


class _Line:
    def write(self, value: str) -> str:
        return value


def csv_lines(header: Sequence[str], samples: Iterator[Sample]) -> Iterator[str]:
    writer = csv.writer(_Line(), lineterminator="\r\n")
    yield writer.writerow([csv_text(h) for h in header])
    for ts, value, quality in samples:
        yield writer.writerow([iso(ts), str(ts), csv_number(value), str(int(quality))])


def safe_filename(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "export"
