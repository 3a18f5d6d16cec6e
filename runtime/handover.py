"""Asynchronous refinement: a worker thread refines continuously, the tick takes the newest result.

The worker owns the planner: only it calls `reset`, `observe`, `refine` and `action`, so the
planner itself needs no locking. Two small lock-protected slots connect it to the tick thread:

- `Mailbox` (tick -> worker): the newest observation, newest wins; a pending reset is never
  dropped (a newer observation is folded into it).
- `LatestAction` (worker -> tick): a preallocated (Da,) buffer, copied in and out under a lock,
  tagged with the observation it answers and a running step count. Copy-under-lock is what makes
  the hand-over tear-free; a lock-free swap of references would also be tear-free in CPython but
  would allocate per publish.

GIL note (measure, don't guess): while the tick thread spin-waits it holds the GIL and the worker
stalls between torch kernels. Async mode therefore waits for the emit instant with a sleep-only
clock wait (`MonotonicClock(spin_ns=0)` or a short spin with `yield_in_spin=True`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from runtime.protocols import FloatArray, Observation, Planner


class LatestAction:
    """Tear-free single-slot hand-over of a (Da,) action plus its tag.

    Example:
        slot = LatestAction(action_dim=2)
        slot.publish(np.array([0.1, 0.2]), obs_seq=7, steps=3)
        tag, steps = slot.read(out)   # out now holds the action
    """

    def __init__(self, action_dim: int) -> None:
        self._buf = np.zeros(action_dim, dtype=np.float64)
        self._obs_seq = -1
        self._steps = 0
        self._lock = threading.Lock()

    def publish(self, action: FloatArray, obs_seq: int, steps: int) -> None:
        with self._lock:
            np.copyto(self._buf, action)
            self._obs_seq = obs_seq
            self._steps = steps

    def read(self, out: FloatArray) -> tuple[int, int]:
        """Copy the newest action into `out`; return (obs_seq it answers, total steps so far)."""
        with self._lock:
            np.copyto(out, self._buf)
            return self._obs_seq, self._steps


class Mailbox:
    """Newest-wins observation slot from the tick thread to the worker."""

    def __init__(self) -> None:
        self._obs: Observation | None = None
        self._reset = False
        self._cond = threading.Condition()

    def post(self, obs: Observation, *, reset: bool = False) -> None:
        with self._cond:
            self._obs = obs
            self._reset = self._reset or reset
            self._cond.notify()

    def take(self, timeout_s: float | None) -> tuple[Observation | None, bool]:
        """The pending observation and whether it is a reset; waits up to `timeout_s` if none."""
        with self._cond:
            if self._obs is None and timeout_s is not None and timeout_s > 0:
                self._cond.wait(timeout_s)
            obs, reset = self._obs, self._reset
            self._obs, self._reset = None, False
            return obs, reset


class RefineWorker:
    """Runs `planner.refine` continuously in a daemon thread.

    After every observation and every completed step it publishes `planner.action()` to
    `latest`. When the planner reports nothing left to do (`refine` returns 0), the worker waits
    for the next observation instead of spinning. Exceptions in the worker are kept and re-raised
    in the tick thread by `check()`, never swallowed.
    """

    def __init__(
        self,
        planner: Planner,
        latest: LatestAction,
        *,
        step_budget_ns: int,
        on_step: Callable[[int], None] | None = None,
        idle_wait_s: float = 0.001,
    ) -> None:
        self.planner = planner
        self.latest = latest
        self.mailbox = Mailbox()
        self.step_budget_ns = step_budget_ns
        self.on_step = on_step
        self.idle_wait_s = idle_wait_s
        self.steps_total = 0
        self.surprise = 0.0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtdiff-refine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.mailbox.post(Observation(seq=-1, t_ns=0, state=np.zeros(0)))  # wake it
        self._thread.join(timeout=5.0)

    def check(self) -> None:
        if self.error is not None:
            raise RuntimeError(f"refinement worker failed: {self.error!r}") from self.error

    def _run(self) -> None:
        planner = self.planner
        obs_seq = -1
        idle = True  # nothing to refine before the first observation arrives
        try:
            while not self._stop.is_set():
                obs, reset = self.mailbox.take(self.idle_wait_s if idle else 0.0)
                if self._stop.is_set():
                    break
                if obs is not None:
                    if reset:
                        planner.reset(obs)
                    else:
                        planner.observe(obs)
                    obs_seq = obs.seq
                    self.surprise = float(getattr(planner, "surprise", 0.0))
                    self.latest.publish(planner.action(), obs_seq, self.steps_total)
                    idle = False
                if idle:
                    continue
                n = planner.refine(self.step_budget_ns)
                if n <= 0:
                    idle = True
                    continue
                self.steps_total += n
                if self.on_step is not None:
                    self.on_step(n)
                self.latest.publish(planner.action(), obs_seq, self.steps_total)
        except BaseException as exc:  # re-raised in the tick thread by check()
            self.error = exc
