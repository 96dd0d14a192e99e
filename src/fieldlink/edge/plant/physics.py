"""The plant's physics: a pump fills a tank that a varying demand empties; instruments measure it.

Deterministic under a seed: the process advances in fixed steps of ``STEP_S`` whatever the
caller's timing, and every random draw comes from one ``random.Random(seed)`` in a fixed order,
so the same seed and the same elapsed time give the same values (``advance(1.0)`` equals two
``advance(0.5)``).

Dynamics: first-order lags toward setpoints that change now and then (exponentially distributed
intervals), a pump switched on and off by the tank level with hysteresis, a totalizer that
integrates the flow (it only grows), measurement noise, clamping to each instrument's range.
Each instrument has NE 107 episodes: mostly "maintenance required" for a while, sometimes
"function check" or "out of specification", rarely "failure"; all recover. During a failure the
instrument's values freeze and are bad; during a function check or out of specification they are
uncertain.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Final, NamedTuple

from fieldlink.edge.plant.catalog import PLANT, InstrumentSpec
from fieldlink.protocol.telemetry import QUALITY_BAD, QUALITY_GOOD, QUALITY_UNCERTAIN

__all__ = ["STEP_S", "HealthState", "Plant", "Process", "Sample"]

STEP_S: Final = 0.5
MAX_ADVANCE_S: Final = 3600.0  # a longer gap (suspended laptop) is not replayed step by step
TANK_M3: Final = 12.0
MEAN_HEALTHY_S: Final = 2 * 3600.0


class HealthState(NamedTuple):
    status: str
    code: str = ""
    cause: str = ""
    remedy: str = ""


HEALTHY: Final = HealthState("ok")

# (status, weight, shortest and longest duration in s, (code, cause, remedy) choices)
_EPISODES: Final = (
    (
        "maintenance_required",
        0.70,
        (300.0, 900.0),
        (
            ("M520", "Calibration interval elapsed", "Calibrate the sensor"),
            ("M801", "Sensor coating detected", "Clean the sensor"),
        ),
    ),
    (
        "function_check",
        0.18,
        (60.0, 180.0),
        (
            ("C485", "Simulation of measured value active", "Switch the simulation off"),
            ("C411", "Configuration upload in progress", "Wait until it has finished"),
        ),
    ),
    (
        "out_of_specification",
        0.10,
        (120.0, 600.0),
        (("S441", "Process value outside the specified range", "Check the process conditions"),),
    ),
    (
        "failure",
        0.02,
        (60.0, 240.0),
        (("F882", "Input signal faulty", "Check the sensor cable and the sensor"),),
    ),
)

_QUALITY: Final = {
    "ok": QUALITY_GOOD,
    "maintenance_required": QUALITY_GOOD,
    "function_check": QUALITY_UNCERTAIN,
    "out_of_specification": QUALITY_UNCERTAIN,
    "failure": QUALITY_BAD,
}


def _lag(tau_s: float, dt: float) -> float:
    # Exact discretisation of a first-order lag: stable for any step length.
    return 1.0 - math.exp(-dt / tau_s)


class Process:
    """The process variables instruments measure (attribute names are ``PointSpec.measures``)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self.t = 0.0
        self.pump_on = True
        self.flow_sp = 42.0
        self.flow = 42.0  # m3/h into the tank
        self.demand_sp = 25.0
        self.demand = 25.0  # m3/h out of the tank
        self.volume = TANK_M3 * 0.5
        self.totalizer = 0.0  # m3 pumped
        self.pressure = self._pressure_target()
        self.temperature = 14.0
        self._drift = 0.0
        self.ph_sp = 7.2
        self.ph = 7.2
        self._next_flow = rng.expovariate(1 / 900)
        self._next_demand = rng.expovariate(1 / 600)
        self._next_ph = rng.expovariate(1 / 1800)

    @property
    def level(self) -> float:
        return 100.0 * self.volume / TANK_M3

    def _pressure_target(self) -> float:
        static = 0.005 * self.level  # the tank's head: 5 m of water at 100 %
        return 0.3 + static + (3.2 * (self.flow / 45.0) ** 2 if self.pump_on else 0.0)

    def step(self, dt: float) -> None:
        rng = self._rng
        self.t += dt
        if self.t >= self._next_demand:
            self.demand_sp = rng.uniform(15.0, 35.0)
            self._next_demand = self.t + rng.expovariate(1 / 600)
        if self.t >= self._next_flow:
            self.flow_sp = rng.uniform(38.0, 48.0)
            self._next_flow = self.t + rng.expovariate(1 / 900)
        if self.t >= self._next_ph:
            self.ph_sp = rng.uniform(6.8, 7.6)
            self._next_ph = self.t + rng.expovariate(1 / 1800)
        if self.level < 30.0:
            self.pump_on = True
        elif self.level > 75.0:
            self.pump_on = False
        target = self.flow_sp if self.pump_on else 0.0
        self.flow += (target - self.flow) * _lag(4.0, dt)
        self.demand += (self.demand_sp - self.demand) * _lag(30.0, dt)
        pumped = max(self.flow, 0.0) * dt / 3600.0
        self.totalizer += pumped
        drawn = min(self.demand * dt / 3600.0, self.volume + pumped)
        self.volume = min(max(self.volume + pumped - drawn, 0.0), TANK_M3)
        self.pressure += (self._pressure_target() - self.pressure) * _lag(1.5, dt)
        self._drift = min(max(self._drift + rng.gauss(0.0, 0.002 * math.sqrt(dt)), -1.5), 1.5)
        seasonal = 14.0 + 3.0 * math.sin(2 * math.pi * self.t / 86400.0) + self._drift
        self.temperature += (seasonal - self.temperature) * _lag(300.0, dt)
        self.ph += (self.ph_sp - self.ph) * _lag(90.0, dt)


class Sample(NamedTuple):
    tag: str
    values: dict[str, float]  # point key → measured value
    quality: int
    health: HealthState


class _Instrument:
    def __init__(self, spec: InstrumentSpec, rng: random.Random) -> None:
        self.spec = spec
        self.health = HEALTHY
        self._health_until = 0.0
        self._next_episode = rng.expovariate(1 / MEAN_HEALTHY_S)
        self.values = {p.key: 0.0 for p in spec.points}

    def step(self, process: Process, rng: random.Random) -> None:
        t = process.t
        if self.health is not HEALTHY and t >= self._health_until:
            self.health = HEALTHY
            self._next_episode = t + rng.expovariate(1 / MEAN_HEALTHY_S)
        elif self.health is HEALTHY and t >= self._next_episode:
            pick = rng.random()
            for status, weight, (shortest, longest), reasons in _EPISODES:
                pick -= weight
                if pick < 0 or status == "failure":
                    code, cause, remedy = rng.choice(reasons)
                    self.health = HealthState(status, code, cause, remedy)
                    self._health_until = t + rng.uniform(shortest, longest)
                    break
        frozen = self.health.status == "failure"
        for point in self.spec.points:
            noise = rng.gauss(0.0, point.noise) if point.noise else 0.0
            if frozen:
                continue
            true = float(getattr(process, point.measures))
            # Low-flow cut-off: a stopped pump reads exactly zero, as a real flowmeter does.
            measured = 0.0 if point.measures == "flow" and true < 0.5 else true + noise
            self.values[point.key] = min(max(measured, point.low), point.high)

    def force(self, health: HealthState, until: float) -> None:
        self.health = health
        self._health_until = until

    def sample(self) -> Sample:
        return Sample(self.spec.tag, dict(self.values), _QUALITY[self.health.status], self.health)


class Plant:
    """The process and its instruments, advanced in fixed steps."""

    def __init__(self, seed: int = 1, instruments: Sequence[InstrumentSpec] = PLANT) -> None:
        self._rng = random.Random(seed)  # noqa: S311 - a simulation, not a secret
        self.process = Process(self._rng)
        self._instruments = [_Instrument(spec, self._rng) for spec in instruments]
        self._pending = 0.0
        self.steps = 0
        self._step()

    @property
    def instruments(self) -> list[InstrumentSpec]:
        return [i.spec for i in self._instruments]

    @property
    def elapsed_s(self) -> float:
        return self.process.t

    def _step(self) -> None:
        if self.steps:
            self.process.step(STEP_S)
        for instrument in self._instruments:
            instrument.step(self.process, self._rng)
        self.steps += 1

    def advance(self, seconds: float) -> None:
        self._pending += min(max(seconds, 0.0), MAX_ADVANCE_S)
        # Rounded so that 0.1 + 0.2 + … does not lose a step to binary fractions.
        steps = math.floor(round(self._pending / STEP_S, 9))
        self._pending -= steps * STEP_S
        for _ in range(steps):
            self._step()

    def samples(self) -> list[Sample]:
        return [i.sample() for i in self._instruments]

    def inject(self, tag: str, health: HealthState, seconds: float) -> None:
        """Put one instrument into an NE 107 state for a while (demos, tests)."""
        for instrument in self._instruments:
            if instrument.spec.tag == tag:
                instrument.force(health, self.process.t + seconds)
                return
        raise KeyError(tag)
