"""The staged-rollout core: waves, offers, silent devices, halting, windows, versions."""

from __future__ import annotations

import math
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fieldlink.updates.rollouts import (
    DEFAULT_WAVES,
    Member,
    MemberState,
    Policy,
    Window,
    assign_waves,
    check_policy,
    failure_rate_exceeded,
    is_downgrade,
    outcome_of_report,
    plan,
    version_key,
)

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
POLICY = Policy()

waves_st = st.lists(st.integers(1, 99), max_size=5, unique=True).map(lambda xs: (*sorted(xs), 100))
keys_st = st.lists(st.uuids().map(str), max_size=60, unique=True)


def members(states: dict[str, MemberState], *, wave: int = 0, **kw: object) -> list[Member]:
    return [Member(key, wave, state, **kw) for key, state in states.items()]  # type: ignore[arg-type]


# -- policy


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        (Policy(waves=()), "waves"),
        (Policy(waves=(50,)), "waves"),
        (Policy(waves=(50, 50, 100)), "waves"),
        (Policy(waves=(60, 30, 100)), "waves"),
        (Policy(waves=(0, 100)), "waves"),
        (Policy(waves=(50, 101)), "waves"),
        (Policy(waves=(*range(1, 11), 100)), "waves"),
        (Policy(failure_threshold_pct=-1), "failure_threshold_pct"),
        (Policy(failure_threshold_pct=101), "failure_threshold_pct"),
        (Policy(silent_timeout=timedelta(seconds=59)), "silent_timeout"),
        (Policy(silent_timeout=timedelta(days=8)), "silent_timeout"),
        (Policy(window=Window(time(2), time(2))), "window"),
    ],
)
def test_invalid_policy_names_the_field(policy: Policy, field: str) -> None:
    problem = check_policy(policy)
    assert problem is not None
    assert problem[0] == field


def test_defaults_are_valid() -> None:
    assert check_policy(POLICY) is None
    assert POLICY.waves == DEFAULT_WAVES == (5, 25, 100)
    assert POLICY.failure_threshold_pct == 10
    assert POLICY.silent_timeout == timedelta(minutes=30)


# -- waves


@given(keys_st, waves_st, st.text(max_size=8))
def test_waves_are_cumulative_percentages_with_a_canary(
    keys: list[str], waves: tuple[int, ...], salt: str
) -> None:
    assigned = assign_waves(keys, waves, salt=salt)
    assert set(assigned) == set(keys)
    n = len(keys)
    for index, pct in enumerate(waves):
        upto = sum(1 for w in assigned.values() if w <= index)
        expected = min(n, math.ceil(n * pct / 100))
        if index == 0 and n:
            expected = max(expected, 1)
        assert upto == expected
    if n:
        assert any(w == 0 for w in assigned.values())


@given(keys_st, waves_st)
def test_wave_assignment_is_reproducible_and_order_free(
    keys: list[str], waves: tuple[int, ...]
) -> None:
    assert assign_waves(keys, waves, salt="r1") == assign_waves(keys[::-1], waves, salt="r1")


def test_the_canary_depends_on_the_rollout() -> None:
    keys = [f"device-{i}" for i in range(50)]
    canaries = {
        min(assign_waves(keys, (2, 100), salt=f"rollout-{r}").items(), key=lambda kv: kv[1])[0]
        for r in range(20)
    }
    assert len(canaries) > 1


# -- plan


def test_first_wave_is_offered_and_nothing_else() -> None:
    ms = [Member("a", 0, MemberState.PENDING), Member("b", 1, MemberState.PENDING)]
    step = plan(POLICY, ms, 0, T0)
    assert step.offer == ("a",)
    assert (step.halt, step.completed, step.current_wave) == (False, False, 0)


def test_next_wave_only_after_every_earlier_device_finished() -> None:
    waiting = [
        Member("a", 0, MemberState.OFFERED, offered_at=T0),
        Member("b", 1, MemberState.PENDING),
    ]
    assert plan(POLICY, waiting, 0, T0 + timedelta(minutes=1)).offer == ()
    done = [Member("a", 0, MemberState.SUCCEEDED), Member("b", 1, MemberState.PENDING)]
    step = plan(POLICY, done, 0, T0)
    assert step.offer == ("b",)
    assert step.current_wave == 1


def test_empty_waves_are_passed_at_once() -> None:
    ms = [Member("a", 0, MemberState.SUCCEEDED), Member("b", 2, MemberState.PENDING)]
    step = plan(POLICY, ms, 0, T0)
    assert step.current_wave == 2
    assert step.offer == ("b",)


def test_silent_device_counts_as_failed_after_the_timeout() -> None:
    ms = [Member("a", 0, MemberState.OFFERED, offered_at=T0)]
    assert plan(POLICY, ms, 0, T0 + timedelta(minutes=29)).timed_out == ()
    step = plan(POLICY, ms, 0, T0 + timedelta(minutes=30))
    assert step.timed_out == ("a",)
    assert step.halt


def test_progress_restarts_the_silent_timeout() -> None:
    ms = [
        Member("a", 0, MemberState.OFFERED, offered_at=T0, progress_at=T0 + timedelta(minutes=20))
    ]
    assert plan(POLICY, ms, 0, T0 + timedelta(minutes=45)).timed_out == ()
    assert plan(POLICY, ms, 0, T0 + timedelta(minutes=50)).timed_out == ("a",)


def test_failure_rate_above_threshold_halts_and_offers_nothing() -> None:
    states = {f"ok{i}": MemberState.SUCCEEDED for i in range(9)}
    states["bad"] = MemberState.FAILED
    states["next"] = MemberState.PENDING
    ms = members(states)
    # 1 of 10 finished = 10 %: not above 10 %.
    assert not plan(POLICY, ms, 0, T0).halt
    states["bad2"] = MemberState.FAILED
    step = plan(POLICY, members(states), 0, T0)
    assert step.halt
    assert step.offer == ()
    assert (step.succeeded, step.failed) == (9, 2)


def test_threshold_zero_halts_on_first_failure_and_hundred_never() -> None:
    ms = members({"a": MemberState.FAILED, "b": MemberState.PENDING})
    assert plan(Policy(failure_threshold_pct=0), ms, 0, T0).halt
    all_failed = members({"a": MemberState.FAILED, "b": MemberState.FAILED})
    step = plan(Policy(failure_threshold_pct=100), all_failed, 0, T0)
    assert not step.halt
    assert step.completed


def test_rollout_completes_when_the_last_wave_finished() -> None:
    ms = [Member("a", 0, MemberState.SUCCEEDED), Member("b", 2, MemberState.SUCCEEDED)]
    step = plan(POLICY, ms, 1, T0)
    assert step.completed
    assert step.current_wave == 2


@given(
    st.integers(0, 100),
    st.lists(st.sampled_from(list(MemberState)), min_size=1, max_size=40),
)
def test_halting_follows_the_failure_rate_exactly(
    threshold: int, states: list[MemberState]
) -> None:
    ms = [Member(f"d{i}", 0, s, offered_at=T0) for i, s in enumerate(states)]
    step = plan(Policy(failure_threshold_pct=threshold), ms, 0, T0 + timedelta(minutes=1))
    succeeded = states.count(MemberState.SUCCEEDED)
    failed = states.count(MemberState.FAILED)
    finished = succeeded + failed
    assert step.halt == (finished > 0 and failed / finished > threshold / 100)
    if step.halt:
        assert step.offer == ()
        assert not step.completed


@given(
    waves_st,
    st.lists(st.tuples(st.integers(0, 5), st.sampled_from(list(MemberState))), max_size=30),
    st.integers(0, 5),
    st.integers(0, 120),
)
def test_plan_invariants(
    waves: tuple[int, ...],
    raw: list[tuple[int, MemberState]],
    current: int,
    minutes: int,
) -> None:
    last = len(waves) - 1
    ms = [
        Member(f"d{i}", min(w, last), s, offered_at=T0 if s == MemberState.OFFERED else None)
        for i, (w, s) in enumerate(raw)
    ]
    step = plan(Policy(waves=waves), ms, current, T0 + timedelta(minutes=minutes))
    by_key = {m.key: m for m in ms}
    # Only pending devices of the current or earlier waves are offered, each once.
    assert len(set(step.offer)) == len(step.offer)
    assert all(by_key[k].state == MemberState.PENDING for k in step.offer)
    assert all(by_key[k].wave <= step.current_wave for k in step.offer)
    # Only offered devices time out, and only after the timeout.
    assert all(by_key[k].state == MemberState.OFFERED for k in step.timed_out)
    offered = [m.key for m in ms if m.state == MemberState.OFFERED]
    assert list(step.timed_out) == (offered if minutes >= 30 else [])
    assert not (step.halt and step.completed)
    assert 0 <= step.current_wave <= last
    if step.completed:
        assert step.offer == ()
        assert all(m.state != MemberState.PENDING for m in ms)


# -- maintenance window


@pytest.mark.parametrize(
    ("start", "end", "at", "inside"),
    [
        (time(2), time(4), time(2), True),
        (time(2), time(4), time(3, 59), True),
        (time(2), time(4), time(4), False),
        (time(2), time(4), time(1, 59), False),
        (time(22), time(2), time(23), True),
        (time(22), time(2), time(0, 30), True),
        (time(22), time(2), time(2), False),
        (time(22), time(2), time(12), False),
    ],
)
def test_window_is_utc_end_excluded_and_wraps_midnight(
    start: time, end: time, at: time, inside: bool
) -> None:
    assert Window(start, end).contains(datetime.combine(T0.date(), at, tzinfo=UTC)) is inside


def test_window_converts_other_time_zones_to_utc() -> None:
    berlin = datetime(2026, 3, 1, 3, 30, tzinfo=UTC).astimezone(ZoneInfo("Europe/Berlin"))
    assert berlin.hour == 4
    assert Window(time(3), time(4)).contains(berlin)


def test_no_offer_outside_the_window_but_timeouts_and_halts_still_apply() -> None:
    policy = Policy(window=Window(time(2), time(4)))
    pending = [Member("a", 0, MemberState.PENDING)]
    assert plan(policy, pending, 0, T0).offer == ()
    assert plan(policy, pending, 0, T0.replace(hour=3)).offer == ("a",)
    silent = [Member("a", 0, MemberState.OFFERED, offered_at=T0 - timedelta(hours=1))]
    step = plan(policy, silent, 0, T0)
    assert step.timed_out == ("a",)
    assert step.halt


# -- reports and versions


@pytest.mark.parametrize(
    ("running", "update_version", "state", "outcome"),
    [
        ("1.2.0", "1.2.0", "running", MemberState.SUCCEEDED),
        ("1.2.0", "", "", MemberState.SUCCEEDED),
        ("1.1.0", "1.2.0", "rolled_back", MemberState.FAILED),
        ("1.1.0", "1.2.0", "failed", MemberState.FAILED),
        ("1.1.0", "1.2.0", "refused", MemberState.FAILED),
        ("1.1.0", "1.2.0", "installing", None),
        ("1.1.0", "1.3.0", "rolled_back", None),
        ("1.1.0", "", "", None),
    ],
)
def test_outcome_of_report(
    running: str, update_version: str, state: str, outcome: MemberState | None
) -> None:
    assert (
        outcome_of_report(
            "1.2.0", software_version=running, update_version=update_version, update_state=state
        )
        == outcome
    )


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.2.0", "1.10.0"),
        ("1.2.0rc1", "1.2.0"),
        ("1.2.0a9", "1.2.0b1"),
        ("1.2.0b2", "1.2.0rc1"),
        ("1.2", "1.2.0.1"),
        ("0.9.9", "1.0"),
    ],
)
def test_version_order(older: str, newer: str) -> None:
    assert is_downgrade(older, newer)
    assert not is_downgrade(newer, older)


def test_trailing_zeros_do_not_count_and_unknown_versions_are_no_downgrade() -> None:
    assert version_key("1.2") == version_key("1.2.0")
    assert not is_downgrade("1.2.0", "1.2")
    assert version_key("dev") is None
    assert not is_downgrade("1.0.0", "dev")
    assert not is_downgrade("garbage", "9.9.9")


@given(st.integers(0, 1000), st.integers(0, 1000), st.integers(0, 100))
def test_failure_rate_boundary_is_exact(succeeded: int, failed: int, threshold: int) -> None:
    finished = succeeded + failed
    expected = finished > 0 and failed * 100 > threshold * finished
    assert failure_rate_exceeded(succeeded, failed, threshold) is expected
