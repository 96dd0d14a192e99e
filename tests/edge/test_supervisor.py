"""The supervisor: its pure core exhaustively (every phase x event, a crash after every single
action replayed against a model of the disk), then the real process end to end with real slots
(real venvs, real pip) of a fake agent.
"""

from __future__ import annotations

import itertools
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fieldlink.edge import slots
from fieldlink.edge.supervisor import (
    CHECKPOINTS,
    MAX_ATTEMPTS,
    PHASES,
    Action,
    ChildExited,
    ClearStaged,
    Event,
    Exit,
    HealthTimeout,
    Healthy,
    Log,
    Machine,
    Prune,
    StartChild,
    Started,
    State,
    StopChild,
    StopRequested,
    SwitchCurrent,
    WriteLastUpdate,
    WriteState,
    decide,
    read_state,
    write_state,
)
from tests.edge.supervisor_support import (
    SupervisorProcess,
    alive,
    copy_slots,
    install_template,
    start_supervisor,
    starts,
    supervisor,
    wait_for,
)

# -- the pure core: every (phase, event) pair -----------------------------------------------

OLD, NEW = "1.0.0", "2.0.0"
INSTALLED = frozenset({OLD, NEW})


def _state(phase: str) -> State:
    if phase == "running":
        return State("running", OLD, None)
    return State(phase, NEW, OLD, 1, 0, "why")  # type: ignore[arg-type]


CHILD_EVENTS: dict[str, Event] = {
    "exit_75_staged_new": ChildExited(75, 5.0, NEW, INSTALLED, 1),
    "exit_75_staged_same": ChildExited(75, 5.0, OLD, INSTALLED, 1),
    "exit_75_staged_missing": ChildExited(75, 5.0, "9.9.9", INSTALLED, 1),
    "exit_75_nothing_staged": ChildExited(75, 5.0, None, INSTALLED, 1),
    "exit_1": ChildExited(1, 5.0, None, INSTALLED, 1),
    "exit_0": ChildExited(0, 5.0, None, INSTALLED, 1),
    "exit_1_staged_new": ChildExited(1, 5.0, NEW, INSTALLED, 1),
    "healthy_new": Healthy(NEW, 1),
    "healthy_old": Healthy(OLD, 1),
    "health_timeout": HealthTimeout(1),
    "stop": StopRequested(1),
}

# phase -> event -> the outcome it must have
EXPECTED: dict[str, dict[str, str]] = {
    "running": {
        "exit_75_staged_new": "begin_update",
        "exit_75_staged_same": "restart_now",
        "exit_75_staged_missing": "restart_now",
        "exit_75_nothing_staged": "restart_backoff",
        "exit_1": "restart_backoff",
        "exit_0": "restart_backoff",
        "exit_1_staged_new": "restart_backoff",  # only exit 75 asks for a switch
        "healthy_new": "nothing",
        "healthy_old": "nothing",
        "health_timeout": "nothing",
        "stop": "stop",
    },
    "trying": {
        "exit_75_staged_new": "rollback",
        "exit_75_staged_same": "rollback",
        "exit_75_staged_missing": "rollback",
        "exit_75_nothing_staged": "rollback",
        "exit_1": "rollback",
        "exit_0": "rollback",
        "exit_1_staged_new": "rollback",
        "healthy_new": "updated",
        "healthy_old": "nothing",  # not the version being tried: keep waiting
        "health_timeout": "rollback",
        "stop": "stop",
    },
    "rolling_back": dict.fromkeys(CHILD_EVENTS, "rollback") | {"stop": "stop"},
}


def _outcome(before: Machine, after: Machine, actions: list[Action]) -> str:  # noqa: PLR0911
    kinds = [a for a in actions if not isinstance(a, Log)]
    if any(isinstance(a, Exit) for a in actions):
        assert isinstance(kinds[0], StopChild)
        return "stop"
    updates = [a for a in actions if isinstance(a, WriteLastUpdate)]
    if updates:
        return "updated" if updates[0].outcome == "updated" else "rollback"
    if after.state.phase == "trying" and before.state.phase == "running":
        return "begin_update"
    if not kinds:
        return "nothing"
    starts_ = [a for a in kinds if isinstance(a, StartChild)]
    if starts_ and starts_[-1].delay_s == 0:
        return "restart_now"
    if starts_:
        return "restart_backoff"
    return "other"


@pytest.mark.parametrize(("phase", "name"), list(itertools.product(PHASES, CHILD_EVENTS)))
def test_every_phase_and_event_has_its_outcome(phase: str, name: str) -> None:
    before = Machine(_state(phase))
    after, actions = decide(before, CHILD_EVENTS[name])
    assert _outcome(before, after, actions) == EXPECTED[phase][name]
    if EXPECTED[phase][name] == "rollback":
        assert after.state == State("running", OLD, None, 0, 1)
        assert actions[-1] == StartChild(OLD)
        assert SwitchCurrent(OLD) in actions
    if EXPECTED[phase][name] == "updated":
        assert after.state == State("running", NEW, OLD, 0, 1)
        assert isinstance(actions[-2], WriteState)
        assert actions[-2].state == after.state  # the final state written last
    if EXPECTED[phase][name] == "begin_update":
        assert after.state == State("trying", NEW, OLD, 1, 1)
        writes = [i for i, a in enumerate(actions) if isinstance(a, WriteState)]
        assert writes[0] < actions.index(SwitchCurrent(NEW))  # intent before the switch
        assert actions.index(Prune(frozenset({OLD, NEW}))) < actions.index(
            StartChild(NEW, await_health=True)
        )


def test_expected_table_covers_every_phase_and_event() -> None:
    assert set(EXPECTED) == set(PHASES)
    assert all(set(row) == set(CHILD_EVENTS) for row in EXPECTED.values())


def test_crash_loop_backs_off_to_a_cap_and_logs_on_state_change_only() -> None:
    machine = Machine(State("running", OLD))
    delays, logged = [], []
    for _ in range(10):
        machine, actions = decide(machine, ChildExited(1, 0.5, None, INSTALLED, 1))
        delays.append(next(a for a in actions if isinstance(a, StartChild)).delay_s)
        logged.append([a.event for a in actions if isinstance(a, Log)])
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    assert logged == [["agent_exited"], [], [], [], [], [], ["agent_crash_loop"], [], [], []]
    # After a long, stable run an exit is news again and the backoff starts over.
    machine, actions = decide(machine, ChildExited(1, 3600.0, None, INSTALLED, 1))
    assert [a.event for a in actions if isinstance(a, Log)] == ["agent_exited"]
    assert next(a for a in actions if isinstance(a, StartChild)).delay_s == 1
    assert machine.state == State("running", OLD)  # a crash loop never rolls back


# -- the pure core against a model disk, with a crash after every action --------------------

GOOD, CRASHES, SILENT = "2.0.0", "3.0.0", "4.0.0"
BEHAVIOUR = {OLD: "good", GOOD: "good", CRASHES: "crash", SILENT: "silent", None: "good"}


@dataclass
class Disk:
    installed: set[str]
    state: State | None = None
    current: str | None = None
    staged: str | None = None
    last_update: tuple[str, str] | None = None
    log: list[str] = field(default_factory=list)

    def check(self) -> None:
        """The promise: at every instant ``current`` names something that can run."""
        assert self.current is None or self.current in self.installed, self.log


class CrashedError(Exception):
    pass


def _apply(disk: Disk, action: Action) -> None:
    disk.log.append(repr(action))
    if isinstance(action, WriteState):
        disk.state = action.state
    elif isinstance(action, SwitchCurrent):
        assert action.version is None or action.version in disk.installed
        disk.current = action.version
    elif isinstance(action, WriteLastUpdate):
        disk.last_update = (action.version, action.outcome)
    elif isinstance(action, Prune):
        disk.installed &= set(action.keep)
    elif isinstance(action, ClearStaged):
        disk.staged = None
    elif isinstance(action, StartChild):
        # The child always runs what ``current`` says, and that is runnable.
        assert action.version == disk.current, disk.log
    disk.check()


def _drive(machine: Machine, event: Event, disk: Disk, budget: list[int]) -> Machine:
    """Feed events as the fake agents would behave until the machine waits on a healthy child."""
    for _ in range(20):
        machine, actions = decide(machine, event)
        started: StartChild | None = None
        for action in actions:
            if budget[0] == 0:
                raise CrashedError
            budget[0] -= 1
            _apply(disk, action)
            if isinstance(action, StartChild):
                started = action
        if started is None:  # the tried child became healthy and keeps running
            assert machine.state.phase == "running", disk.log
            return machine
        behaviour = BEHAVIOUR[started.version]
        if behaviour == "crash":
            event = ChildExited(1, 0.1, disk.staged, frozenset(disk.installed), 2)
        elif started.await_health and behaviour == "good":
            assert started.version is not None
            event = Healthy(started.version, 2)
        elif started.await_health:
            event = HealthTimeout(2)
        else:
            return machine  # a proven version runs: quiescent
    raise AssertionError(f"no convergence: {disk.log}")


def _restart(disk: Disk, budget: list[int]) -> Machine:
    started = Started(disk.state, disk.current, False, disk.staged, frozenset(disk.installed), 3)
    return _drive(Machine(State("running", None)), started, disk, budget)


@pytest.mark.parametrize("target", [GOOD, CRASHES, SILENT])
def test_a_crash_after_any_action_converges_to_exactly_one_version(target: str) -> None:
    """Crash after action N of an update (and again after action M of the recovery): the
    disk always names a runnable version and ends with the new one or the old one."""
    runs = 0
    for first, second in itertools.product(range(40), (-1, *range(25))):
        disk = Disk({OLD}, State("running", OLD), OLD)
        machine = _restart(disk, [10**6])
        disk.installed.add(target)  # what the agent does: install, stage, exit 75
        disk.staged = target
        exit_75 = ChildExited(75, 9.0, target, frozenset(disk.installed), 1)
        try:
            _drive(machine, exit_75, disk, [first])
        except CrashedError:
            try:
                _restart(disk, [second] if second >= 0 else [10**6])
            except CrashedError:
                _restart(disk, [10**6])
        runs += 1
        assert disk.state is not None
        assert disk.state.phase == "running", disk.log
        final = disk.state.version
        # One crash: a good version still gets its chance. Two crashes while it is being tried
        # spend its attempts: rolling back is then the designed answer.
        allowed = {target} if second < 0 else {target, OLD}
        assert final in (allowed if BEHAVIOUR[target] == "good" else {OLD}), disk.log
        assert disk.current == final
        outcome = "updated" if final == target else "rolled_back"
        assert disk.last_update == (target, outcome), disk.log
        assert disk.staged is None
        assert final in disk.installed
    assert runs == 40 * 26


def test_restart_in_trying_counts_attempts_then_rolls_back() -> None:
    disk = Disk({OLD, SILENT}, State("trying", SILENT, OLD, MAX_ATTEMPTS - 1), SILENT)
    machine, actions = decide(
        Machine(State("running", None)),
        Started(disk.state, SILENT, False, None, frozenset(disk.installed), 1),
    )
    assert machine.state.attempts == MAX_ATTEMPTS
    assert StartChild(SILENT, await_health=True) in actions
    machine, actions = decide(
        Machine(State("running", None)),
        Started(machine.state, SILENT, False, None, frozenset(disk.installed), 2),
    )
    assert machine.state == State("running", OLD, None, 0, 2)
    update = next(a for a in actions if isinstance(a, WriteLastUpdate))
    assert (update.version, update.outcome) == (SILENT, "rolled_back")
    assert "attempts" in update.reason


@pytest.mark.parametrize(
    ("persisted", "current", "broken", "installed", "runs"),
    [
        (None, None, False, set(), None),  # a fresh home: the base installation
        (None, OLD, False, {OLD}, OLD),  # state lost: the link decides
        (None, None, True, {OLD}, None),  # state lost, link dangling: base
        (State("running", OLD), None, True, {OLD}, OLD),  # dangling link repaired
        (State("running", OLD), NEW, False, {OLD, NEW}, OLD),  # the state decides
        (State("running", NEW, OLD), NEW, False, {OLD}, OLD),  # slot vanished: previous
        (State("running", NEW, OLD), NEW, False, set(), None),  # both vanished: base
        (State("trying", NEW, OLD, 1), OLD, False, {OLD}, OLD),  # tried slot vanished
    ],
)
def test_start_repairs_whatever_it_finds(
    persisted: State | None, current: str | None, broken: bool, installed: set[str], runs: str
) -> None:
    machine, actions = decide(
        Machine(State("running", None)),
        Started(persisted, current, broken, None, frozenset(installed), 1),
    )
    assert machine.state.phase == "running"
    assert machine.state.version == runs
    assert actions[-1] == StartChild(runs)
    link = [a for a in actions if isinstance(a, SwitchCurrent)]
    if broken or current != runs:
        assert link[-1] == SwitchCurrent(runs)
    assert set(link) <= {SwitchCurrent(runs)}


def test_state_file_round_trip_and_garbage_reads_as_missing(tmp_path: Path) -> None:
    state = State("trying", NEW, None, 2, 77, "")
    write_state(tmp_path, state)
    assert read_state(tmp_path) == state
    (tmp_path / "supervisor.json").write_text('{"phase": "trying", "version": "../x"}')
    assert read_state(tmp_path) is None


# -- the real process -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real slots 1.0.0 … 4.0.0, installed once with the real pip (copied per test)."""
    return install_template(tmp_path_factory.mktemp("slots"))


def _home(tmp_path: Path, template: Path, running: str = OLD) -> Path:
    home = tmp_path / "home"
    copy_slots(template, home, [running])
    write_state(home, State("running", running))
    slots.switch_current(home, running)
    return home


def _request_update(sup: SupervisorProcess, template: Path, version: str) -> None:
    """What the agent does: install the slot, stage it, exit 75."""
    copy_slots(template, sup.home, [version])
    slots.write_staged(sup.home, version)
    (sup.home / "request-exit-75").touch()


def _converged(sup: SupervisorProcess, version: str) -> int | None:
    state = read_state(sup.home)
    if state is None or state.phase != "running" or state.version != version:
        return None
    return sup.running_agent(version)


def test_update_to_a_healthy_version_switches_and_reports(tmp_path: Path, template: Path) -> None:
    home = _home(tmp_path, template)
    with supervisor(home) as sup:
        old_pid = wait_for(lambda: sup.running_agent(OLD), 20, "the old agent")
        _request_update(sup, template, NEW)
        new_pid = wait_for(lambda: _converged(sup, NEW), 20, "the new agent")
        assert slots.read_current(home) == NEW
        last = slots.read_last_update(home)
        assert last is not None
        assert (last.version, last.outcome) == (NEW, "updated")
        assert read_state(home) == State("running", NEW, OLD, 0, last.at_ms)
        assert not alive(old_pid)
        assert slots.read_staged(home) is None
        assert [s[0] for s in starts(home)] == [OLD, NEW]
        # SIGTERM: forwarded to the agent, which stops; then the supervisor exits 0.
        assert sup.stop() == 0, sup.output()
        wait_for(lambda: not alive(new_pid), 10, "the agent to stop")
    assert slots.installed_versions(home) == {OLD, NEW}  # the running one and the previous


@pytest.mark.parametrize(
    ("version", "reason"),
    [("3.0.0", "exited with code 1"), ("4.0.0", "not healthy within the health timeout")],
)
def test_update_to_a_failing_version_is_rolled_back(
    tmp_path: Path, template: Path, version: str, reason: str
) -> None:
    home = _home(tmp_path, template)
    with supervisor(home, health_timeout=1.5) as sup:
        wait_for(lambda: sup.running_agent(OLD), 20, "the old agent")
        _request_update(sup, template, version)
        last = wait_for(lambda: slots.read_last_update(home), 20, "the update outcome")
        assert (last.version, last.outcome) == (version, "rolled_back")
        assert reason in last.reason
        pid = wait_for(lambda: _converged(sup, OLD), 20, "the old agent again")
        assert slots.read_current(home) == OLD
        tried = [p for v, p in starts(home) if v == version]
        assert len(tried) == 1
        assert not alive(tried[0])  # the silent one was killed, not left running
        assert alive(pid)
        assert slots.installed_versions(home) == {OLD}  # the failed slot is gone
        assert sup.stop() == 0, sup.output()


ROLLBACK_POINTS = {
    "after_rolling_back_state",
    "after_rollback_switch",
    "after_rollback_last_update",
}


@pytest.mark.parametrize(
    ("crash_at", "target"),
    [(c, "3.0.0" if c in ROLLBACK_POINTS else NEW) for c in CHECKPOINTS]
    + [("after_start", "3.0.0"), ("after_trying_state", "4.0.0")],
)
def test_kill_supervisor_at_each_install_step_leaves_a_runnable_version(
    tmp_path: Path, template: Path, crash_at: str, target: str
) -> None:
    home = _home(tmp_path, template)
    first = start_supervisor(home, crash_at=crash_at, health_timeout=1.5)
    try:
        wait_for(lambda: first.running_agent(OLD), 20, "the old agent")
        agents = {a.pid for a in first.agents()}
        _request_update(first, template, target)
        assert first.process.wait(20) == 137, first.output()  # died at the checkpoint
    finally:
        if first.process.poll() is None:
            first.process.kill()
    for pid in agents | {p for _, p in starts(home)}:
        wait_for(lambda pid=pid: not alive(pid), 10, "the agents to die with the supervisor")
    # The moment after the crash: the link names an installed slot (or the base).
    current = slots.read_current(home)
    assert current in {OLD, target}

    want = target if target == NEW else OLD
    with supervisor(home, health_timeout=1.5) as second:
        wait_for(lambda: _converged(second, want), 20, f"{want} running after the restart")
        assert slots.read_current(home) == want
        last = slots.read_last_update(home)
        assert last is not None
        assert (last.version, last.outcome) == (
            target,
            "updated" if want == target else "rolled_back",
        )
        assert slots.read_staged(home) is None
        assert len(second.agents()) == 1
        assert second.stop() == 0, second.output()


def test_dangling_link_and_leftovers_are_repaired_at_start(tmp_path: Path, template: Path) -> None:
    home = _home(tmp_path, template)
    (home / "current").unlink()
    (home / "current").symlink_to("slots/9.9.9")
    (home / ".current.dead.tmp").symlink_to("slots/1.0.0")
    (home / "slots" / ".build-5.0.0-dead").mkdir()
    with supervisor(home) as sup:
        wait_for(lambda: _converged(sup, OLD), 20, "the agent")
        assert slots.read_current(home) == OLD
        assert not (home / ".current.dead.tmp").is_symlink()
        assert not (home / "slots" / ".build-5.0.0-dead").exists()
        assert sup.stop() == 0


def test_second_supervisor_for_the_same_home_refused(tmp_path: Path, template: Path) -> None:
    home = _home(tmp_path, template)
    with supervisor(home) as sup:
        wait_for(lambda: sup.running_agent(OLD), 20, "the agent")
        other = start_supervisor(home, name="other")
        assert other.process.wait(20) == 2
        assert "another supervisor" in other.output()
        assert len(starts(home)) == 1
        sup.process.send_signal(signal.SIGINT)
        assert sup.process.wait(15) == 0


def test_agent_dies_with_a_killed_supervisor(tmp_path: Path, template: Path) -> None:
    # Otherwise a restarted supervisor would start a second agent next to the orphan.
    home = _home(tmp_path, template)
    with supervisor(home) as sup:
        pid = wait_for(lambda: sup.running_agent(OLD), 20, "the agent")
        sup.process.send_signal(signal.SIGKILL)
        sup.process.wait(10)
        wait_for(lambda: not alive(pid), 10, "the orphaned agent to stop")


def test_healthy_report_of_another_version_is_not_taken_as_health(
    tmp_path: Path, template: Path
) -> None:
    # A slot named 2.0.1 whose code says 2.0.0: its report does not vouch for 2.0.1.
    home = _home(tmp_path, template)
    with supervisor(home, health_timeout=1.5) as sup:
        wait_for(lambda: sup.running_agent(OLD), 20, "the old agent")
        shutil.copytree(template / "slots" / NEW, home / "slots" / "2.0.1", symlinks=True)
        slots.write_staged(home, "2.0.1")
        (home / "request-exit-75").touch()
        last = wait_for(lambda: slots.read_last_update(home), 20, "the update outcome")
        assert (last.version, last.outcome) == ("2.0.1", "rolled_back")
        assert "health timeout" in last.reason
        wait_for(lambda: _converged(sup, OLD), 20, "the old agent again")
        assert sup.stop() == 0
