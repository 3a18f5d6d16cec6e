"""`rtdiff check`: a user's plant or policy against the contracts rtdiff relies on.

Like gymnasium's `check_env`, it drives the object through what the runtime and the bridge
will do to it and reports, in plain words, what breaks a promise:

Plant (`check_plant`): `spec()` is a sound `PlantSpec`; `reset()` gives a finite state of the
spec's size; readings keep their sizes, stay finite, and their time never goes backwards; a
reading that repeats the previous one's time under a new `seq` is marked stale (a plant must
not present an old measurement as new); a command at each limit is taken; a NaN or misshapen
command is refused, not applied; lockstep episodes end by the spec's `episode_ticks`;
realtime readings advance at about the spec's rate; `counters()` maps names to ints; `observe`
and `apply` fit in the period (their p99); `close()` works twice.

Policy (`check_policy`): it is built for the plant's spec; over a lockstep episode on that
plant every action has the right size and is finite; the share of actions outside the limits
(which the loop clips) is reported; a decision (observe + refine + action) fits in the period
by its p99.

Each check yields a `Finding` (`ok` False is a failure, `warn` a remark that does not fail);
`rtdiff check` prints one line per finding and exits 1 when any failed. Everything here works on
the `runtime` protocols alone (numpy, no torch, MuJoCo or zmq).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.protocols import Command, FloatArray, Observation, Planner, Plant, PlantSpec
from runtime.specs import one_line

__all__ = ["Finding", "check_plant", "check_policy"]

FAR_FUTURE_NS = 2**62


@dataclass(frozen=True)
class Finding:
    """One check's outcome: `name` (short), `ok`, `text` (plain words), `warn` (a remark)."""

    name: str
    ok: bool
    text: str
    warn: bool = False

    def line(self) -> str:
        tag = "WARN" if (self.ok and self.warn) else ("ok  " if self.ok else "FAIL")
        return f"{tag} {self.name}: {self.text}"


def _p(xs: list[int], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q)) / 1e6 if xs else math.nan


def check_spec(spec: Any) -> Iterator[Finding]:
    if not isinstance(spec, PlantSpec):
        yield Finding("spec", False, f"spec() returned {type(spec).__name__}, not a PlantSpec")
        return
    yield Finding(
        "spec", True,
        f"{spec.name!r}: state {spec.state_dim}, action {spec.action_dim}, goal {spec.goal_dim},"
        f" {spec.rate_hz:g} Hz, episodes of {spec.episode_ticks or 'unbounded'} ticks",
    )
    if spec.rate_hz > 10_000:
        yield Finding("rate", False, f"{spec.rate_hz:g} Hz is above the 10 kHz a Python loop "
                                     "can keep")
    if spec.state_names and len(spec.state_names) != spec.state_dim:
        yield Finding("names", False, f"{len(spec.state_names)} state names for "
                                      f"{spec.state_dim} state entries")
    if spec.action_names and len(spec.action_names) != spec.action_dim:
        yield Finding("names", False, f"{len(spec.action_names)} action names for "
                                      f"{spec.action_dim} actions")
    if np.any(spec.action_low == spec.action_high):
        yield Finding("limits", True, "some actions have low == high: they can never change",
                      warn=True)


def _obs_problem(obs: Any, spec: PlantSpec, what: str) -> str | None:
    if not isinstance(obs, Observation):
        return f"{what} returned {type(obs).__name__}, not an Observation"
    state = np.asarray(obs.state)
    if state.shape != (spec.state_dim,):
        return f"{what}: state has shape {state.shape}, the spec says ({spec.state_dim},)"
    if not np.all(np.isfinite(state)):
        return f"{what}: state is not finite: {state.tolist()}"
    goal = np.asarray(obs.goal)
    if goal.shape != (spec.goal_dim,):
        return f"{what}: goal has shape {goal.shape}, the spec says ({spec.goal_dim},)"
    if not isinstance(obs.t_ns, (int, np.integer)):
        return f"{what}: t_ns is {type(obs.t_ns).__name__}, not an int of nanoseconds"
    return None


def check_plant(
    plant: Plant, *, mode: str, ticks: int = 200, seconds: float = 1.0, seed: int = 0
) -> list[Finding]:
    """Run the plant checks (see the module docstring); the plant is closed at the end."""
    out: list[Finding] = []
    try:
        spec_obj = plant.spec()
    except Exception as exc:
        return [Finding("spec", False, f"spec() raised {one_line(exc)}")]
    out.extend(check_spec(spec_obj))
    if not all(f.ok for f in out):
        return out
    spec: PlantSpec = spec_obj
    try:
        out.extend(_drive(plant, spec, mode=mode, ticks=ticks, seconds=seconds, seed=seed))
    finally:
        for i in range(2):
            try:
                plant.close()
            except Exception as exc:
                out.append(Finding("close", False, f"close() call {i + 1} raised "
                                                   f"{one_line(exc)}"))
                break
        else:
            out.append(Finding("close", True, "close() works, twice"))
    return out


def _drive(
    plant: Plant, spec: PlantSpec, *, mode: str, ticks: int, seconds: float, seed: int
) -> Iterator[Finding]:
    try:
        obs = plant.reset(seed)
    except Exception as exc:
        yield Finding("reset", False, f"reset({seed}) raised {one_line(exc)}")
        return
    problem = _obs_problem(obs, spec, "reset()")
    yield Finding("reset", problem is None, problem or "a finite first reading of the right size")
    if problem:
        return
    period_ns = spec.period_ns
    low, high = spec.action_low, spec.action_high
    mid = (low + high) / 2
    # a NaN / misshapen command must never reach the actuators
    for bad, name, what in (
        (np.full(spec.action_dim, np.nan), "refuses NaN", "a NaN action"),
        (np.zeros(spec.action_dim + 1), "refuses size", "an action of the wrong size"),
    ):
        try:
            plant.apply(Command(0, 0, bad, FAR_FUTURE_NS))
            yield Finding(name, False, f"apply() took {what} (it must raise, not apply)")
        except Exception:
            yield Finding(name, True, f"apply() refuses {what}")
    readings: list[Observation] = [obs]
    observe_ns: list[int] = []
    apply_ns: list[int] = []
    errors: list[str] = []
    t_end = time.monotonic() + seconds
    k = 0
    actions = (low, high, mid)
    while True:
        if mode == "lockstep" and k >= ticks:
            break
        if mode != "lockstep" and time.monotonic() >= t_end:
            break
        a = np.array(actions[k % 3], dtype=np.float64)
        t0 = time.perf_counter_ns()
        try:
            plant.apply(Command(k + 1, 0, a, FAR_FUTURE_NS))
        except Exception as exc:
            errors.append(f"apply() of {a.tolist()} (within the limits) raised {one_line(exc)}")
            break
        t1 = time.perf_counter_ns()
        try:
            o = plant.observe()
        except Exception as exc:
            errors.append(f"observe() raised {one_line(exc)}")
            break
        t2 = time.perf_counter_ns()
        apply_ns.append(t1 - t0)
        observe_ns.append(t2 - t1)
        readings.append(o)
        k += 1
        if mode == "lockstep" and o.done:
            break
        if mode != "lockstep":
            time.sleep(spec.period_s / 2)
    if errors:
        yield Finding("commands", False, errors[0])
        return
    yield Finding("commands", True, f"{k} commands at the limits and the middle taken")
    yield from _check_readings(readings, spec, mode=mode, seconds=seconds)
    if mode == "lockstep":
        n = spec.episode_ticks
        if n and k > n:
            yield Finding("episode", False, f"no episode end after {k} ticks; the spec says {n}")
        elif n and not readings[-1].done:
            yield Finding("episode", True, f"{k} ticks checked, no end yet (spec: {n})",
                          warn=k < n)
        else:
            yield Finding("episode", True, f"the episode ends after {k} ticks")
    try:
        counters = plant.counters()
        good = isinstance(counters, dict) and all(
            isinstance(key, str) and isinstance(v, (int, np.integer)) for key, v in
            counters.items())
        yield Finding("counters", good, "counters() maps names to ints" if good else
                      f"counters() returned {counters!r}, not a dict of str -> int")
    except Exception as exc:
        yield Finding("counters", False, f"counters() raised {one_line(exc)}")
    for what, xs in (("observe", observe_ns), ("apply", apply_ns)):
        p50, p99 = _p(xs, 50), _p(xs, 99)
        fits = p99 * 1e6 < period_ns
        yield Finding(
            f"{what} latency", fits,
            f"p50 {p50:.3f} ms, p99 {p99:.3f} ms over {len(xs)} calls; the period is "
            f"{period_ns / 1e6:.3f} ms" + ("" if fits else ": it cannot keep its own rate"),
        )


def _check_readings(
    readings: list[Observation], spec: PlantSpec, *, mode: str, seconds: float
) -> Iterator[Finding]:
    back = stale_bad = 0
    first_back = first_stale = ""
    for i in range(1, len(readings)):
        prev, cur = readings[i - 1], readings[i]
        problem = _obs_problem(cur, spec, f"reading {i}")
        if problem:
            yield Finding("readings", False, problem)
            return
        if cur.t_ns < prev.t_ns:
            back += 1
            first_back = first_back or (
                f"reading {i} is {(prev.t_ns - cur.t_ns) / 1e6:.3f} ms older than reading "
                f"{i - 1}: the plant's time went backwards")
        elif cur.t_ns == prev.t_ns and cur.seq != prev.seq and not cur.stale:
            stale_bad += 1  # the same measurement presented as a new reading
            first_stale = first_stale or (
                f"reading {i} repeats the time of reading {i - 1} under a new seq but is not "
                "marked stale")
    yield Finding("time", back == 0, first_back + (f" ({back} times)" if back > 1 else "")
                  if back else f"{len(readings)} readings, time never goes backwards")
    yield Finding("stale", stale_bad == 0, first_stale if stale_bad else
                  "no old measurement is presented as a new reading")
    if mode != "lockstep":
        fresh = len({r.t_ns for r in readings})
        expected = spec.rate_hz * seconds
        ok = fresh >= 0.5 * expected / 2  # polled at twice the period: about half are new
        yield Finding("rate", ok, f"{fresh} distinct readings in {seconds:g} s polled every "
                                  f"half period (the spec's {spec.rate_hz:g} Hz gives about "
                                  f"{expected:.0f})", warn=not ok)


def check_policy(
    planner: Planner, plant: Plant, *, ticks: int = 200, seed: int = 0
) -> list[Finding]:
    """Run the policy checks over a lockstep episode of `plant` (closed at the end)."""
    out: list[Finding] = []
    try:
        spec = plant.spec()
        out.extend(_decide(planner, plant, spec, ticks=ticks, seed=seed))
    finally:
        plant.close()
    return out


def _action_problem(a: Any, spec: PlantSpec) -> tuple[str | None, FloatArray | None]:
    try:
        arr = np.asarray(a, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return f"action() returned {type(a).__name__}, not numbers", None
    if arr.shape != (spec.action_dim,):
        return f"action() has shape {arr.shape}, the plant takes ({spec.action_dim},)", None
    if not np.all(np.isfinite(arr)):
        return f"action() is not finite: {arr.tolist()}", None
    return None, arr


def _decide(
    planner: Planner, plant: Plant, spec: PlantSpec, *, ticks: int, seed: int
) -> Iterator[Finding]:
    obs = plant.reset(seed)
    try:
        planner.reset(obs)
    except Exception as exc:
        yield Finding("reset", False, f"the policy's reset() raised {one_line(exc)}")
        return
    decide_ns: list[int] = []
    outside = 0
    k = 0
    for k in range(1, ticks + 1):
        t0 = time.perf_counter_ns()
        try:
            planner.observe(obs)
            planner.refine(spec.period_ns)
            a = planner.action()
        except Exception as exc:
            yield Finding("decide", False, f"tick {k}: the policy raised {one_line(exc)}")
            return
        decide_ns.append(time.perf_counter_ns() - t0)
        problem, arr = _action_problem(a, spec)
        if problem or arr is None:
            yield Finding("actions", False, f"tick {k}: {problem}")
            return
        outside += int(np.any(arr < spec.action_low) or np.any(arr > spec.action_high))
        plant.apply(Command(k, 0, np.clip(arr, spec.action_low, spec.action_high),
                            FAR_FUTURE_NS))
        obs = plant.observe()
        if obs.done:
            break
    yield Finding("actions", True, f"{k} decisions, every action finite and of size "
                                   f"{spec.action_dim}")
    yield Finding("limits", True, f"{outside} of {k} actions outside the limits (the loop "
                                  "clips them)" if outside else "every action within the limits",
                  warn=outside > 0)
    p50, p99 = _p(decide_ns, 50), _p(decide_ns, 99)
    fits = p99 * 1e6 < spec.period_ns
    yield Finding("decision latency", fits,
                  f"p50 {p50:.3f} ms, p99 {p99:.3f} ms; the period is "
                  f"{spec.period_ns / 1e6:.3f} ms" + ("" if fits else
                                                       ": it cannot decide within one tick"))
