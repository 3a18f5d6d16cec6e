"""Absolute-time tick scheduling: tick `k` starts at `t0 + k*T`, never drifting.

Drift is the classic bug of `sleep(T)` loops: each tick's own lateness adds to the next one's
start. The `Ticker` computes every start from `t0` instead, so lateness never accumulates.

Overrun policy: when the loop comes back after the *next* tick's start has already passed (a
planner or the OS held it for more than a period), the ticks whose start passed are skipped and
counted, and the loop runs the latest tick whose start has passed, late. It never bursts through
the missed ticks to catch up: a burst would send a robot several stale commands back to back.
"""

from __future__ import annotations

from dataclasses import dataclass

from runtime.protocols import Clock


@dataclass(frozen=True)
class TickStart:
    """When tick `k` was due and when it actually started (ns), and how many were skipped."""

    k: int
    scheduled_ns: int
    start_ns: int
    skipped: int

    @property
    def lateness_ns(self) -> int:
        return self.start_ns - self.scheduled_ns


class Ticker:
    """Waits for each tick's absolute start time on a `Clock`.

    Example:
        ticker = Ticker(clock, period_ns=1_000_000)   # 1 kHz
        while running:
            start = ticker.wait()   # sleeps until t0 + k*T; start.k, start.lateness_ns
    """

    def __init__(self, clock: Clock, period_ns: int, *, t0_ns: int | None = None) -> None:
        if period_ns <= 0:
            raise ValueError(f"{period_ns=} must be > 0")
        self.clock = clock
        self.period_ns = period_ns
        self.t0_ns = clock.now_ns() if t0_ns is None else t0_ns
        self._next_k = 0
        self.skipped_total = 0

    @property
    def next_k(self) -> int:
        """Index of the next tick `wait()` will consider (skips may move past it)."""
        return self._next_k

    def realign(self, anchor_ns: int, *, late_ok_ns: int = 0) -> None:
        """Move the schedule onto `anchor_ns + j*T`, keeping the tick numbering.

        The next tick becomes the first such instant that is not in the past, or `anchor_ns`
        itself if it passed less than `late_ok_ns` ago (that tick then starts late rather than
        not at all). Used to put the controller's ticks just after the plant's (the anchor is
        a plant tick plus a phase offset), so each observation is fresh and each command lands
        before the next plant tick.
        """
        now = self.clock.now_ns()
        j = max(0, -(-(now - anchor_ns) // self.period_ns))  # ceil((now - anchor) / T)
        if now - anchor_ns < late_ok_ns:
            j = 0
        self.t0_ns = anchor_ns + j * self.period_ns - self._next_k * self.period_ns

    def wait(self) -> TickStart:
        """Sleep until the next tick is due; skip (and count) ticks whose start already passed."""
        k = self._next_k
        due = self.t0_ns + k * self.period_ns
        now = self.clock.now_ns()
        skipped = 0
        if now >= due + self.period_ns:
            # We are past the start of tick k+1: jump to the latest tick already due.
            latest = (now - self.t0_ns) // self.period_ns
            skipped = latest - k
            k = latest
            due = self.t0_ns + k * self.period_ns
        elif now < due:
            self.clock.sleep_until_ns(due)
            now = self.clock.now_ns()
        self.skipped_total += skipped
        self._next_k = k + 1
        return TickStart(k=k, scheduled_ns=due, start_ns=now, skipped=skipped)
