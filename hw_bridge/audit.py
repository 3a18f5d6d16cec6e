"""`AuditPlant`: a check, at the plant boundary, of every command a plant is handed.

The plant side's promise (docs/robustness.md): the plant never applies an invalid, stale or
duplicated command, and reaches its safe action within `watchdog_ms` + one period of losing its
controller. The bridge's counters say what the server refused; this wrapper says what got
through. It forwards every call to the wrapped plant and counts, for each `apply` the plant
accepted (returned without raising; a plant refuses a late command with `LateCommand`,
counted here as `late_refused`):

- `duplicate_applied`: a controller command (`Command.src_seq` >= 0, the controller's own
  `seq`) whose `src_seq` was already applied in the same session;
- `stale_applied`: a controller command whose `src_seq` is lower than the newest applied one of
  its session, or any command whose `deadline_ns` had passed on the plant clock when it
  reached the plant (realtime only: lockstep has no deadlines);
- `invalid_applied`: any command (controller, plan-fed or safe) whose action, or plan, has the
  wrong shape, a NaN or inf, or an element outside [action_low, action_high];

and records, on the plant clock, when each controller command and each safe action
(`fallback == "watchdog"`) was applied: `safe_after_ms` and `regain_ms` below measure a
partition from them.

**Sessions.** A controller numbers all its messages with one counter that strictly increases
for its whole life, across reconnects (hw_bridge/link.py); a new controller (a new process)
starts again from 1. The session a command belongs to is therefore told by where it came from,
never by its number: `attach(core)` keys each controller command by the plant server's current
controller identity (`ServerCore.controller`, the ZeroMQ routing id of the peer whose command
is being applied). One connection is one key, so nothing replayed or reordered within a
connection can hide behind a "new session"; in particular a second `hello` on the same
connection (a duplicate on the wire, or a re-hello after a lapsed lease) does not start a new
order here, whatever the server does with it. A new connection (a new controller, or the same
one after its socket was replaced on a loss) gets a fresh order; a frame cannot move between
ZeroMQ connections, so no real duplicate is missed by that. Without `attach` (no server to
ask), the whole run is one session: strict, and a second controller then shows as stale.

Capabilities the server looks for (`safe_action`, `executes_plans` and `apply_counters`,
`next_tick_ns`) exist on the wrapper exactly when the wrapped plant has them, so the server
treats the wrapped plant as it would the bare one; any other attribute reads through.
"""

from __future__ import annotations

import functools
import json
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, cast

import numpy as np

from hw_bridge.core import HasSafeAction, ServerCore
from runtime.clock import MonotonicClock
from runtime.files import atomic_write_text
from runtime.protocols import (
    Clock,
    Command,
    ExecutesPlans,
    FloatArray,
    LateCommand,
    Observation,
    Plant,
)

__all__ = ["AUDIT_COUNTERS", "AuditPlant", "regain_ms", "safe_after_ms"]

AUDIT_COUNTERS = (
    "applied",  # controller commands the plant accepted
    "planned",  # plan rows the server fed (a plant without ticks of its own)
    "safe",  # safe actions (the watchdog's, a goodbye's)
    "duplicate_applied",
    "stale_applied",
    "invalid_applied",
    "late_refused",  # commands past their deadline that the plant itself refused (late)
    "resets",
)
_WINDOW = 4096  # applied src_seqs remembered per session (older ones: below `newest` anyway)
_MAX_SESSIONS = 64


class _Order:
    """One session's applied `src_seq`s: the newest, and the recent ones as a set."""

    __slots__ = ("newest", "recent", "seen")

    def __init__(self) -> None:
        self.newest = -1
        self.recent: deque[int] = deque()
        self.seen: set[int] = set()

    def add(self, seq: int) -> None:
        self.newest = max(self.newest, seq)
        self.recent.append(seq)
        self.seen.add(seq)
        if len(self.recent) > _WINDOW:
            self.seen.discard(self.recent.popleft())


class AuditPlant:
    """Wraps `plant`; see the module docstring. `counts` (AUDIT_COUNTERS), `apply_ns` and
    `safe_ns` (plant-clock times), `summary()`, `write(path)`.

    `realtime`: check deadlines (default: the plant's `mode` attribute says "realtime", or it
    has none). `clock`: the plant's clock (a `MonotonicClock` by default)."""

    def __new__(cls, plant: Plant, **kw: Any) -> AuditPlant:
        if cls is AuditPlant:
            caps = tuple(
                mixin for mixin, has in (
                    (_SafeAction, isinstance(plant, HasSafeAction)),
                    (_ExecutesPlans, isinstance(plant, ExecutesPlans)),
                    (_Paced, hasattr(plant, "next_tick_ns")),
                ) if has
            )
            if caps:
                cls = _variant(caps)
        return object.__new__(cls)

    def __init__(
        self,
        plant: Plant,
        *,
        clock: Clock | None = None,
        realtime: bool | None = None,
        session: Callable[[], Hashable] | None = None,
    ) -> None:
        self.plant = plant
        self.clock: Clock = clock if clock is not None else MonotonicClock(spin_ns=0)
        if realtime is None:
            realtime = getattr(plant, "mode", "realtime") == "realtime"
        self.realtime = realtime
        self.session = session
        sp = plant.spec()
        self._low, self._high, self._da = sp.action_low, sp.action_high, sp.action_dim
        self.counts: Counter[str] = Counter(dict.fromkeys(AUDIT_COUNTERS, 0))
        self.apply_ns: deque[int] = deque(maxlen=1 << 20)
        self.safe_ns: deque[int] = deque(maxlen=1 << 20)
        self._orders: OrderedDict[Hashable, _Order] = OrderedDict()
        self.bad: deque[str] = deque(maxlen=32)  # the first words on what went wrong

    def attach(self, core: ServerCore) -> None:
        """Key sessions by `core`'s controller identity (see the module docstring)."""
        self.session = lambda: core.controller

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "plant":
            raise AttributeError(name)
        return getattr(self.plant, name)

    # -- the Plant protocol ------------------------------------------------------------------

    def spec(self) -> Any:
        return self.plant.spec()

    def reset(self, seed: int | None = None) -> Observation:
        self.counts["resets"] += 1
        return self.plant.reset(seed)

    def observe(self) -> Observation:
        return self.plant.observe()

    def counters(self) -> dict[str, int]:
        out = dict(self.plant.counters())
        for k in ("duplicate_applied", "stale_applied", "invalid_applied"):
            out[f"audit_{k}"] = int(self.counts[k])
        return out

    def close(self) -> None:
        self.plant.close()

    def apply(self, cmd: Command) -> None:
        now = self.clock.now_ns()
        try:
            self.plant.apply(cmd)  # raises: refused, nothing applied
        except LateCommand:
            self.counts["late_refused"] += 1
            raise
        deadline = cmd.deadline_ns
        past = self.realtime and deadline > 0 and now > deadline
        c = self.counts
        invalid = self._invalid(cmd)
        if invalid:
            c["invalid_applied"] += 1
            self.bad.append(f"invalid: {invalid} (src_seq {cmd.src_seq})")
        if cmd.src_seq >= 0:
            c["applied"] += 1
            self.apply_ns.append(now)
            key = self.session() if self.session is not None else None
            order = self._orders.get(key)
            if order is None:
                order = self._orders[key] = _Order()
                if len(self._orders) > _MAX_SESSIONS:
                    self._orders.popitem(last=False)
            else:
                self._orders.move_to_end(key)
            if cmd.src_seq in order.seen:
                c["duplicate_applied"] += 1
                self.bad.append(f"duplicate: src_seq {cmd.src_seq} applied again")
            elif cmd.src_seq < order.newest or past:
                c["stale_applied"] += 1
                self.bad.append(f"stale: src_seq {cmd.src_seq}, newest {order.newest}, "
                                f"{(now - deadline) / 1e6:.3f} ms past its deadline")
            order.add(cmd.src_seq)
        elif cmd.fallback == "watchdog":
            c["safe"] += 1
            self.safe_ns.append(now)
        else:
            c["planned"] += 1
            if past:
                c["stale_applied"] += 1
                self.bad.append(f"stale: a {cmd.fallback or 'server'} action past its deadline")

    def _invalid(self, cmd: Command) -> str:
        """Why the command's action or plan may not reach a plant; "" when it may."""
        for name, a in (("action", cmd.action), ("plan", cmd.plan)):
            if a is None:
                continue
            arr = np.asarray(a)
            ok_shape = arr.shape == (self._da,) if name == "action" else (
                arr.ndim == 2 and arr.shape[1] == self._da)
            if not ok_shape:
                return f"{name} shape {arr.shape}"
            if not np.all(np.isfinite(arr)):
                return f"{name} not finite"
            if np.any(arr < self._low) or np.any(arr > self._high):
                return f"{name} outside the action box"
        return ""

    # -- results -----------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Counts, the plant-clock times of applies and safe actions, and the first problems."""
        return {
            "counts": {k: int(v) for k, v in self.counts.items()},
            "sessions": len(self._orders),
            "apply_ns": list(self.apply_ns),
            "safe_ns": list(self.safe_ns),
            "bad": list(self.bad),
        }

    def write(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.summary()))


# -- capabilities, present exactly when the wrapped plant has them ------------------------------


class _SafeAction:
    plant: Any

    def safe_action(self, state: FloatArray) -> FloatArray:
        return cast(FloatArray, self.plant.safe_action(state))


class _ExecutesPlans:
    plant: Any

    @property
    def executes_plans(self) -> bool:
        return bool(self.plant.executes_plans)

    def apply_counters(self) -> dict[str, int]:
        return cast(dict[str, int], self.plant.apply_counters())


class _Paced:
    plant: Any

    @property
    def next_tick_ns(self) -> int:
        return cast(int, self.plant.next_tick_ns)


@functools.cache
def _variant(caps: tuple[type, ...]) -> type[AuditPlant]:
    return cast(type[AuditPlant], type("AuditPlant", (*caps, AuditPlant), {}))


# -- measures over the recorded times -------------------------------------------------------------


def safe_after_ms(apply_ns: list[int], safe_ns: list[int], cut_ns: int) -> float | None:
    """From the last controller command applied before the first safe action at or after
    `cut_ns` (a partition's start) to that safe action, ms; None without one."""
    safe = next((t for t in sorted(safe_ns) if t >= cut_ns), None)
    if safe is None:
        return None
    before = [t for t in apply_ns if t < safe]
    return (safe - max(before)) / 1e6 if before else None


def regain_ms(apply_ns: list[int], heal_ns: int) -> float | None:
    """From `heal_ns` (a partition's end) to the first controller command applied at or after
    it, ms; None without one."""
    after = [t for t in apply_ns if t >= heal_ns]
    return (min(after) - heal_ns) / 1e6 if after else None
