"""Threshold evaluation with hysteresis: the pure core of limit alarms (no Django, no I/O).

A measuring point may have any subset of four limits, ordered ``low_low < low < high <
high_high``, and one deadband (``hysteresis``, absolute, in the point's unit). A value *enters*
a high-side level when it reaches the limit (``value >= limit``) and *stays* there until it
falls back below ``limit - hysteresis``; the low side mirrors this. So a value wandering inside
the deadband never makes the state chatter: it changes at most once.

Escalation (``high`` → ``high_high``) and de-escalation stay one alarm of the same side; a jump
from one side to the other clears the one and opens the other. Values of bad quality never
change the state: a failing sensor is an NE 107 health matter, not a process limit.
"""

from __future__ import annotations

import enum
import itertools
import math
from dataclasses import dataclass
from typing import Final

__all__ = [
    "Action",
    "Event",
    "Level",
    "Side",
    "Thresholds",
    "ThresholdsInvalidError",
    "evaluate",
    "raw_level",
]


class Level(enum.StrEnum):
    NORMAL = "normal"
    LOW_LOW = "low_low"
    LOW = "low"
    HIGH = "high"
    HIGH_HIGH = "high_high"


class Side(enum.StrEnum):
    HIGH = "high"
    LOW = "low"


class Action(enum.StrEnum):
    OPEN = "open"
    ESCALATE = "escalate"
    DEESCALATE = "deescalate"
    CLEAR = "clear"


SIDE_OF: Final[dict[Level, Side | None]] = {
    Level.NORMAL: None,
    Level.LOW: Side.LOW,
    Level.LOW_LOW: Side.LOW,
    Level.HIGH: Side.HIGH,
    Level.HIGH_HIGH: Side.HIGH,
}
# Rank within a side: 0 = normal, 1 = the pre-alarm, 2 = the trip level.
RANK: Final[dict[Level, int]] = {
    Level.NORMAL: 0,
    Level.LOW: 1,
    Level.HIGH: 1,
    Level.LOW_LOW: 2,
    Level.HIGH_HIGH: 2,
}


class ThresholdsInvalidError(ValueError):
    """A limit set that cannot be evaluated unambiguously; ``field`` names the culprit."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Thresholds:
    low_low: float | None = None
    low: float | None = None
    high: float | None = None
    high_high: float | None = None
    hysteresis: float = 0.0

    def limits(self) -> list[tuple[str, float]]:
        pairs = [
            ("low_low", self.low_low),
            ("low", self.low),
            ("high", self.high),
            ("high_high", self.high_high),
        ]
        return [(name, value) for name, value in pairs if value is not None]

    def validate(self) -> Thresholds:
        """Itself, or ThresholdsInvalidError naming the field that breaks the rules."""
        for name, value in [*self.limits(), ("hysteresis", self.hysteresis)]:
            if not math.isfinite(value):
                raise ThresholdsInvalidError(f"{name} must be a finite number.", name)
        if self.hysteresis < 0:
            raise ThresholdsInvalidError("hysteresis must be 0 or more.", "hysteresis")
        limits = self.limits()
        for (lower_name, lower), (name, value) in itertools.pairwise(limits):
            if not value > lower:
                raise ThresholdsInvalidError(
                    f"{name} must be greater than {lower_name} "
                    "(the order is low_low < low < high < high_high).",
                    name,
                )
        # The deadband of one side must not reach the other side's limit: otherwise a value
        # could at once enter a low level and still hold a high one, and the order of the
        # checks (not the plant) would decide which alarm is shown.
        high_side = [v for n, v in limits if n in ("high", "high_high")]
        low_side = [v for n, v in limits if n in ("low", "low_low")]
        if high_side and low_side and not self.hysteresis < min(high_side) - max(low_side):
            raise ThresholdsInvalidError(
                "hysteresis must be smaller than the gap between the low and the high limits.",
                "hysteresis",
            )
        return self


@dataclass(frozen=True)
class Event:
    action: Action
    side: Side
    level: Level  # the level after the event (the cleared level for CLEAR)


def raw_level(thresholds: Thresholds, value: float) -> Level:
    """The level a value has on its own, without history (no hysteresis)."""
    return evaluate(thresholds, Level.NORMAL, value)[0]


def _state_after(t: Thresholds, state: Level, value: float) -> Level:
    side, rank = SIDE_OF[state], RANK[state]
    # Most severe first; entering a level beats holding a lesser one.
    high_side = ((Level.HIGH_HIGH, t.high_high), (Level.HIGH, t.high))
    for level, limit in high_side:
        if limit is None:
            continue
        if value >= limit:
            return level
        if side is Side.HIGH and rank >= RANK[level] and value >= limit - t.hysteresis:
            return level
    low_side = ((Level.LOW_LOW, t.low_low), (Level.LOW, t.low))
    for level, limit in low_side:
        if limit is None:
            continue
        if value <= limit:
            return level
        if side is Side.LOW and rank >= RANK[level] and value <= limit + t.hysteresis:
            return level
    return Level.NORMAL


def evaluate(
    thresholds: Thresholds, state: Level, value: float, *, good: bool = True
) -> tuple[Level, tuple[Event, ...]]:
    """The new state after one value, and what it means for the point's alarms."""
    if not good or not math.isfinite(value):
        return state, ()
    new = _state_after(thresholds, state, value)
    return new, transition(state, new)


def transition(old: Level, new: Level) -> tuple[Event, ...]:
    if old == new:
        return ()
    old_side, new_side = SIDE_OF[old], SIDE_OF[new]
    if new_side is None:
        assert old_side is not None  # noqa: S101  (old != new, so old is not NORMAL)
        return (Event(Action.CLEAR, old_side, old),)
    if old_side is None:
        return (Event(Action.OPEN, new_side, new),)
    if old_side is not new_side:
        return (Event(Action.CLEAR, old_side, old), Event(Action.OPEN, new_side, new))
    action = Action.ESCALATE if RANK[new] > RANK[old] else Action.DEESCALATE
    return (Event(action, new_side, new),)
