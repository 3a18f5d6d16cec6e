"""Running a learned planner at a control rate above the one its model was trained at.

A plan token is one step of the demonstrations: 10 ms for a model trained on 100 Hz
double-pendulum data. Run that planner at 500 Hz and, if every tick shifted the plan by a
token, the plan would run five times too fast, and a context of "the last two states" would
hold states 2 ms apart instead of 10 ms: out of distribution, and the learned planners fall
(docs/benchmarks.md, "Rates above the model's").

`RateAdapter` keeps the plan on the model's time base and lets the loop tick faster:

- A tick that reaches the next token boundary is a *token tick*: the inner planner's
  `observe` runs (shift, inpaint, surprise and re-noise, history push), exactly as at the
  model's own rate.
- Any other tick is a *sub-tick*: the plan does not move; the fresh observation goes in
  through the inner planner's `refresh` (the current-state slot of the context and token 0's
  inpainted state for the rolling planner; a new forward pass for the MLP; a fresh chunk for
  the per-tick sampler; nothing for the open-loop chunked baselines, which have none), and
  `refine` keeps working on the same token. So at 500 Hz the rolling planner spends five ticks
  of compute on each token and every tick's action is computed from that tick's state.

Token boundaries are counted in plant ticks, from the observations' `seq` (a plant numbers
its ticks; ticks the loop skipped advance it by more than one), not in wall time: lockstep
plants stamp observations with wall time that says nothing of simulated time. With `r` plant
ticks per token (`r` = plant rate / model rate, not necessarily an integer: 2.5 at 250 Hz for
a 100 Hz model), a boundary falls on the first tick at or after each multiple of `r`.

Rates below the model's would need several shifts per tick and are refused at load time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from runtime.protocols import (
    Anytime,
    BoundedReset,
    Closes,
    FloatArray,
    Observation,
    Planner,
    PlanSource,
    PredictsStates,
    Refreshes,
    ReportsNoiseLevels,
    ReportsSurprise,
)


class RateAdapter:
    """Wraps `inner` (trained at `model_rate_hz`) to run at `plant_rate_hz` >= that rate.

    Example:
        planner = RateAdapter(load_planner("rolling:double-pendulum", spec=spec500), 500, 100)
        # or simply load_planner(...) with a 500 Hz spec, which wraps it itself

    The wrapper declares exactly the optional capabilities (`runtime.protocols`) the inner
    planner declares, and forwards them: `anytime`, `bounded_reset` (its `reset` passes the
    budget on), `surprise` (the inner planner's, as of its last reset or observation),
    `noise_levels`, `refresh`, `close` and `predicted_states_into` (`runtime.PredictsStates`,
    below). It is a `runtime.PlanSource` whatever the inner planner: its plan is the inner
    planner's held over each token's plant ticks, and empty when the inner planner has none.
    `renoise_level` reads the inner planner's, for the push-recovery evaluation.

    Predicted states are mapped to plant ticks as the plan is, with one difference: an action
    holds over its token's ticks, a state is what the plant is in at one instant. Token t's
    predicted state goes to the plant tick its boundary falls on (the tick whose observation
    becomes that token's state, as `observe` counts them), and the ticks between boundaries
    get NaN rows (no prediction), so a lookahead error is the model's own and never the drift
    of a held state within a token.
    """

    # the inner planner's capabilities: set in __init__ when, and only when, it declares them
    anytime: bool
    bounded_reset: bool
    surprise: float
    noise_levels: Callable[[], FloatArray]
    refresh: Callable[[Observation], bool]
    close: Callable[[], None]
    predicted_states_into: Callable[[FloatArray], int]
    predicted_ticks: int

    def __init__(self, inner: Planner, plant_rate_hz: float, model_rate_hz: float) -> None:
        if not (model_rate_hz > 0 and plant_rate_hz > 0):
            raise ValueError(f"rates must be > 0: {plant_rate_hz=}, {model_rate_hz=}")
        ratio = plant_rate_hz / model_rate_hz
        if ratio < 1.0 - 1e-9:
            raise ValueError(
                f"this model was trained at {model_rate_hz:g} Hz and cannot run at "
                f"{plant_rate_hz:g} Hz: run it at {model_rate_hz:g} Hz or faster"
            )
        self.inner = inner
        self.ticks_per_token = ratio
        self.plant_rate_hz = float(plant_rate_hz)
        self.model_rate_hz = float(model_rate_hz)
        self._bounded = inner if isinstance(inner, BoundedReset) else None
        self._surprising = inner if isinstance(inner, ReportsSurprise) else None
        self._refresh = inner.refresh if isinstance(inner, Refreshes) else None
        self._plan_into = inner.plan_into if isinstance(inner, PlanSource) else None
        # Instance attributes, not properties: a run's capability checks (`isinstance` against
        # the runtime-checkable protocols) then see what the inner planner declares.
        if isinstance(inner, Anytime):
            self.anytime = inner.anytime
        if self._bounded is not None:
            self.bounded_reset = self._bounded.bounded_reset
        if self._surprising is not None:
            self.surprise = self._surprising.surprise
        if isinstance(inner, ReportsNoiseLevels):
            self.noise_levels = inner.noise_levels
        if self._refresh is not None:
            self.refresh = self._refresh
        if isinstance(inner, Closes):
            self.close = inner.close
        self._predicts = inner if isinstance(inner, PredictsStates) else None
        if self._predicts is not None:
            self.predicted_states_into = self._predicted_states_into
            # the farthest token's boundary lies at most that many plant ticks ahead
            self.predicted_ticks = math.ceil(self._predicts.predicted_ticks * ratio - 1e-6)
        self._tokens = np.zeros((0, 0))  # the current action, then the inner plan by token
        self._row_pos = np.zeros(0)  # `_tokens_ahead`'s scratch: 1, 2, ... per row
        self._row_f = np.zeros(0)
        self._row_t = np.zeros(0, dtype=np.intp)
        self._token_ids = np.zeros(0, dtype=np.intp)  # 1, 2, ... per token
        self._state_tokens = np.zeros((0, 0))  # its predicted states, one row per token
        self._phase = 0.0  # plant ticks since the last token boundary
        self._last_seq: int | None = None
        self.token_ticks = 0  # ticks that moved the plan a token
        self.sub_ticks = 0  # ticks that only refreshed it

    @property
    def renoise_level(self) -> float:
        """The inner planner's re-noising level at its last observation (AttributeError when
        it has none, so `getattr(planner, "renoise_level", default)` works on the wrapper)."""
        inner: Any = self.inner
        return float(inner.renoise_level)

    def reset(self, obs: Observation, budget_ns: int | None = None) -> None:
        bounded = self._bounded
        if budget_ns is None or bounded is None:
            self.inner.reset(obs)
        else:  # only asked when the inner planner declares `bounded_reset`
            bounded.reset(obs, budget_ns=budget_ns)
        self._phase = 0.0
        self._last_seq = obs.seq
        if self._surprising is not None:
            self.surprise = self._surprising.surprise

    def observe(self, obs: Observation) -> None:
        last = self._last_seq
        ticks = obs.seq - last if last is not None and obs.seq > last else 1
        self._last_seq = obs.seq
        self._phase += ticks
        # a boundary on the first tick at or after it (a half-tick tolerance absorbs the
        # rounding of a non-integer ratio)
        if self._phase >= self.ticks_per_token - 1e-6:
            # skipped ticks may have crossed several boundaries: keep the remainder in [0, r)
            self._phase -= self.ticks_per_token * math.floor(
                (self._phase + 1e-6) / self.ticks_per_token
            )
            self.token_ticks += 1
            self.inner.observe(obs)
        else:
            self.sub_ticks += 1
            if self._refresh is not None:
                self._refresh(obs)
        if self._surprising is not None:
            self.surprise = self._surprising.surprise

    def refine(self, budget_ns: int) -> int:
        return self.inner.refine(budget_ns)

    def malformed(self) -> dict[str, int]:
        """The inner planner's counts of malformed outputs (the discrete planners'), if any."""
        counts = getattr(self.inner, "malformed", None)
        return dict(counts()) if callable(counts) else {}

    @property
    def steps_per_decision(self) -> int:
        """Refine steps one decision of the inner planner takes (ar: one per action dim)."""
        return int(getattr(self.inner, "steps_per_decision", 1))

    def action(self) -> npt.NDArray[Any]:
        return self.inner.action()

    def plan_into(self, out: npt.NDArray[np.float64]) -> int:
        """`runtime.PlanSource` at the plant's rate: the inner planner's plan (one row per
        token) held over each token's plant ticks. Row `i` is for plant tick `i + 1` after the
        current one, which lies `phase + i + 1` ticks into the current token; while that is
        still the current token, its row is the current action. Vectorized over the rows (a
        1 kHz plant reads 100-odd rows a tick), into buffers kept from call to call."""
        if self._plan_into is None or out.shape[0] == 0:
            return 0
        m, da = out.shape
        max_tokens = math.ceil((m + self._phase) / self.ticks_per_token) + 1
        if self._tokens.shape[0] < max_tokens + 1 or self._tokens.shape[1] != da:
            self._tokens = np.zeros((max_tokens + 1, da))  # row 0: the current action
        table = self._tokens
        n_tok = self._plan_into(table[1:])
        if n_tok <= 0:
            return 0
        table[0] = self.inner.action()
        t = self._tokens_ahead(m, tick_bias=0.0, token_bias=1e-6)
        n = int(np.searchsorted(t, n_tok, side="right"))  # the rows within the plan
        np.take(table, t[:n], axis=0, out=out[:n])
        return n

    def _tokens_ahead(self, m: int, *, tick_bias: float, token_bias: float) -> npt.NDArray[np.intp]:
        """(m,) for each row `i` (plant tick `i + 1` from now), the token boundaries crossed by
        then: floor((phase + i + 1 + tick_bias) / r + token_bias), nondecreasing and rising by
        at most 1 a row (r >= 1). A view of a buffer kept from call to call."""
        if self._row_pos.shape[0] < m:
            self._row_pos = np.arange(1, m + 1, dtype=np.float64)
            self._row_f = np.zeros(m)
            self._row_t = np.zeros(m, dtype=np.intp)
        f, t = self._row_f[:m], self._row_t[:m]
        np.add(self._row_pos[:m], self._phase + tick_bias, out=f)
        f /= self.ticks_per_token
        f += token_bias
        np.floor(f, out=f)
        np.copyto(t, f, casting="unsafe")
        return t

    def _predicted_states_into(self, out: FloatArray) -> int:
        """`runtime.PredictsStates` at the plant's rate (the class docstring): row `i`, for
        plant tick `i + 1` after the current one, holds token t's predicted state when that
        tick is token t's boundary, and NaN otherwise; the rows end at the last boundary."""
        inner = self._predicts
        if inner is None or out.shape[0] == 0:
            return 0
        if self._state_tokens.shape != (inner.predicted_ticks, out.shape[1]):
            self._state_tokens = np.zeros((inner.predicted_ticks, out.shape[1]))
        n_tok = inner.predicted_states_into(self._state_tokens)
        if n_tok <= 0:
            return 0
        # the boundaries `observe` will have crossed by each row's tick (its tolerance too);
        # token j's boundary is the first row that has crossed j
        t = self._tokens_ahead(out.shape[0], tick_bias=1e-6, token_bias=0.0)
        k = int(np.searchsorted(t, n_tok, side="right"))  # rows up to the plan's last token
        last = int(t[k - 1]) if k else 0
        if last <= 0:
            return 0
        if self._token_ids.shape[0] < last:
            self._token_ids = np.arange(1, last + 1, dtype=np.intp)
        rows = np.searchsorted(t[:k], self._token_ids[:last])  # each token's boundary row
        n = int(rows[-1]) + 1
        out[:n] = np.nan  # the ticks between boundaries: no prediction
        out[rows] = self._state_tokens[:last]
        return n
