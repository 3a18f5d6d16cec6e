"""A user's policy as a `runtime.Planner`: `py:` objects for `--policy`.

`--policy py:MODULE:ATTR` (or `py:path/file.py:ATTR`) names one of:

- a **Planner** (an object with `reset`, `observe`, `refine`, `action`): used as it is;
- a **factory**: a class, or a function with a parameter named `spec`, called with the plant's
  `PlantSpec` as `spec=` (when it takes one) and the `--policy-arg` keywords; it returns a
  Planner or a plain callable;
- a **plain callable** `f(state)` or `f(state, goal)` -> action (Da,): wrapped in
  `CallablePolicy`, with the `--policy-arg` keywords passed on every call.

`CallablePolicy` calls the function once per tick, in `refine` (so the loop times it and the
step budget learns its latency like any planner's step), and checks what comes back. In
lockstep (`strict=True`) a policy that raises, or returns a wrong shape or a non-finite action,
stops the run with a `PolicyError` that says at which tick and why. In realtime (`strict=False`)
the same faults never crash the loop: the action becomes NaN, the loop sends its fallback and
counts it (`nonfinite` in the run's fallback counts), and the policy counts the cause
(`counters()`: `errors`, `nonfinite`, `bad_shape`; the first error's text in `first_error`).
The counts cover every call, the loop's warm-up calls (which measure the policy's latency
before the first tick) included.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from runtime.protocols import FloatArray, Observation, Planner, PlantSpec
from runtime.specs import SpecError, has_methods, one_line, takes_param

__all__ = ["CallablePolicy", "PolicyError", "planner_from_object"]

_PLANNER_METHODS = ("reset", "observe", "refine", "action")


class PolicyError(RuntimeError):
    """A user's policy failed in a run that cannot absorb it (lockstep); one line."""


def is_planner(obj: Any) -> bool:
    return has_methods(obj, _PLANNER_METHODS)


def _positional_arity(fn: Callable[..., Any]) -> int | None:
    """How many positional arguments `fn` takes without defaults (None: cannot tell)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    n = 0
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return None
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty:
            n += 1
    return n


class CallablePolicy:
    """A plain function `f(state[, goal], **kwargs) -> action` as a Planner (one call a tick).

    Example:
        def pd(state, kp=2.0):
            return -kp * state[:1]
        planner = CallablePolicy(pd, spec, kwargs={"kp": 3.0}, strict=True)
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        spec: PlantSpec,
        *,
        kwargs: dict[str, Any] | None = None,
        strict: bool = True,
        name: str = "",
    ) -> None:
        arity = _positional_arity(fn)
        if arity is not None and arity not in (1, 2):
            raise SpecError(
                f"policy {name or fn!r}: a plain callable takes (state) or (state, goal), "
                f"not {arity} positional arguments"
            )
        self._fn = fn
        self._with_goal = arity == 2
        self._kw = dict(kwargs or {})
        self._spec = spec
        self.strict = strict
        self.name = name or getattr(fn, "__qualname__", repr(fn))
        da = spec.action_dim
        self._out = np.zeros(da)  # the action the loop reads; NaN after a failed call
        self._nan = np.full(da, math.nan)
        self._state = np.zeros(spec.state_dim)
        self._goal = np.zeros(spec.goal_dim)
        self._done = False
        self._tick = 0
        self._counts = {"calls": 0, "errors": 0, "nonfinite": 0, "bad_shape": 0}
        self.first_error = ""
        self.call_ns_max = 0

    # -- Planner ----------------------------------------------------------------------------

    def reset(self, obs: Observation) -> None:
        self._tick = 0
        self._take(obs)
        self._call()

    def observe(self, obs: Observation) -> None:
        self._tick += 1
        self._take(obs)

    def refine(self, budget_ns: int) -> int:
        if self._done:
            return 0
        self._call()
        return 1

    def action(self) -> FloatArray:
        return self._out

    # -- reporting ------------------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        return dict(self._counts)

    # -- internals -----------------------------------------------------------------------------

    def _take(self, obs: Observation) -> None:
        np.copyto(self._state, obs.state)
        if self._goal.size:
            np.copyto(self._goal, obs.goal)
        self._done = False

    def _call(self) -> None:
        self._done = True
        self._counts["calls"] += 1
        t0 = time.perf_counter_ns()
        try:
            if self._with_goal:
                out = self._fn(self._state.copy(), self._goal.copy(), **self._kw)
            else:
                out = self._fn(self._state.copy(), **self._kw)
        except Exception as exc:
            self._fail("errors", f"raised {one_line(exc)}")
            return
        finally:
            self.call_ns_max = max(self.call_ns_max, time.perf_counter_ns() - t0)
        try:
            a = np.asarray(out, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            self._fail("bad_shape", f"returned {type(out).__name__}, not numbers ({exc})")
            return
        if a.shape != self._out.shape:
            self._fail("bad_shape", f"returned shape {a.shape}, expected ({self._out.size},)")
            return
        if not np.all(np.isfinite(a)):
            self._fail("nonfinite", f"returned a non-finite action {a.tolist()}")
            return
        np.copyto(self._out, a)

    def _fail(self, kind: str, what: str) -> None:
        self._counts[kind] += 1
        text = f"policy {self.name} {what} at tick {self._tick}"
        if not self.first_error:
            self.first_error = text
        if self.strict:
            raise PolicyError(text)
        np.copyto(self._out, self._nan)  # the loop sends its fallback and counts it


def planner_from_object(
    obj: Any,
    spec: PlantSpec,
    *,
    kwargs: dict[str, Any] | None = None,
    strict: bool = True,
    name: str = "",
) -> Planner:
    """A Planner from what a `py:` policy spec named (see the module docstring)."""
    kw = dict(kwargs or {})
    label = name or repr(obj)
    if is_planner(obj):
        if kw:
            raise SpecError(f"{label} is a ready planner: --policy-arg has nothing to go to")
        planner: Planner = obj
        return planner
    if not callable(obj):
        raise SpecError(f"{label} is neither a planner, a factory nor a callable")
    factory = isinstance(obj, type) or takes_param(obj, "spec")
    if not factory:
        return CallablePolicy(obj, spec, kwargs=kw, strict=strict, name=label)
    if takes_param(obj, "spec", catch_all=True):
        kw.setdefault("spec", spec)
    try:
        made = obj(**kw)
    except SpecError:
        raise
    except Exception as exc:
        raise SpecError(f"{label}({', '.join(kw)}) raised {one_line(exc)}") from None
    if is_planner(made):
        made_planner: Planner = made
        return made_planner
    if callable(made):
        return CallablePolicy(made, spec, strict=strict, name=label)
    raise SpecError(f"{label} returned {type(made).__name__}: not a planner nor a callable")
