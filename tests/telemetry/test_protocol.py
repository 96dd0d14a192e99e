"""The batch decoder: limits, malformed bodies, gzip bombs; properties checked with hypothesis."""

from __future__ import annotations

import contextlib
import gzip
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fieldlink.protocol import telemetry as proto
from fieldlink.protocol.telemetry import Batch, BatchRefused, Value, decode_batch, inflate

NOW = 1_767_225_600_000


def body(**batch: object) -> bytes:
    return json.dumps(batch).encode()


def refused(data: bytes) -> BatchRefused:
    with pytest.raises(BatchRefused) as caught:
        decode_batch(data, now_ms=NOW)
    return caught.value


def test_compact_batch_decodes() -> None:
    batch = decode_batch(
        body(sequence=7, values=[["FIT-1/flow", NOW, 1.5, 192], ["FIT-1/t", NOW, 2, 0]]),
        now_ms=NOW,
    )
    assert batch.sequence == 7
    assert batch.values[1] == Value("FIT-1/t", NOW, 2.0, 0)
    assert batch.backlog is False


@pytest.mark.parametrize(
    ("values", "code", "index"),
    [
        ([["A/x", NOW, "1.0", 192]], "batch_invalid", None),  # wrong type
        ([["A/x", NOW, 1.0, 192, "extra"]], "batch_invalid", None),
        ([["A/x", NOW - 10**15, 1.0, 192]], "value_invalid", 0),  # before 2000
        ([["A/x", NOW, 1.0], ["A/x", NOW + 301_000, 1.0]], "value_invalid", 1),  # future
        ([["A/x", NOW, 1.0, 7]], "value_invalid", 0),  # unknown quality
        ([["nopoint", NOW, 1.0, 192]], "value_invalid", 0),
        ([["A/x", 2**70, 1.0, 192]], "value_invalid", 0),  # huge integer
    ],
)
def test_bad_values_name_index_and_reason(
    values: list[object], code: str, index: int | None
) -> None:
    err = refused(body(sequence=1, values=values))
    assert (err.code, err.index) == (code, index)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400"])
def test_non_finite_numbers_are_refused(literal: str) -> None:
    data = b'{"sequence":1,"values":[["A/x",%d,%s,192]]}' % (NOW, literal.encode())
    assert refused(data).code in {"value_invalid", "body_malformed", "batch_invalid"}


def test_huge_finite_numbers_are_refused() -> None:
    err = refused(body(sequence=1, values=[["A/x", NOW, 1e308, 192]]))
    assert (err.code, err.index) == ("value_invalid", 0)


def test_unknown_fields_and_bad_sequence_are_refused() -> None:
    assert refused(body(sequence=1, values=[], sneaky=True)).code == "batch_invalid"
    assert refused(body(sequence=0, values=[])).code == "batch_invalid"
    assert refused(b'{"sequence":1,"values":[').code == "body_malformed"


def test_too_many_values_is_too_large() -> None:
    values = [["A/x", NOW, 1.0, 192]] * (proto.MAX_VALUES + 1)
    err = refused(body(sequence=1, values=values))
    assert (err.code, err.kind) == ("batch_too_large", "too_large")


def test_truncated_gzip_is_malformed() -> None:
    packed = gzip.compress(body(sequence=1, values=[]))
    with pytest.raises(BatchRefused) as caught:
        inflate(packed[:-6])
    assert caught.value.code == "body_malformed"


def test_gzip_bomb_stops_at_the_inflated_cap() -> None:
    bomb = gzip.compress(b" " * (proto.MAX_INFLATED_BYTES + 1), compresslevel=9)
    assert len(bomb) < 64 * 1024
    with pytest.raises(BatchRefused) as caught:
        inflate(bomb)
    assert (caught.value.code, caught.value.kind) == ("body_too_large", "too_large")


_points = st.from_regex(r"[A-Z]{1,8}-[0-9]{1,4}/[a-z_]{1,16}", fullmatch=True)
_values = st.builds(
    Value,
    _points,
    st.integers(proto.MIN_TS_MS, NOW + proto.MAX_FUTURE_MS),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300),
    st.sampled_from(sorted(proto.QUALITIES)),
)


@settings(max_examples=200, deadline=None)
@given(
    st.builds(
        Batch, st.integers(1, 2**63 - 1), st.lists(_values, max_size=30), st.just([]), st.booleans()
    )
)
def test_valid_batches_round_trip(batch: Batch) -> None:
    assert decode_batch(proto.encode_batch(batch), now_ms=NOW) == batch


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_raise_our_error(data: bytes) -> None:
    with contextlib.suppress(BatchRefused):
        decode_batch(data, now_ms=NOW)
    with contextlib.suppress(BatchRefused):
        inflate(data)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(
    st.fixed_dictionaries(
        {"sequence": _json, "values": st.lists(st.lists(_json, max_size=5), max_size=5)}
    )
)
def test_arbitrary_json_shapes_only_ever_raise_our_error(doc: dict[str, object]) -> None:
    data = json.dumps(doc).encode()
    try:
        batch = decode_batch(data, now_ms=NOW)
    except BatchRefused:
        return
    assert all(math.isfinite(v.value) for v in batch.values)
