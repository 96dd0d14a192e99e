"""The pure core of staged rollouts: which devices to offer a release to, and when to stop.

No Django, no I/O, no clock: ``updates.services.advance_rollouts`` loads a rollout, calls
``plan`` with the time it was given, and applies the ``Step`` it gets back. Everything that
decides whether software reaches a device is here, so it can be tested exhaustively.

The rules (``docs/updates.md`` repeats them for operators):

- Waves are cumulative percentages of the rollout's devices, strictly increasing, ending at
  100; default ``DEFAULT_WAVES`` = [5, 25, 100]. Wave ``i`` holds the devices from
  ``ceil(n · waves[i-1] / 100)`` up to ``ceil(n · waves[i] / 100)`` in a fixed pseudo-random
  order (SHA-256 of rollout id and device id), and the first wave is never empty, so the
  canary is always at least one device. Later waves can be empty (few devices); they complete
  at once.
- A device is *offered* the release (its ``desired_software_version`` is set, which every ack
  tells it) when its wave is the current one or earlier. It *succeeds* when it reports the
  release's version running, it *fails* when it reports the update rolled back, failed or
  refused, or when it stays *silent*: no report about the release for ``silent_timeout``
  (default 30 minutes) after the offer or after its last progress report. A device offline at
  the time of the offer therefore counts as failed; a later success report still turns it
  into a success.
- The *failure rate* is failed / (succeeded + failed) over the devices that finished, across
  all waves. When it exceeds ``failure_threshold_pct`` (default 10 %) the rollout *halts*:
  nothing more is offered and devices not yet done lose the offer. A threshold of 0 halts on
  the first failure; 100 never halts. A halted rollout stays halted: continuing means a new
  rollout (with a different threshold or release), a decision someone makes and is audited for.
- A wave is *complete* when every device in it and in earlier waves has finished; the next
  wave is then offered. The rollout *completes* when the last wave is complete (some devices
  may have failed below the threshold; they stay failed).
- The optional daily maintenance window (UTC, ``start``..``end``, end excluded; start > end
  wraps midnight; start == end is refused as ambiguous) bounds when *new offers* are made.
  An offer made inside the window is not withdrawn when the window ends: the device may be in
  the middle of installing, and an update that is half-done is worse than one that finishes.
  Timeouts and halting are evaluated outside the window too.
- Paused: ``plan`` is not called (no offers, no timeouts); reports still count. Resuming
  evaluates the timeouts as if the pause had not happened: silence during a pause is silence.
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Final

from fieldlink.protocol.updates import release_version_key

__all__ = [
    "DEFAULT_FAILURE_THRESHOLD_PCT",
    "DEFAULT_SILENT_TIMEOUT",
    "DEFAULT_WAVES",
    "FAILED_UPDATE_STATES",
    "MAX_SILENT_TIMEOUT",
    "MAX_WAVES",
    "MIN_SILENT_TIMEOUT",
    "Member",
    "MemberState",
    "Policy",
    "Step",
    "Window",
    "assign_waves",
    "check_policy",
    "failure_rate_exceeded",
    "is_downgrade",
    "outcome_of_report",
    "plan",
    "version_key",
]

DEFAULT_WAVES: Final = (5, 25, 100)
DEFAULT_FAILURE_THRESHOLD_PCT: Final = 10
DEFAULT_SILENT_TIMEOUT: Final = timedelta(minutes=30)
MIN_SILENT_TIMEOUT: Final = timedelta(minutes=1)
MAX_SILENT_TIMEOUT: Final = timedelta(days=7)
MAX_WAVES: Final = 10
# What the agent reports about a version that did not end up running.
FAILED_UPDATE_STATES: Final = frozenset({"rolled_back", "failed", "refused"})
SILENT_REASON: Final = "silent"


class MemberState(enum.StrEnum):
    PENDING = "pending"
    OFFERED = "offered"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


FINISHED: Final = frozenset({MemberState.SUCCEEDED, MemberState.FAILED})


@dataclass(frozen=True)
class Window:
    """A daily maintenance window in UTC; ``end`` excluded; ``start > end`` wraps midnight."""

    start: time
    end: time

    def contains(self, now: datetime) -> bool:
        # Naive times are taken as UTC; aware ones are converted.
        at = now.time() if now.tzinfo is None else _utc_time(now)
        if self.start < self.end:
            return self.start <= at < self.end
        return at >= self.start or at < self.end


def _utc_time(now: datetime) -> time:
    offset = now.utcoffset() or timedelta(0)
    return (now - offset).replace(tzinfo=None).time()


@dataclass(frozen=True)
class Policy:
    waves: tuple[int, ...] = DEFAULT_WAVES
    failure_threshold_pct: int = DEFAULT_FAILURE_THRESHOLD_PCT
    silent_timeout: timedelta = DEFAULT_SILENT_TIMEOUT
    window: Window | None = None


@dataclass(frozen=True)
class Member:
    """One device of a rollout, as far as the rules care."""

    key: str  # the device id
    wave: int
    state: MemberState
    offered_at: datetime | None = None
    progress_at: datetime | None = None


@dataclass(frozen=True)
class Step:
    """What to do now. ``timed_out`` become failed; ``offer`` become offered (in that order)."""

    current_wave: int
    offer: tuple[str, ...] = ()
    timed_out: tuple[str, ...] = ()
    halt: bool = False
    completed: bool = False
    succeeded: int = 0
    failed: int = 0


def _waves_problem(waves: Sequence[int]) -> str | None:
    if not 1 <= len(waves) <= MAX_WAVES:
        return f"Give between 1 and {MAX_WAVES} waves."
    if any(not isinstance(w, int) or isinstance(w, bool) or not 1 <= w <= 100 for w in waves):
        return "Each wave is a whole percentage between 1 and 100."
    if any(b <= a for a, b in itertools.pairwise(waves)):
        return "Waves are cumulative percentages: each larger than the one before."
    if waves[-1] != 100:
        return "The last wave must be 100 (every device)."
    return None


def check_policy(policy: Policy) -> tuple[str, str] | None:
    """``(field, message)`` for the first thing wrong with ``policy``, or None."""
    problems = [
        ("waves", _waves_problem(policy.waves)),
        (
            "failure_threshold_pct",
            None
            if 0 <= policy.failure_threshold_pct <= 100
            else "The failure threshold is a percentage from 0 to 100.",
        ),
        (
            "silent_timeout",
            None
            if MIN_SILENT_TIMEOUT <= policy.silent_timeout <= MAX_SILENT_TIMEOUT
            else "The silent timeout must be between 1 minute and 7 days.",
        ),
        (
            "window",
            "The maintenance window must not start and end at the same time."
            if policy.window is not None and policy.window.start == policy.window.end
            else None,
        ),
    ]
    return next(((name, message) for name, message in problems if message is not None), None)


def _order(salt: str, key: str) -> bytes:
    return hashlib.sha256(f"{salt}\x00{key}".encode()).digest()


def assign_waves(keys: Iterable[str], waves: Sequence[int], *, salt: str) -> dict[str, int]:
    """Each device's wave index: a fixed pseudo-random order cut at the cumulative percentages.

    The order depends on ``salt`` (the rollout id) so the same unlucky device is not always the
    canary, and on nothing else, so the assignment can be recomputed and checked.
    """
    ordered = sorted(set(keys), key=lambda key: _order(salt, key))
    n = len(ordered)
    cuts = [min(n, math.ceil(n * pct / 100)) for pct in waves]
    if n:
        cuts[0] = max(cuts[0], 1)
    assigned: dict[str, int] = {}
    start = 0
    for index, cut in enumerate(cuts):
        for key in ordered[start:cut]:
            assigned[key] = index
        start = max(start, cut)
    return assigned


def failure_rate_exceeded(succeeded: int, failed: int, threshold_pct: int) -> bool:
    """failed / finished > threshold, in integers (no float rounding at the boundary)."""
    finished = succeeded + failed
    return finished > 0 and failed * 100 > threshold_pct * finished


def _silent(member: Member, policy: Policy, now: datetime) -> bool:
    if member.state != MemberState.OFFERED or member.offered_at is None:
        return False
    last = max(member.offered_at, member.progress_at or member.offered_at)
    return now - last >= policy.silent_timeout


def plan(policy: Policy, members: Sequence[Member], current_wave: int, now: datetime) -> Step:
    """The next step of a running rollout at ``now`` (see the module docstring for the rules)."""
    last_wave = len(policy.waves) - 1
    timed_out = tuple(m.key for m in members if _silent(m, policy, now))
    gone = set(timed_out)
    states = {m.key: MemberState.FAILED if m.key in gone else m.state for m in members}
    succeeded = sum(1 for s in states.values() if s == MemberState.SUCCEEDED)
    failed = sum(1 for s in states.values() if s == MemberState.FAILED)
    wave = min(max(current_wave, 0), last_wave)
    if failure_rate_exceeded(succeeded, failed, policy.failure_threshold_pct):
        return Step(wave, timed_out=timed_out, halt=True, succeeded=succeeded, failed=failed)
    # Advance past every wave whose devices (and all before) have finished; empty waves too.
    while wave < last_wave and all(states[m.key] in FINISHED for m in members if m.wave <= wave):
        wave += 1
    if all(states[m.key] in FINISHED for m in members):
        return Step(
            last_wave, timed_out=timed_out, completed=True, succeeded=succeeded, failed=failed
        )
    offer: tuple[str, ...] = ()
    if policy.window is None or policy.window.contains(now):
        offer = tuple(
            m.key for m in members if m.wave <= wave and states[m.key] == MemberState.PENDING
        )
    return Step(wave, offer=offer, timed_out=timed_out, succeeded=succeeded, failed=failed)


def outcome_of_report(
    target_version: str, *, software_version: str, update_version: str, update_state: str
) -> MemberState | None:
    """What a device's report says about its update to ``target_version``, if anything.

    Running the target is success, whatever the agent says about the attempt; a failed,
    rolled-back or refused attempt at exactly the target is failure; anything else (progress,
    another version) decides nothing.
    """
    if software_version == target_version:
        return MemberState.SUCCEEDED
    if update_version == target_version and update_state in FAILED_UPDATE_STATES:
        return MemberState.FAILED
    return None


def version_key(version: str) -> tuple[tuple[int, ...], int, int] | None:
    """The one release order of the contract (``protocol.updates``), shared with the agent."""
    return release_version_key(version.strip())


def is_downgrade(target: str, running: str) -> bool:
    """True when ``target`` is older than ``running``; unknown versions are never downgrades."""
    target_key, running_key = version_key(target), version_key(running)
    if target_key is None or running_key is None:
        return False
    return target_key < running_key
