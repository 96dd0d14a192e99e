"""The threshold core: ordering, hysteresis, bad quality, escalation, no chatter."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fieldlink.telemetry.alarms import (
    Action,
    Event,
    Level,
    Side,
    Thresholds,
    ThresholdsInvalidError,
    evaluate,
    raw_level,
)

FOUR = Thresholds(low_low=0.0, low=10.0, high=90.0, high_high=100.0, hysteresis=2.0)


def run(thresholds: Thresholds, values: list[float], state: Level = Level.NORMAL) -> list[Level]:
    states = []
    for value in values:
        state, _ = evaluate(thresholds, state, value)
        states.append(state)
    return states


# -- validation


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"low": 10.0, "low_low": 10.0}, "low"),
        ({"low": 10.0, "high": 5.0}, "high"),
        ({"high": 90.0, "high_high": 80.0}, "high_high"),
        ({"low_low": 50.0, "high_high": 40.0}, "high_high"),
        ({"high": 1.0, "hysteresis": -0.1}, "hysteresis"),
        ({"high": math.nan}, "high"),
        ({"low": -math.inf}, "low"),
        ({"high": 1.0, "hysteresis": math.inf}, "hysteresis"),
        ({"low": 10.0, "high": 20.0, "hysteresis": 10.0}, "hysteresis"),
    ],
)
def test_invalid_thresholds_name_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ThresholdsInvalidError) as caught:
        Thresholds(**kwargs).validate()
    assert caught.value.field == field


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"high": 5.0},
        {"low_low": -5.0},
        {"low": 1.0, "high_high": 2.0, "hysteresis": 0.5},
        {"low_low": 0.0, "low": 10.0, "high": 90.0, "high_high": 100.0, "hysteresis": 79.0},
    ],
)
def test_valid_subsets_accepted(kwargs: dict[str, float]) -> None:
    assert Thresholds(**kwargs).validate() == Thresholds(**kwargs)


# -- levels and hysteresis


@pytest.mark.parametrize(
    ("value", "level"),
    [
        (-1.0, Level.LOW_LOW),
        (0.0, Level.LOW_LOW),
        (5.0, Level.LOW),
        (10.0, Level.LOW),
        (10.01, Level.NORMAL),
        (50.0, Level.NORMAL),
        (89.99, Level.NORMAL),
        (90.0, Level.HIGH),
        (99.9, Level.HIGH),
        (100.0, Level.HIGH_HIGH),
        (1e300, Level.HIGH_HIGH),
    ],
)
def test_raw_levels(value: float, level: Level) -> None:
    assert raw_level(FOUR, value) is level


def test_high_clears_only_past_limit_minus_hysteresis() -> None:
    assert run(FOUR, [90.0, 89.0, 88.0, 87.99]) == [
        Level.HIGH,
        Level.HIGH,
        Level.HIGH,
        Level.NORMAL,
    ]


def test_low_clears_only_past_limit_plus_hysteresis() -> None:
    assert run(FOUR, [10.0, 11.0, 12.0, 12.01]) == [
        Level.LOW,
        Level.LOW,
        Level.LOW,
        Level.NORMAL,
    ]


def test_zero_hysteresis_is_consistent_at_the_limit() -> None:
    t = Thresholds(high=5.0)
    assert run(t, [5.0, 5.0, 4.999, 5.0]) == [Level.HIGH, Level.HIGH, Level.NORMAL, Level.HIGH]


def test_escalation_high_to_high_high_and_back() -> None:
    state = Level.NORMAL
    seen: list[tuple[Level, tuple[Event, ...]]] = []
    for value in [91.0, 100.0, 99.0, 97.99, 89.0, 87.0]:
        state, events = evaluate(FOUR, state, value)
        seen.append((state, events))
    assert seen == [
        (Level.HIGH, (Event(Action.OPEN, Side.HIGH, Level.HIGH),)),
        (Level.HIGH_HIGH, (Event(Action.ESCALATE, Side.HIGH, Level.HIGH_HIGH),)),
        (Level.HIGH_HIGH, ()),  # inside the deadband of high_high
        (Level.HIGH, (Event(Action.DEESCALATE, Side.HIGH, Level.HIGH),)),
        (Level.HIGH, ()),  # inside the deadband of high
        (Level.NORMAL, (Event(Action.CLEAR, Side.HIGH, Level.HIGH),)),
    ]


def test_straight_to_high_high_opens_once() -> None:
    state, events = evaluate(FOUR, Level.NORMAL, 150.0)
    assert state is Level.HIGH_HIGH
    assert events == (Event(Action.OPEN, Side.HIGH, Level.HIGH_HIGH),)
    state, events = evaluate(FOUR, state, 50.0)
    assert state is Level.NORMAL
    assert events == (Event(Action.CLEAR, Side.HIGH, Level.HIGH_HIGH),)


def test_jump_across_clears_one_side_and_opens_the_other() -> None:
    state, events = evaluate(FOUR, Level.HIGH_HIGH, -3.0)
    assert state is Level.LOW_LOW
    assert events == (
        Event(Action.CLEAR, Side.HIGH, Level.HIGH_HIGH),
        Event(Action.OPEN, Side.LOW, Level.LOW_LOW),
    )


def test_low_low_escalation_mirrors_high() -> None:
    assert run(FOUR, [9.0, 0.0, 1.5, 2.01, 11.0, 12.5]) == [
        Level.LOW,
        Level.LOW_LOW,
        Level.LOW_LOW,
        Level.LOW,
        Level.LOW,
        Level.NORMAL,
    ]


def test_only_high_high_configured() -> None:
    t = Thresholds(high_high=10.0, hysteresis=1.0)
    assert run(t, [10.0, 9.5, 8.9, -1e9]) == [
        Level.HIGH_HIGH,
        Level.HIGH_HIGH,
        Level.NORMAL,
        Level.NORMAL,
    ]


def test_no_thresholds_never_alarm() -> None:
    assert run(Thresholds(), [-1e308, 0.0, 1e308]) == [Level.NORMAL] * 3


# -- quality


def test_bad_quality_values_do_not_change_state() -> None:
    assert evaluate(FOUR, Level.NORMAL, 500.0, good=False) == (Level.NORMAL, ())
    assert evaluate(FOUR, Level.HIGH_HIGH, 50.0, good=False) == (Level.HIGH_HIGH, ())


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_do_not_change_state(value: float) -> None:
    assert evaluate(FOUR, Level.HIGH, value) == (Level.HIGH, ())


# -- properties


finite = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6)


@st.composite
def configs(draw: st.DrawFn) -> Thresholds:
    values = sorted(set(draw(st.lists(finite, min_size=4, max_size=4))))
    if len(values) < 4:
        values = [0.0, 10.0, 90.0, 100.0]
    names = ["low_low", "low", "high", "high_high"]
    chosen = draw(st.lists(st.sampled_from(names), unique=True, min_size=1))
    limits = {n: v for n, v in zip(names, values, strict=True) if n in chosen}
    high_side = [v for n, v in limits.items() if n.startswith("high")]
    low_side = [v for n, v in limits.items() if n.startswith("low")]
    gap = min(high_side) - max(low_side) if high_side and low_side else 1e6
    hysteresis = draw(st.floats(min_value=0.0, max_value=gap, exclude_max=True))
    return Thresholds(**limits, hysteresis=hysteresis).validate()


@given(configs(), st.data())
def test_no_chatter_inside_the_deadband(t: Thresholds, data: st.DataObject) -> None:
    """Values oscillating between a limit and limit ∓ hysteresis change the state at most once."""
    name, limit = data.draw(st.sampled_from(t.limits()))
    if name.startswith("high"):
        band = st.floats(min_value=limit - t.hysteresis, max_value=limit)
    else:
        band = st.floats(min_value=limit, max_value=limit + t.hysteresis)
    others = [v for n, v in t.limits() if n != name]
    # No other limit's deadband may reach into this band: there a value legitimately leaves
    # that other level first (e.g. low_low → low), then enters this one (found by hypothesis).
    assume(all(abs(v - limit) > 2 * t.hysteresis for v in others))
    values = data.draw(st.lists(band, min_size=1, max_size=50))
    start = data.draw(st.sampled_from(list(Level)))
    if start is not Level.NORMAL and getattr(t, start.value) is None:
        start = Level.NORMAL
    # The first value may move the state from wherever it was; from then on, at most once.
    state, _ = evaluate(t, start, values[0])
    transitions = 0
    for value in values[1:]:
        state, events = evaluate(t, state, value)
        transitions += bool(events)
    assert transitions <= 1


@given(configs(), st.lists(finite, max_size=30))
def test_state_is_always_a_configured_level(t: Thresholds, values: list[float]) -> None:
    state = Level.NORMAL
    for value in values:
        state, _ = evaluate(t, state, value)
        assert state is Level.NORMAL or getattr(t, state.value) is not None
        # Leaving the deadband entirely means agreeing with the stateless level.
        if all(abs(value - limit) > t.hysteresis for _, limit in t.limits()):
            assert state is raw_level(t, value)


@given(configs(), finite, finite)
def test_events_describe_the_change(t: Thresholds, first: float, second: float) -> None:
    state, _ = evaluate(t, Level.NORMAL, first)
    new, events = evaluate(t, state, second)
    assert bool(events) == (new is not state)
    for event in events:
        assert event.level in (state, new)
