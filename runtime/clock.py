"""Clocks: the only places rtdiff reads time.

`MonotonicClock` waits in two stages: `time.sleep` for the bulk (cheap, but the OS may wake us
tens to hundreds of microseconds late), then a spin on `perf_counter_ns` for the last
`spin_ns` (precise, but it holds a core and the GIL). The spin window is the knob between
lateness and CPU/GIL cost; `rtdiff bench tick` measures both ends. `spin_ns=0` is plain sleep.

`FakeClock` only moves when told (`advance_ns`, or `sleep_until_ns` jumping straight to the
target), so every piece of timing logic is tested deterministically.
"""

from __future__ import annotations

import threading
import time


class MonotonicClock:
    """`perf_counter_ns` with sleep-then-spin waits.

    Example:
        clock = MonotonicClock(spin_ns=200_000)   # spin the last 200 us
        clock.sleep_until_ns(clock.now_ns() + 1_000_000)
    """

    def __init__(self, *, spin_ns: int = 200_000, yield_in_spin: bool = False) -> None:
        if spin_ns < 0:
            raise ValueError(f"{spin_ns=} must be >= 0")
        self.spin_ns = spin_ns
        # time.sleep(0) inside the spin releases the GIL so a refinement worker thread can run;
        # it costs precision (a few us per yield), so it is off by default.
        self.yield_in_spin = yield_in_spin

    def now_ns(self) -> int:
        return time.perf_counter_ns()

    def sleep_until_ns(self, t_ns: int) -> None:
        now = time.perf_counter_ns
        remaining = t_ns - now()
        if remaining <= 0:
            return
        coarse = remaining - self.spin_ns
        if coarse > 0:
            time.sleep(coarse * 1e-9)
        if self.yield_in_spin:
            while now() < t_ns:
                time.sleep(0)
        else:
            while now() < t_ns:
                pass


class FakeClock:
    """A clock that only moves when told; thread-safe.

    `sleep_until_ns(t)` jumps to `t` (never backwards). Optional `on_sleep` lets a test run
    code "while the loop sleeps", e.g. a fake plant stepping its own physics.

    Example:
        clock = FakeClock(start_ns=0)
        clock.advance_ns(1_000)
        clock.now_ns()  # 1000
    """

    def __init__(self, start_ns: int = 0) -> None:
        self._t = start_ns
        self._lock = threading.Lock()
        self.sleeps = 0

    def now_ns(self) -> int:
        with self._lock:
            return self._t

    def advance_ns(self, dt_ns: int) -> None:
        if dt_ns < 0:
            raise ValueError(f"{dt_ns=}: a monotonic clock cannot go back")
        with self._lock:
            self._t += dt_ns

    def set_ns(self, t_ns: int) -> None:
        with self._lock:
            if t_ns < self._t:
                raise ValueError(
                    f"{t_ns=} is before now ({self._t}): a monotonic clock cannot go back"
                )
            self._t = t_ns

    def sleep_until_ns(self, t_ns: int) -> None:
        with self._lock:
            self.sleeps += 1
            if t_ns > self._t:
                self._t = t_ns
