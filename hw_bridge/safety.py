"""Plant-side safety: action limits and the command watchdog.

Both live on the plant's side of the link because the plant is the only party that is still
there when the network or the controller is not. Neither reads a clock: the caller passes
`now_ns`, so both are tested exactly with plain integers (time is injected).

Limits, in the order applied:
1. reject: an action that is not (Da,) or holds NaN/inf is never applied (`rejected`);
2. clamp: each element into [action_low, action_high], the plant's position, velocity or
   effort range in the action's own unit (`clamped`);
3. rate limit: each element moves at most `max_action_rate_per_s * dt_s` from the last applied
   action (`rate_limited`), so a controller cannot slam an actuator from one end to the other.

Watchdog: armed by the first valid command of a stream; when no valid command arrived for
`timeout_ns`, `check` returns True once (a trip), and the stream that tripped it is latched:
its later commands are refused, and control resumes only on a fresh stream id. A stalled
controller whose old queued commands trickle in therefore cannot restart the plant by accident.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from runtime.protocols import FloatArray

_isfinite, _minimum, _maximum = np.isfinite, np.minimum, np.maximum
_isfinite_f = math.isfinite
_F8 = np.dtype("<f8")


class ActionRejected(ValueError):
    """An action that must not be applied at all (wrong shape, NaN or inf)."""


@dataclass
class LimitResult:
    action: FloatArray  # (Da,) what may be applied
    clamped: bool  # some element was outside [low, high]
    rate_limited: bool  # some element moved faster than the rate limit


def _step(rate: FloatArray, dt_s: float) -> FloatArray:
    """How far each element may move in `dt_s`: rate * dt, where an infinite rate (no limit on
    that element) stays infinite also for dt = 0 (inf * 0 would be NaN)."""
    dt = max(dt_s, 0.0)
    if dt > 0.0:
        return rate * dt
    return np.where(np.isinf(rate), np.inf, 0.0)


class ActionLimiter:
    """Reject non-finite actions, clamp to a box, limit the rate of change.

    Example:
        lim = ActionLimiter(low=np.array([-1.0]), high=np.array([1.0]),
                            max_rate_per_s=np.array([10.0]))
        lim.limit(np.array([5.0]), dt_s=0.01).action   # array([0.1]): clamped, then rate-limited
    """

    def __init__(
        self, *, low: FloatArray, high: FloatArray, max_rate_per_s: FloatArray | None = None
    ) -> None:
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        if self.low.shape != self.high.shape or self.low.ndim != 1:
            raise ValueError(f"limits must be (Da,) arrays: {self.low.shape=}, {self.high.shape=}")
        self.max_rate_per_s = (
            None if max_rate_per_s is None else np.asarray(max_rate_per_s, dtype=np.float64)
        )
        if self.max_rate_per_s is not None and (
            self.max_rate_per_s.shape != self.low.shape or np.any(~(self.max_rate_per_s > 0))
        ):
            raise ValueError(f"max_rate_per_s must be (Da,) and > 0: {self.max_rate_per_s=}")
        self.last: FloatArray | None = None  # (Da,) last action handed to the plant
        # A small action with finite limits is limited element by element on Python floats:
        # the same IEEE-754 double arithmetic and the same comparisons as numpy's
        # maximum/minimum (hence clip), at a fraction of the cost of a dozen ufunc calls on a
        # (Da,) array. Anything else takes the numpy path. `_limit_arrays` is the reference.
        bounds = [self.low, self.high] + (
            [] if self.max_rate_per_s is None else [self.max_rate_per_s]
        )
        self._scalar = self.low.shape[0] <= 16 and all(bool(np.isfinite(b).all()) for b in bounds)
        self._low_l: list[float] = self.low.tolist()
        self._high_l: list[float] = self.high.tolist()
        self._rate_l: list[float] | None = (
            None if self.max_rate_per_s is None else self.max_rate_per_s.tolist()
        )

    def reset(self, last: FloatArray | None = None) -> None:
        self.last = None if last is None else np.array(last, dtype=np.float64)

    def limit(self, action: FloatArray, *, dt_s: float) -> LimitResult:
        """(Da,) requested -> what may be applied; records it as the last applied action."""
        last = self.last
        if not (
            self._scalar
            and type(action) is np.ndarray
            and action.dtype is _F8
            and (last is None or last.shape == self.low.shape)
        ):
            return self._limit_arrays(action, dt_s=dt_s)
        if action.shape != self.low.shape:
            raise ActionRejected(f"action shape {action.shape}, expected {self.low.shape}")
        xs: list[float] = action.tolist()
        for x in xs:
            if not _isfinite_f(x):
                raise ActionRejected("action holds NaN or inf")
        out: list[float] = []
        clamped = False
        for x, lo, hi in zip(xs, self._low_l, self._high_l, strict=True):
            y = x if x >= lo else lo  # numpy maximum(x, lo), then minimum(., hi): clip
            y = y if y <= hi else hi
            clamped = clamped or y != x
            out.append(y)
        rate_limited = False
        rates = self._rate_l
        if rates is not None and last is not None:
            dt = max(dt_s, 0.0)
            for i, (y, p, r) in enumerate(zip(out, last.tolist(), rates, strict=True)):
                step = r * dt
                lo, hi = p - step, p + step
                z = y if y >= lo else lo
                z = z if z <= hi else hi
                if z != y:
                    rate_limited = True
                    out[i] = z
        arr = np.array(out, dtype=np.float64)
        self.last = arr
        return LimitResult(arr, clamped, rate_limited)

    def _limit_arrays(self, action: FloatArray, *, dt_s: float) -> LimitResult:
        """`limit` in numpy: the general path and the reference for the scalar one."""
        # ufuncs and array methods called directly (np.clip, np.all and np.any add Python-level
        # dispatch that costs more than the arithmetic for a (Da,) action); clip(x, lo, hi) is
        # minimum(maximum(x, lo), hi), exactly as numpy defines it
        low = self.low
        if action.shape != low.shape:
            raise ActionRejected(f"action shape {action.shape}, expected {low.shape}")
        if not _isfinite(action).all():
            raise ActionRejected("action holds NaN or inf")
        out = _minimum(_maximum(action, low), self.high)
        clamped = bool((out != action).any())
        rate_limited = False
        rate, last = self.max_rate_per_s, self.last
        if rate is not None and last is not None:
            step = _step(rate, dt_s)
            limited = _minimum(_maximum(out, last - step), last + step)
            rate_limited = bool((limited != out).any())
            out = limited
        self.last = out
        return LimitResult(out, clamped, rate_limited)

    def limit_plan(self, plan: FloatArray, *, first: FloatArray, dt_s: float) -> LimitResult:
        """A command's plan (N, Da), row `j` one `dt_s` after row `j - 1` and row 0 one after
        the command's own (already limited) action `first`: the same rules as `limit`, row by
        row (reject NaN/inf or a wrong shape, clamp into the box, then each row within the
        rate limit of the row before). Returns a new array; `last` is not touched (a plan is
        applied only on ticks without a fresh command, by the plant, which limits the row it
        applies against what it applied before)."""
        if plan.ndim != 2 or plan.shape[1:] != self.low.shape:
            raise ActionRejected(f"plan shape {plan.shape}, expected (N, {self.low.shape[0]})")
        if not _isfinite(plan).all():
            raise ActionRejected("plan holds NaN or inf")
        out = _minimum(_maximum(plan, self.low), self.high)
        clamped = bool((out != plan).any())
        rate_limited = False
        rate = self.max_rate_per_s
        if rate is not None and len(out):
            step = _step(rate, dt_s)
            prev = np.vstack((first[None, :], out[:-1]))
            if bool((np.abs(out - prev) > step).any()):  # rare: walk the chain row by row
                rate_limited = True
                p = np.asarray(first, dtype=np.float64)
                for j in range(len(out)):
                    out[j] = _minimum(_maximum(out[j], p - step), p + step)
                    p = out[j]
        return LimitResult(out, clamped, rate_limited)

    def safe(self, action: FloatArray) -> FloatArray:
        """A safe action bypasses the rate limit (stopping must not be slowed down) but not the
        box; it becomes the base the next command is rate-limited from."""
        out = np.clip(np.asarray(action, dtype=np.float64), self.low, self.high)
        self.last = out
        return out


class Watchdog:
    """No valid command for `timeout_ns` -> trip once; resume only on a fresh stream.

    Example:
        wd = Watchdog(timeout_ns=100_000_000)
        wd.feed(stream=7, now_ns=0)
        wd.check(now_ns=50_000_000)    # False
        wd.check(now_ns=100_000_001)   # True: trip, stream 7 latched
        wd.accepts(stream=7)           # False; wd.accepts(stream=8) -> True
    """

    def __init__(self, *, timeout_ns: int) -> None:
        if timeout_ns <= 0:
            raise ValueError(f"{timeout_ns=} must be > 0")
        self.timeout_ns = timeout_ns
        self.armed = False
        self.tripped = False
        self.last_valid_ns = 0
        self.stream = -1  # the stream being watched
        self.latched_streams: set[int] = set()
        self.trips = 0

    def accepts(self, stream: int) -> bool:
        return stream not in self.latched_streams

    def feed(self, *, stream: int, now_ns: int) -> None:
        """A valid command of `stream` (one that `accepts`) was applied at `now_ns`."""
        self.armed = True
        self.tripped = False
        self.stream = stream
        self.last_valid_ns = now_ns

    def disarm(self) -> None:
        """The controller left cleanly (goodbye) or a new session starts: nothing to watch."""
        if self.armed:
            self.latched_streams.add(self.stream)
        self.armed = False

    @property
    def due_ns(self) -> int | None:
        """The first instant at which `check` trips, if no command comes first; None when
        there is nothing to watch (not armed, or already tripped)."""
        if self.armed and not self.tripped:
            return self.last_valid_ns + self.timeout_ns + 1
        return None

    def check(self, *, now_ns: int) -> bool:
        """True exactly once per silence longer than the timeout."""
        if self.armed and not self.tripped and now_ns - self.last_valid_ns > self.timeout_ns:
            self.tripped = True
            self.trips += 1
            self.latched_streams.add(self.stream)
            return True
        return False
