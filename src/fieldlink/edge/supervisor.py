"""``fieldlink edge supervise``: run the agent, switch to an installed update, roll back a bad one.

The supervisor is a small parent process. It runs the agent of the ``current`` slot as its
child, and when the child exits with EXIT_RESTART_FOR_UPDATE (75) after writing staged.json it
switches ``current`` to the staged slot and watches the new agent until healthy.json names that
version and that process. A new agent that dies first, or stays silent past the health timeout,
is killed and the previous slot is put back. The outcome goes to last_update.json, which the
agent reads at start and reports to the cloud.

Design: a pure core (``decide(machine, event) -> (machine, actions)``) holds every decision and
is tested exhaustively, (phase x event); the shell (``Supervisor``) only observes (child exit,
health file, clock, signals) and executes the actions in order. Each step that changes the disk
is ordered so that a crash (power loss, kill -9) between any two of them leaves something the
next start can finish from the disk alone, and never a home with no runnable agent:

- the persistent state (supervisor.json) is written *before* the link is switched, as intent:
  ``trying X`` before pointing ``current`` at X, ``rolling_back X`` before pointing it back;
- a start in ``trying X`` tries X once more (attempts are counted in the state, written before
  each start), and rolls back once the attempts are spent; a start in ``rolling_back`` finishes
  the rollback; a start in ``running X`` makes ``current`` say X again (a dangling, foreign or
  half-renamed link is repaired) and falls back to the previous slot, then the base
  installation, if X's slot is gone;
- last_update.json is written before the final ``running`` state, so an outcome is never lost
  (at worst it is written twice);
- old slots are removed only while no agent runs (the agent may be installing the next one).

The base installation (the one the supervisor itself runs from) is "version" None: ``current``
absent. It is always runnable, so it is the last fallback.

Crash loops of a version that is running (already proven healthy) restart it with capped
exponential backoff (1 s ... 60 s) and log on state change only; they never trigger a rollback:
a healthy version that later fails is a field problem, not a bad update.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

from fieldlink.edge import slots
from fieldlink.kit.errors import ErrorKind, FieldlinkError
from fieldlink.kit.logging import get_logger

__all__ = [
    "CRASH_ENV",
    "MAX_ATTEMPTS",
    "ChildExited",
    "Event",
    "HealthTimeout",
    "Healthy",
    "Machine",
    "Started",
    "State",
    "StopRequested",
    "Supervisor",
    "SupervisorError",
    "decide",
    "read_state",
    "supervise",
]

log = get_logger(__name__)

Phase = Literal["running", "trying", "rolling_back"]
PHASES: Final[tuple[Phase, ...]] = ("running", "trying", "rolling_back")

MAX_ATTEMPTS: Final = 2  # starts of a new version (a supervisor restart while trying is one)
BACKOFF_MIN_S: Final = 1.0
BACKOFF_MAX_S: Final = 60.0
STABLE_AFTER_S: Final = 60.0  # a child that ran this long was not crash-looping
CRASH_ENV: Final = "FIELDLINK_SUPERVISOR_CRASH_AT"  # tests: os._exit at this checkpoint


class SupervisorError(FieldlinkError):
    code = "edge_supervisor_error"
    kind: ClassVar[ErrorKind] = "unavailable"


# -- the pure core ---------------------------------------------------------------------------


@dataclass(frozen=True)
class State:
    """What survives a restart (supervisor.json). ``version`` None: the base installation."""

    phase: Phase
    version: str | None
    previous: str | None = None
    attempts: int = 0
    started_at_ms: int = 0
    reason: str = ""


@dataclass(frozen=True)
class Machine:
    state: State
    failures: int = 0  # consecutive crashes of the running version (backoff)


# Events: what the shell observed. ``installed`` is the set of complete slots at that moment.


@dataclass(frozen=True)
class Started:
    persisted: State | None  # None: no (readable) state file
    current: str | None  # the version ``current`` names; None: absent
    current_broken: bool  # ``current`` exists but is not a link to an installed slot
    staged: str | None
    installed: frozenset[str]
    now_ms: int


@dataclass(frozen=True)
class ChildExited:
    code: int
    uptime_s: float
    staged: str | None
    installed: frozenset[str]
    now_ms: int


@dataclass(frozen=True)
class Healthy:
    version: str  # the shell reports it only for the running child's pid
    now_ms: int


@dataclass(frozen=True)
class HealthTimeout:
    now_ms: int


@dataclass(frozen=True)
class StopRequested:
    now_ms: int


ChildEvent = ChildExited | Healthy | HealthTimeout
Event = Started | StopRequested | ChildEvent

# Actions: executed by the shell in order.


@dataclass(frozen=True)
class WriteState:
    state: State


@dataclass(frozen=True)
class SwitchCurrent:
    version: str | None


@dataclass(frozen=True)
class ClearStaged:
    pass


@dataclass(frozen=True)
class ClearHealthy:
    pass


@dataclass(frozen=True)
class StartChild:
    version: str | None
    delay_s: float = 0.0
    await_health: bool = False  # arm the health timeout for this child


@dataclass(frozen=True)
class StopChild:
    """Terminate the child (SIGTERM, then SIGKILL after a grace period) and reap it."""


@dataclass(frozen=True)
class WriteLastUpdate:
    version: str
    outcome: slots.Outcome
    reason: str
    at_ms: int


@dataclass(frozen=True)
class Prune:
    keep: frozenset[str]
    leftovers: bool = False  # also build/trash directories (only at start: no installer runs)


@dataclass(frozen=True)
class Log:
    level: Literal["info", "warning", "error"]
    event: str
    fields: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class Checkpoint:
    """A named point between two disk steps; tests crash the process here."""

    name: str


@dataclass(frozen=True)
class Exit:
    code: int


Action = (
    WriteState
    | SwitchCurrent
    | ClearStaged
    | ClearHealthy
    | StartChild
    | StopChild
    | WriteLastUpdate
    | Prune
    | Log
    | Checkpoint
    | Exit
)

# Every checkpoint, in the order an update (then a rollback) passes them.
CHECKPOINTS: Final = (
    "update_requested",
    "after_trying_state",
    "after_switch",
    "after_start",
    "after_healthy",
    "after_last_update",
    "after_rolling_back_state",
    "after_rollback_switch",
    "after_rollback_last_update",
)


def _keep(*versions: str | None) -> frozenset[str]:
    return frozenset(v for v in versions if v is not None)


def _name(version: str | None) -> str:
    return "base" if version is None else version


def decide(machine: Machine, event: Event) -> tuple[Machine, list[Action]]:
    """The next machine and the actions that get there. Total: every (phase, event) is defined."""
    if isinstance(event, Started):
        return _reconcile(event)
    if isinstance(event, StopRequested):
        return machine, [Log("info", "supervisor_stopping"), StopChild(), Exit(0)]
    state = machine.state
    if state.phase == "rolling_back":
        # Only persisted between the steps of a rollback, which run without waiting for events;
        # should one arrive anyway, finishing the rollback is the safe answer.
        return _rollback(state, state.reason or "rollback interrupted", event.now_ms)
    if state.phase == "trying":
        return _on_trying(machine, event)
    return _on_running(machine, event)


def _on_trying(machine: Machine, event: ChildEvent) -> tuple[Machine, list[Action]]:
    state = machine.state
    assert state.version is not None  # noqa: S101 - trying always names a slot (see _begin)
    if isinstance(event, Healthy):
        if event.version != state.version:
            return machine, [Log("warning", "health_version_mismatch", (("got", event.version),))]
        running = State("running", state.version, state.previous, 0, event.now_ms)
        return Machine(running), [
            Checkpoint("after_healthy"),
            WriteLastUpdate(state.version, "updated", "", event.now_ms),
            Checkpoint("after_last_update"),
            WriteState(running),
            Log("info", "update_succeeded", (("version", state.version),)),
        ]
    if isinstance(event, HealthTimeout):
        return _rollback(state, "not healthy within the health timeout", event.now_ms)
    return _rollback(state, f"exited with code {event.code} before it became healthy", event.now_ms)


def _on_running(machine: Machine, event: ChildEvent) -> tuple[Machine, list[Action]]:
    state = machine.state
    if isinstance(event, Healthy | HealthTimeout):
        return machine, []  # nothing waits for health while running (a stale timer, a re-report)
    staged = event.staged
    if event.code == slots.EXIT_RESTART_FOR_UPDATE and staged is not None:
        if staged in event.installed and staged != state.version:
            return _begin(state, staged, event.now_ms)
        reason = "already running" if staged == state.version else "slot not installed"
        return Machine(state), [
            Log("warning", "staged_update_ignored", (("version", staged), ("reason", reason))),
            ClearStaged(),
            StartChild(state.version),
        ]
    failures = 1 if event.uptime_s >= STABLE_AFTER_S else machine.failures + 1
    delay = _backoff(failures)
    actions: list[Action] = []
    # Logged when the loop changes state (first exit, backoff reaches its cap), not per crash.
    if failures == 1:
        fields = (("version", _name(state.version)), ("code", event.code), ("restart_in_s", delay))
        actions.append(Log("warning", "agent_exited", fields))
    elif delay == BACKOFF_MAX_S and _backoff(failures - 1) < BACKOFF_MAX_S:
        fields = (("version", _name(state.version)), ("code", event.code), ("every_s", delay))
        actions.append(Log("error", "agent_crash_loop", fields))
    actions.append(StartChild(state.version, delay_s=delay))
    return Machine(state, failures), actions


def _backoff(failures: int) -> float:
    return float(min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** (failures - 1)))


def _begin(state: State, target: str, now_ms: int) -> tuple[Machine, list[Action]]:
    """Start trying ``target``, with the running version as the fallback."""
    trying = State("trying", target, state.version, 1, now_ms)
    return Machine(trying), [
        Checkpoint("update_requested"),
        Log("info", "update_starting", (("version", target), ("from", _name(state.version)))),
        WriteState(trying),
        Checkpoint("after_trying_state"),
        # No agent runs now: the moment to drop all but the fallback and the new slot.
        Prune(_keep(state.version, target)),
        ClearHealthy(),
        SwitchCurrent(target),
        Checkpoint("after_switch"),
        ClearStaged(),
        StartChild(target, await_health=True),
        Checkpoint("after_start"),
    ]


def _retry(state: State, now_ms: int) -> tuple[Machine, list[Action]]:
    assert state.version is not None  # noqa: S101 - trying always names a slot
    trying = replace(state, attempts=state.attempts + 1, started_at_ms=now_ms)
    return Machine(trying), [
        Log(
            "warning", "update_retrying", (("version", state.version), ("attempt", trying.attempts))
        ),
        WriteState(trying),
        ClearHealthy(),
        SwitchCurrent(state.version),
        ClearStaged(),
        StartChild(state.version, await_health=True),
        Checkpoint("after_start"),
    ]


def _rollback(state: State, reason: str, now_ms: int) -> tuple[Machine, list[Action]]:
    assert state.version is not None  # noqa: S101 - only a tried slot is rolled back
    rolling = State("rolling_back", state.version, state.previous, state.attempts, now_ms, reason)
    running = State("running", state.previous, None, 0, now_ms)
    return Machine(running), [
        WriteState(rolling),
        Checkpoint("after_rolling_back_state"),
        StopChild(),
        # Anything the failed version staged was never vouched for by a healthy agent.
        ClearStaged(),
        SwitchCurrent(state.previous),
        Checkpoint("after_rollback_switch"),
        WriteLastUpdate(state.version, "rolled_back", reason, now_ms),
        Checkpoint("after_rollback_last_update"),
        WriteState(running),
        Prune(_keep(state.previous)),
        Log(
            "error",
            "update_rolled_back",
            (("version", state.version), ("to", _name(state.previous)), ("reason", reason)),
        ),
        StartChild(state.previous),
    ]


def _reconcile(event: Started) -> tuple[Machine, list[Action]]:
    """Make the disk agree with the persisted state (or one derived from the link), carry on."""
    installed, now_ms = event.installed, event.now_ms
    notes: list[Action] = []
    state = event.persisted
    if state is None:
        version = None if event.current_broken else event.current
        state = State("running", version, None, 0, now_ms)
        notes.append(Log("warning", "supervisor_state_missing", (("using", _name(version)),)))
    if state.previous is not None and state.previous not in installed:
        state = replace(state, previous=None)  # the base installation is the fallback then
    if state.phase != "running" and state.version is None:
        state = State("running", state.previous, None, 0, now_ms)  # nothing was being tried
    if state.phase == "running" and state.version is not None and state.version not in installed:
        notes.append(
            Log(
                "error",
                "slot_missing",
                (("version", state.version), ("using", _name(state.previous))),
            )
        )
        state = State("running", state.previous, None, 0, now_ms)
    start: list[Action] = [
        # ``current`` too: it stays runnable until it is switched (it may be a tampered link).
        Prune(_keep(state.version, state.previous, event.staged, event.current), leftovers=True),
        *notes,
    ]
    if state.phase == "rolling_back":
        machine, actions = _rollback(state, state.reason or "rollback interrupted", now_ms)
    elif state.phase == "trying" and state.version not in installed:
        machine, actions = _rollback(state, "the new slot is missing", now_ms)
    elif state.phase == "trying" and state.attempts >= MAX_ATTEMPTS:
        reason = f"no healthy start in {state.attempts} attempts"
        machine, actions = _rollback(state, reason, now_ms)
    elif state.phase == "trying":
        machine, actions = _retry(state, now_ms)
    else:
        machine, actions = _run(state, event)
    return machine, [*start, *actions]


def _run(running: State, event: Started) -> tuple[Machine, list[Action]]:
    actions: list[Action] = []
    if event.current_broken or event.current != running.version:
        was = "broken" if event.current_broken else _name(event.current)
        actions += [
            Log(
                "warning", "current_link_repaired", (("was", was), ("now", _name(running.version)))
            ),
            SwitchCurrent(running.version),
        ]
    actions.append(WriteState(running))
    staged = event.staged
    if staged is not None and staged in event.installed and staged != running.version:
        # An agent asked for this switch and the supervisor stopped before acting on it.
        machine, begin = _begin(running, staged, event.now_ms)
        return machine, [*actions, *begin]
    if staged is not None:
        actions.append(ClearStaged())
    actions.append(StartChild(running.version))
    return Machine(running), actions


# -- the persistent state ----------------------------------------------------------------------


def write_state(home: Path, state: State) -> None:
    slots.write_json(
        home / slots.STATE_FILE,
        {
            "phase": state.phase,
            "version": state.version,
            "previous": state.previous,
            "attempts": state.attempts,
            "started_at_ms": state.started_at_ms,
            "reason": state.reason,
        },
    )


def read_state(home: Path) -> State | None:
    """The persisted state, or None when it is missing or not one we wrote (then derived)."""
    doc = slots.read_json(home / slots.STATE_FILE)
    if doc is None:
        return None
    phase, version, previous = doc.get("phase"), doc.get("version"), doc.get("previous")
    attempts, started, reason = doc.get("attempts"), doc.get("started_at_ms"), doc.get("reason")

    def slot_ok(value: object) -> bool:
        return value is None or (isinstance(value, str) and slots.is_valid_version(value))

    if (
        phase not in PHASES
        or not slot_ok(version)
        or not slot_ok(previous)
        or not isinstance(attempts, int)
        or not isinstance(started, int)
        or not isinstance(reason, str)
    ):
        return None
    return State(phase, version, previous, attempts, started, reason)


# -- the shell ----------------------------------------------------------------------------------

Command = Callable[[str | None], list[str]]

_POLL_S: Final = 0.1
_STOP_GRACE_S: Final = 20.0


def agent_command(home: Path, config: Path) -> Command:
    """``<slot>/venv/bin/python -I -m fieldlink edge run`` for a slot, this interpreter for base.

    ``-I`` (isolated): the slot runs its own code only, whatever PYTHONPATH, the working
    directory or the user's site-packages hold.
    """

    def command(version: str | None) -> list[str]:
        tail = ["-m", "fieldlink", "edge", "run", "--config", str(config)]
        if version is None:
            return [sys.executable, *tail]
        return [str(slots.slot_python(home, version)), "-I", *tail]

    return command


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """PR_SET_PDEATHSIG: the agent gets SIGTERM if the supervisor dies, even by SIGKILL, so a
    restarted supervisor never finds a second agent still running."""
    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


@dataclass
class _Child:
    process: subprocess.Popen[bytes]
    version: str | None
    started: float
    health_deadline: float | None
    reported: slots.Healthy | None = None


@dataclass
class Supervisor:
    home: Path
    command: Command
    health_timeout_s: float = 120.0
    stop_grace_s: float = _STOP_GRACE_S
    crash_at: str = ""
    clock_ms: Callable[[], int] = field(default=lambda: time.time_ns() // 1_000_000)
    _machine: Machine = field(init=False, default=Machine(State("running", None)))
    _child: _Child | None = field(init=False, default=None)
    _pending: tuple[str | None, float, bool] | None = field(init=False, default=None)
    _stop: bool = field(init=False, default=False)
    _spawn_failed: bool = field(init=False, default=False)
    _exit: int | None = field(init=False, default=None)

    def run(self) -> int:
        self.home.mkdir(parents=True, exist_ok=True)
        with _exclusive(self.home):
            previous = {
                sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
            }
            try:
                self._dispatch(self._observe_start())
                while self._exit is None:
                    self._step()
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                self._terminate()
            return self._exit

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop = True

    def _observe_start(self) -> Started:
        try:
            current, broken = slots.read_current(self.home), False
        except slots.SlotError:
            current, broken = None, True
        return Started(
            read_state(self.home),
            current,
            broken,
            slots.read_staged(self.home),
            slots.installed_versions(self.home),
            self.clock_ms(),
        )

    def _step(self) -> None:
        now = time.monotonic()
        if self._stop:
            self._dispatch(StopRequested(self.clock_ms()))
            return
        if self._spawn_failed:
            # Reported like a child that could not exec (127): same backoff or rollback.
            self._spawn_failed = False
            self._dispatch(self._exited(127, 0.0))
            return
        child = self._child
        if child is not None:
            code = child.process.poll()
            if code is not None:
                self._child = None
                self._dispatch(self._exited(code, now - child.started))
                return
            if child.health_deadline is not None:
                healthy = slots.read_healthy(self.home)
                # Reported once per distinct report: a wrong version keeps the deadline armed.
                if (
                    healthy is not None
                    and healthy.pid == child.process.pid
                    and healthy != child.reported
                ):
                    child.reported = healthy
                    self._dispatch(Healthy(healthy.version, self.clock_ms()))
                    if self._machine.state.phase != "trying":
                        child.health_deadline = None
                    return
                if now >= child.health_deadline:
                    child.health_deadline = None
                    self._dispatch(HealthTimeout(self.clock_ms()))
                    return
        elif self._pending is not None and now >= self._pending[1]:
            version, _, await_health = self._pending
            self._pending = None
            self._spawn(version, await_health)
        time.sleep(_POLL_S)

    def _exited(self, code: int, uptime_s: float) -> ChildExited:
        return ChildExited(
            code,
            uptime_s,
            slots.read_staged(self.home),
            slots.installed_versions(self.home),
            self.clock_ms(),
        )

    def _dispatch(self, event: Event) -> None:
        self._machine, actions = decide(self._machine, event)
        for action in actions:
            self._execute(action)
            if self._exit is not None:
                return

    def _execute(self, action: Action) -> None:  # noqa: PLR0912 - one branch per action
        home = self.home
        if isinstance(action, WriteState):
            write_state(home, action.state)
        elif isinstance(action, SwitchCurrent):
            slots.switch_current(home, action.version)
        elif isinstance(action, ClearStaged):
            slots.clear_staged(home)
        elif isinstance(action, ClearHealthy):
            slots.clear_healthy(home)
        elif isinstance(action, StartChild):
            if action.delay_s > 0:
                self._pending = (action.version, time.monotonic() + action.delay_s, False)
            else:
                self._spawn(action.version, action.await_health)
        elif isinstance(action, StopChild):
            self._pending = None
            self._terminate()
        elif isinstance(action, WriteLastUpdate):
            slots.write_last_update(
                home, action.version, action.outcome, action.reason, action.at_ms
            )
        elif isinstance(action, Prune):
            if action.leftovers:
                slots.remove_leftovers(home)
            removed = slots.remove_slots_except(home, set(action.keep))
            if removed:
                log.info("slots_removed", versions=removed)
        elif isinstance(action, Log):
            getattr(log, action.level)(action.event, **dict(action.fields))
        elif isinstance(action, Checkpoint):
            if action.name == self.crash_at:
                self._crash()
        elif isinstance(action, Exit):
            self._exit = action.code

    def _spawn(self, version: str | None, await_health: bool) -> None:
        env = {k: v for k, v in os.environ.items() if k != slots.HOME_ENV}
        env[slots.HOME_ENV] = str(self.home)
        if version is not None:
            # A slot brings all of its code; nothing of the base installation may leak in.
            for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
                env.pop(name, None)
        try:
            process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                self.command(version),
                env=env,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - the supervisor is single-threaded
            )
        except OSError as exc:
            log.error(  # noqa: TRY400 - the reason is the message; no traceback needed
                "agent_start_failed", version=_name(version), error=str(exc)
            )
            self._spawn_failed = True
            return
        now = time.monotonic()
        deadline = now + self.health_timeout_s if await_health else None
        self._child = _Child(process, version, now, deadline)

    def _terminate(self) -> None:
        child, self._child = self._child, None
        if child is None or child.process.poll() is not None:
            return
        child.process.send_signal(signal.SIGTERM)
        try:
            child.process.wait(self.stop_grace_s)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()

    def _crash(self) -> None:  # pragma: no cover - ends the process, like kill -9 would
        """What a power cut or kill -9 of the whole unit does at this point: no cleanup."""
        if self._child is not None:
            with contextlib.suppress(OSError):
                self._child.process.kill()
        os._exit(137)


@contextlib.contextmanager
def _exclusive(home: Path) -> Iterator[None]:
    """One supervisor per home: two would fight over the link and start two agents."""
    fd = os.open(home / "supervisor.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise SupervisorError(f"another supervisor is running for {home}") from exc
        yield
    finally:
        os.close(fd)


def supervise(
    config: Path,
    home: Path,
    *,
    health_timeout_s: float = 120.0,
    command: Command | None = None,
) -> int:
    """Run the supervisor until SIGTERM/SIGINT; returns the exit code."""
    home = home.resolve()
    supervisor = Supervisor(
        home,
        command or agent_command(home, config.resolve()),
        health_timeout_s=health_timeout_s,
        crash_at=os.environ.get(CRASH_ENV, ""),
    )
    log.info("supervisor_started", home=str(home), health_timeout_s=health_timeout_s)
    return supervisor.run()
