"""The telemetry batch of the edge ⇄ cloud contract: wire types, limits and the pure decoder.

No I/O and nothing of ours is imported: the agent and the cloud share this module. The contract
in words is ``docs/protocol.md``; a change here is a change there.

A batch is decoded in one msgspec pass into typed structs (values are compact JSON arrays, no
per-value object), then checked in one loop. Every refusal is a ``BatchRefused`` carrying a
stable ``code``, the HTTP-neutral ``kind`` and, for a value, its index and the reason, so the
agent can tell which value of a batch is at fault; a batch is accepted whole or not at all.
"""

from __future__ import annotations

import math
import zlib
from typing import Final

import msgspec

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_FUTURE_MS",
    "MAX_HEALTH",
    "MAX_INFLATED_BYTES",
    "MAX_VALUES",
    "MIN_TS_MS",
    "PROTOCOL_VERSION",
    "QUALITY_BAD",
    "QUALITY_GOOD",
    "QUALITY_UNCERTAIN",
    "Ack",
    "AgentStatus",
    "Batch",
    "BatchRefused",
    "Gap",
    "HealthReport",
    "Value",
    "decode_batch",
    "encode_batch",
    "inflate",
    "split_point",
]

PROTOCOL_VERSION: Final = 1

MAX_BODY_BYTES: Final = 2 * 1024 * 1024  # as sent (compressed or not)
MAX_INFLATED_BYTES: Final = 8 * 1024 * 1024  # after gzip: a zip bomb stops here
MAX_VALUES: Final = 10_000
MAX_HEALTH: Final = 1_000
MAX_GAPS: Final = 100
MAX_STATUS_TEXT: Final = 300
MAX_POINT_CHARS: Final = 130  # "<asset tag ≤ 64>/<point key ≤ 64>"
MIN_TS_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_FUTURE_MS: Final = 5 * 60 * 1000
MAX_SEQUENCE: Final = 2**63 - 1
# Larger magnitudes are refused so that sums in aggregates (avg over millions of values) stay
# finite; no instrument measures anything near 1e300 in any unit we list.
MAX_ABS_VALUE: Final = 1e300

# The OPC (DA) quality bytes' major states, as field instruments and gateways report them.
QUALITY_GOOD: Final = 192
QUALITY_UNCERTAIN: Final = 64
QUALITY_BAD: Final = 0
QUALITIES: Final = frozenset({QUALITY_GOOD, QUALITY_UNCERTAIN, QUALITY_BAD})

HEALTH_STATES: Final = frozenset(
    {"ok", "failure", "function_check", "out_of_specification", "maintenance_required"}
)


class BatchRefused(Exception):  # noqa: N818 - a refusal, not a bug: the name says what it is
    """A batch the cloud will not store; ``kind`` is ``invalid`` or ``too_large``."""

    def __init__(
        self, code: str, message: str, *, kind: str = "invalid", index: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.kind = kind
        self.index = index


class Value(msgspec.Struct, array_like=True, forbid_unknown_fields=True, frozen=True):
    """``[point, ts_ms, value, quality]``; point is ``"<asset tag>/<point key>"``."""

    point: str
    ts: int
    value: float
    quality: int = QUALITY_GOOD


class HealthReport(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    asset: str  # the asset's tag
    status: str  # NE 107: ok, failure, function_check, out_of_specification, …
    ts: int
    code: str = ""
    cause: str = ""
    remedy: str = ""


class Gap(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Values the agent had to drop (its buffer was full): the range and how many, never silent."""

    from_ts: int
    to_ts: int
    count: int
    reason: str = "buffer_full"


class AgentStatus(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """What the agent reports about itself with a batch (optional; the newest one wins)."""

    software_version: str = ""
    buffer_values: int = 0
    oldest_unsent_age_s: int = 0
    dropped_total: int = 0
    last_error: str = ""


class Batch(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    sequence: int
    values: list[Value] = []
    health: list[HealthReport] = []
    backlog: bool = False  # drained from the agent's disk buffer, not live
    gaps: list[Gap] = []
    status: AgentStatus | None = None


class Ack(msgspec.Struct, frozen=True):
    acked_sequence: int
    accepted: bool
    duplicate: bool
    desired_config_version: int
    update_available: str | None
    rotate_credential: bool


_decoder: Final = msgspec.json.Decoder(Batch)
_encoder: Final = msgspec.json.Encoder()


def encode_batch(batch: Batch) -> bytes:
    return _encoder.encode(batch)


def inflate(body: bytes, *, limit: int = MAX_INFLATED_BYTES) -> bytes:
    """A gzip body inflated, refusing past ``limit`` bytes without inflating further."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BatchRefused("body_malformed", "The gzip body is corrupt.") from exc
    if len(out) > limit or inflater.unconsumed_tail:
        raise BatchRefused(
            "body_too_large",
            f"The body inflates to more than {limit} bytes.",
            kind="too_large",
        )
    if not inflater.eof:
        raise BatchRefused("body_malformed", "The gzip body is truncated.")
    if inflater.unused_data:
        raise BatchRefused("body_malformed", "The gzip body has trailing data.")
    return out


def split_point(point: str) -> tuple[str, str]:
    """``"FIT-101/volume_flow"`` → ``("FIT-101", "volume_flow")`` (keys hold no ``/``)."""
    tag, _, key = point.rpartition("/")
    return tag, key


def _refuse_value(index: int, reason: str) -> BatchRefused:
    return BatchRefused("value_invalid", f"values[{index}]: {reason}", index=index)


def decode_batch(body: bytes, *, now_ms: int) -> Batch:
    """The batch in ``body`` (JSON, already inflated), checked, or BatchRefused."""
    try:
        batch = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BatchRefused("batch_invalid", f"The batch does not match the schema: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise BatchRefused("body_malformed", f"The body is not valid JSON: {exc}") from exc
    if not 1 <= batch.sequence <= MAX_SEQUENCE:
        raise BatchRefused("batch_invalid", "sequence must be a positive 64-bit integer.")
    if len(batch.values) > MAX_VALUES:
        raise BatchRefused(
            "batch_too_large", f"A batch holds at most {MAX_VALUES} values.", kind="too_large"
        )
    if len(batch.health) > MAX_HEALTH:
        raise BatchRefused(
            "batch_too_large",
            f"A batch holds at most {MAX_HEALTH} health reports.",
            kind="too_large",
        )
    if len(batch.gaps) > MAX_GAPS:
        raise BatchRefused(
            "batch_too_large", f"A batch holds at most {MAX_GAPS} gaps.", kind="too_large"
        )
    latest = now_ms + MAX_FUTURE_MS
    _check_values(batch.values, latest)
    _check_health(batch.health, latest)
    _check_gaps(batch.gaps, latest)
    if batch.status is not None:
        _check_status(batch.status)
    return batch


def _check_gaps(gaps: list[Gap], latest: int) -> None:
    for index, gap in enumerate(gaps):
        if not MIN_TS_MS <= gap.from_ts <= gap.to_ts <= latest:
            raise BatchRefused(
                "gap_invalid",
                f"gaps[{index}]: from_ts <= to_ts, both UTC ms after 2000 and not ahead.",
                index=index,
            )
        if not 0 < gap.count <= MAX_SEQUENCE or len(gap.reason) > 32:
            raise BatchRefused(
                "gap_invalid", f"gaps[{index}]: count must be positive.", index=index
            )


def _check_status(status: AgentStatus) -> None:
    if len(status.software_version) > 100 or len(status.last_error) > MAX_STATUS_TEXT:
        raise BatchRefused("status_invalid", "status: text too long.")
    for name in ("buffer_values", "oldest_unsent_age_s", "dropped_total"):
        if not 0 <= getattr(status, name) <= MAX_SEQUENCE:
            raise BatchRefused("status_invalid", f"status.{name} is out of range.")


def _check_values(values: list[Value], latest: int) -> None:
    isfinite = math.isfinite
    for index, value in enumerate(values):
        if not (isfinite(value.value) and abs(value.value) <= MAX_ABS_VALUE):
            raise _refuse_value(
                index,
                "value must be a finite number of magnitude at most 1e300 (no NaN or infinity).",
            )
        if not MIN_TS_MS <= value.ts <= latest:
            raise _refuse_value(
                index, "ts must be UTC milliseconds after 2000 and at most 5 minutes ahead."
            )
        if value.quality not in QUALITIES:
            raise _refuse_value(index, "quality must be 192 (good), 64 (uncertain) or 0 (bad).")
        if not 0 < len(value.point) <= MAX_POINT_CHARS or "/" not in value.point:
            raise _refuse_value(index, 'point must be "<asset tag>/<point key>".')


def _check_health(health: list[HealthReport], latest: int) -> None:
    for index, report in enumerate(health):
        if report.status not in HEALTH_STATES:
            raise BatchRefused(
                "health_invalid", f"health[{index}]: unknown NE 107 status.", index=index
            )
        if not MIN_TS_MS <= report.ts <= latest:
            raise BatchRefused("health_invalid", f"health[{index}]: ts out of range.", index=index)
        if len(report.code) > 32 or len(report.cause) > 500 or len(report.remedy) > 500:
            raise BatchRefused("health_invalid", f"health[{index}]: text too long.", index=index)
