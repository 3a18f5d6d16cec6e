"""`RollingPlanner`: the anytime diffusion planner over a rolling buffer of future tokens.

The rolling buffer (docs/architecture.md, "The rolling buffer"), step by step. The buffer
holds H tokens `z_j = [s_{t+j}, a_{t+j}]` (normalized), token j at its own noise level `tau_j`.

observe(obs), once per tick:
  1. surprise = RMS(observed state - the plan's clean estimate of that state), normalized units.
     The estimate is the last denoiser output for token 1, which becomes token 0 below.
  2. shift: drop token 0, append a pure-noise token (level 1); levels shift with their tokens,
     so in steady state token j now sits at l(j + 1).
  3. pivot: the plan is re-noised (and, under `shift`, corrected) by `sigma(surprise)` (0 below
     a threshold, rising with surprise, capped below 1 so what is still useful survives) as the
     pivot rule says (below), and every token to at least `goal_renoise` on a goal change.
     Levels only ever go up here, and more surprise never means lower levels.
  4. inpaint: the observed state is written into token 0 (and the context ring).
  5. schedule: each token must come down to l(j) = min(1, j / Hc) this tick; its step size is
     its gap divided by the steps expected this tick (K).

refine(budget_ns), as often as the loop's budget allows: one denoiser call on the whole buffer,
then each token moves from tau to max(l(j), tau - delta_j) (`schedule.refine_step_`). After K
steps the ramp is reached; extra steps are corrector steps on the `near_tokens` nearest tokens,
taking them toward 0. Zero steps still leave a valid action (the previous plan's next action).

action(): the denoiser's clean estimate of token 0's action, denormalized and clipped.
predicted_states_into(): tokens 1..H-1's clean state estimates, denormalized: what the plan
expects the plant to do (a sidecar records them for `rtdiff report`'s lookahead error).

Pivot rules (`PlannerConfig.pivot`). A surprise proves one thing: the plan's estimate of the
state now (token 0) was wrong by `e = observed - predicted` (normalized units). What it says
about token j further ahead depends on the task; re-noising the whole plan (`uniform`) spends
the surprise on tokens it says little about, and was measured to recover from pushes no faster
than keeping the plan or restarting it from noise. The rules, sigma = sigma(surprise):
- `uniform` (the default): every token is raised to at least sigma. The plan as it was before
  pivot rules existed, bit for bit.
- `decay`: token j is raised to at least `sigma * pivot_decay**j`. The near tokens, whose
  predicted states the surprise proves wrong and whose actions are executed next, get the
  most; the far ones, often still right for a stabilizing or goal-reaching task (the upright
  pendulum, the side of the obstacle chosen on bimodal), keep what they hold. Where the
  ramp's own level `l(j + 1)` is already above the floor, nothing changes: with the default
  0.7 and sigma 0.9 the double-pendulum's plan (H = 8, Hc = 7) is touched in its first three
  tokens only.
- `shift`: correct rather than destroy. The plan is translated to pass through what happened:
  `pivot_carry**j * e` is added to token j's predicted state (in the clean estimate, and in the
  noisy token as `(1 - tau_j)` of it, so the token stays on its flow path at its level), and
  then the tokens are re-noised lightly, to at least `pivot_light * sigma * pivot_decay**j`,
  for the denoiser to make the actions agree with the moved states. After a push the old
  plan's course is kept, offset by the push and fading back to it with lookahead, which is
  what a stabilizing controller's trajectory does; the translation carries no noise, so
  nothing the plan knew is lost. It applies only to a fresh, finite surprise above the
  threshold (never on a stale tick), and `pivot_light = 0` translates only.
A third rule, "re-noise from the first token whose predicted state disagrees", needs more than
`observe` has: it observes token 0's state alone, and token 0 always disagrees when there is a
surprise, so without a model call it is `uniform`. On a goal change every rule raises every
token to at least `goal_renoise` (the whole plan is for the old goal). `renoise_level` is the
level sigma (or `goal_renoise`) the rule applied, 0 when it did nothing, whatever the rule.

Every tensor is allocated in `__init__`; observe/refine/action only write into them (the tests
check buffer identity). The eager CPU forward of the transformer still allocates its own
activations inside torch; on CUDA the whole refine step (forward + schedule update) is captured
once in a CUDA graph and replayed, so the per-tick path allocates nothing there.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from policies.base import TorchPlannerBase, check_dims
from policies.config import PlannerConfig
from policies.model import Denoiser
from policies.normalize import Normalizer
from policies.schedule import (
    check_rolling_buffer,
    ramp_levels,
    refine_step_,
    renoise_,
    surprise_to_level,
)
from runtime.protocols import Observation, PlantSpec


class RollingPlanner(TorchPlannerBase):
    """Implements `runtime.Planner` and declares the optional capabilities (`runtime.protocols`)
    `Anytime`, `BoundedReset`, `ReportsSurprise`, `ReportsNoiseLevels`, `Refreshes`,
    `PlanSource` and `PredictsStates`.

    Example:
        planner = RollingPlanner(model, normalizer, spec, PlannerConfig())
        planner.reset(obs)
        for each tick: planner.observe(obs); planner.refine(budget_ns); u = planner.action()
    """

    # Every step leaves a valid plan and action: the loop may send the command after the first
    # step of a tick and refine on for later ticks (`LoopConfig.emit_after_steps`).
    anytime = True
    # `reset` takes a time budget (`budget_ns`): the loop passes one at realtime episode starts
    bounded_reset = True

    def __init__(
        self,
        model: Denoiser,
        normalizer: Normalizer,
        spec: PlantSpec,
        cfg: PlannerConfig,
        *,
        device: str = "cpu",
        seed: int = 0,
        use_cuda_graph: bool = True,
    ) -> None:
        mc = model.cfg
        check_dims(spec, (mc.state_dim, mc.action_dim, mc.goal_dim), "this model")
        super().__init__(normalizer, spec, n_past=mc.n_past, device=device, seed=seed)
        check_rolling_buffer(mc.horizon, cfg.clean_ticks)
        self.cfg = cfg
        self.model = model.to(self.device).eval()
        H, Dz, Ds, dev = mc.horizon, mc.token_dim, mc.state_dim, self.device
        self.H = H

        def z(*shape: int) -> torch.Tensor:
            return torch.zeros(*shape, device=dev)

        self.x = z(1, H, Dz)  # (1, H, Dz) noisy plan
        self.z_hat = z(1, H, Dz)  # (1, H, Dz) latest clean estimate
        self.tau = z(1, H)  # (1, H) per-token level
        self.target = z(1, H)  # (1, H) level to reach by the end of this tick
        self.delta = z(1, H)  # (1, H) per-step decrement
        self._tau_new, self._ratio = z(1, H), z(1, H)
        self._a, self._b, self._c = z(1, H), z(1, H), z(1, H)
        self._scratch, self._noise, self._shift = z(1, H, Dz), z(1, H, Dz), z(1, H - 1, Dz)
        self._tau_shift = z(1, H - 1)
        self._diff = z(Ds)
        # pivot rules: per-token factors decay**j and carry**j, the observed error, weights
        self._pivot = cfg.pivot
        j = torch.arange(H, dtype=torch.float32)
        self._decay_pow = torch.pow(cfg.pivot_decay, j).to(dev).unsqueeze(0)  # (1, H)
        self._carry_pow = torch.pow(cfg.pivot_carry, j).to(dev).unsqueeze(0)  # (1, H)
        self._err = z(Ds)
        self._w = z(1, H)
        self._x_states, self._z_states = self.x[0, :, :Ds], self.z_hat[0, :, :Ds]  # (H, Ds)
        self._w_col, self._carry_col = self._w[0].unsqueeze(-1), self._carry_pow[0].unsqueeze(-1)
        self._err_row = self._err.unsqueeze(0)  # (1, Ds)
        self._sq = torch.zeros((), device=dev)
        ramp = ramp_levels(H, cfg.clean_ticks).to(dev)
        self._ramp = ramp.unsqueeze(0)  # (1, H) l(j)
        extra = ramp.clone()
        extra[: cfg.near_tokens] = 0.0
        self._extra_target = extra.unsqueeze(0)  # (1, H) corrector targets
        self._delta_floor = 1.0 / cfg.clean_ticks  # divided by K per tick
        # Views made once, so the per-tick path creates no tensor objects it could avoid.
        self._x_head, self._x_tail, self._x_last = self.x[:, :-1], self.x[:, 1:], self.x[:, -1]
        self._z_head, self._z_tail, self._z_last = (
            self.z_hat[:, :-1],
            self.z_hat[:, 1:],
            self.z_hat[:, -1],
        )
        self._t_head, self._t_tail, self._t_last = (
            self.tau[:, :-1],
            self.tau[:, 1:],
            self.tau[:, -1],
        )
        self._x0_state, self._z0_state = self.x[0, 0, :Ds], self.z_hat[0, 0, :Ds]
        self._z1_state = self.z_hat[0, 1, :Ds]
        self._act_n = self.z_hat[0, 0, Ds:]  # action() reads token 0's clean action estimate
        # predicted states (`runtime.PredictsStates`): tokens 1..H-1's clean state estimates
        self._z_ahead_states = self.z_hat[0, 1:, :Ds]  # (H-1, Ds)
        self._z_ahead_near = self.z_hat[0, 1:-1, :Ds]  # (H-2, Ds): all but the far token
        self._init_predicted_states(H - 1)
        self._far_estimated = True  # the far token has a clean estimate (a step since the shift)
        self._tau_np = np.zeros(H, dtype=np.float32)
        self._steps_this_tick = 0
        self._steps_expected = max(1, cfg.steps_per_tick)
        self._in_extra = False
        self._fresh_step = False  # a refreshed state earns one step past the cap
        self.renoise_level = 0.0  # level the last observe re-noised to (0: none)
        self.renoise_count = 0
        self.ticks = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        if self.device.type == "cuda" and use_cuda_graph:
            self._capture_graph()

    # -- the refine step ---------------------------------------------------------------------
    def _step_eager(self) -> None:
        with torch.no_grad():
            self.z_hat.copy_(self.model(self.x, self.tau, self.ctx, self.goal_arg))
            self._z0_state.copy_(self.obs_n)  # token 0's state is known: the observation
            refine_step_(
                self.x,
                self.z_hat,
                self.tau,
                self.target,
                self.delta,
                tau_new=self._tau_new,
                ratio=self._ratio,
                scratch=self._scratch,
            )
            self._x0_state.copy_(self.obs_n)

    def _capture_graph(self) -> None:
        """Capture `_step_eager` on static buffers; replays do the same work with no allocs."""
        saved = [t.clone() for t in (self.x, self.z_hat, self.tau, self.target, self.delta)]
        stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm up kernels and the allocator outside the capture
                self._step_eager()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step_eager()
        for buf, old in zip(
            (self.x, self.z_hat, self.tau, self.target, self.delta), saved, strict=True
        ):
            buf.copy_(old)
        self._graph = graph

    def _step(self) -> None:
        if self._graph is not None:
            self._graph.replay()
        else:
            self._step_eager()
        self._action_dirty = True
        self._far_estimated = True

    # -- schedule ----------------------------------------------------------------------------
    def _set_schedule(self, target: torch.Tensor, steps: int) -> None:
        """delta_j = max(gap_j, 1/Hc) / steps with gap_j = max(0, tau_j - target_j)."""
        self.target.copy_(target)
        torch.sub(self.tau, self.target, out=self.delta)
        self.delta.clamp_(min=self._delta_floor).div_(steps)

    # -- runtime.Planner ---------------------------------------------------------------------
    def reset(self, obs: Observation, budget_ns: int | None = None) -> None:
        """Start a new plan at `obs`: noise, brought down to the ramp by `warmup_steps` steps.

        `budget_ns` (a realtime episode start, where the plant is already moving): stop the
        warm-up once the next step would not fit, after at least one step (so the action is
        the model's estimate from a once-denoised plan, never raw noise). The first
        tick's schedule takes every token the rest of the way to its ramp level (its step sizes
        are computed from where the levels are), so a shorter warm-up costs plan quality on
        the first ticks only, and no missed command.
        """
        if not self._stage(obs):
            raise ValueError("reset needs a finite observation state")
        self._fill_context()
        self._goal_changed()
        self.x.normal_(generator=self.generator)
        self.tau.fill_(1.0)
        self.z_hat.zero_()
        self._z0_state.copy_(self.obs_n)
        self._x0_state.copy_(self.obs_n)
        self.surprise, self.renoise_level, self.ticks = 0.0, 0.0, 0
        # Warm start: bring the whole buffer from noise down to the ramp before the first tick.
        warmup = max(1, self.cfg.warmup_steps)
        self._set_schedule(self._ramp, warmup)
        if budget_ns is None:
            for _ in range(warmup):
                self._step()
        else:
            self._bounded_warmup(warmup, budget_ns)
        self._steps_this_tick = 0
        self._steps_expected = max(1, self.cfg.steps_per_tick)
        self._in_extra = False
        self._fresh_step = False
        self._set_schedule(self._ramp, self._steps_expected)

    def _bounded_warmup(self, warmup: int, budget_ns: int) -> None:
        cuda = self.device.type == "cuda"
        start = time.perf_counter_ns()
        slowest = 0
        for i in range(warmup):
            t0 = time.perf_counter_ns()
            if i >= 1 and t0 + slowest > start + budget_ns:
                return
            self._step()
            if cuda:
                torch.cuda.synchronize(self.device)  # time the step, not its launch
            slowest = max(slowest, time.perf_counter_ns() - t0)

    def observe(self, obs: Observation) -> None:
        fresh = (not obs.stale) and self._stage(obs)
        # 1. surprise against the plan's prediction of this state (token 1 before the shift).
        if fresh:
            torch.sub(self.obs_n, self._z1_state, out=self._diff)
            if self._pivot == "shift":
                self._err.copy_(self._diff)  # e, before it is squared in place
            torch.sum(self._diff.square_(), dim=0, out=self._sq)
            s = math.sqrt(float(self._sq) / self.Ds)
            self.surprise = s if math.isfinite(s) else float("inf")
        else:
            self.stale_observations += 1
            self.surprise = 0.0
        # 2. shift the plan one step; a fresh pure-noise token enters at the far end.
        self._shift.copy_(self._x_tail)
        self._x_head.copy_(self._shift)
        self._x_last.normal_(generator=self.generator)
        self._shift.copy_(self._z_tail)
        self._z_head.copy_(self._shift)
        self._z_last.zero_()
        self._far_estimated = False  # until a step estimates the token that just entered
        self._tau_shift.copy_(self._t_tail)
        self._t_head.copy_(self._tau_shift)
        self._t_last.fill_(1.0)
        # 3. pivot: re-noise in proportion to the surprise as the rule says (or on a goal change).
        c = self.cfg
        level = surprise_to_level(
            self.surprise, c.surprise_threshold, c.surprise_full, c.renoise_max
        )
        if self._pivot == "uniform":
            if fresh and self._goal_changed():
                level = max(level, c.goal_renoise)
            self.renoise_level = level
            if level > 0.0:
                self.renoise_count += 1
                self._tau_new.fill_(level)
                self._renoise()
        else:
            goal = c.goal_renoise if fresh and self._goal_changed() else 0.0
            self._pivot_by_token(level, goal, fresh)
        # 4. inpaint the observed state into token 0; update the context.
        if fresh:
            self._push_context()
        else:
            self.obs_n.copy_(self._z0_state)  # no reading: keep the plan's own belief
        self._x0_state.copy_(self.obs_n)
        self._z0_state.copy_(self.obs_n)
        # 5. this tick's schedule, split over the steps the loop granted last tick.
        if c.steps_per_tick == 0:
            self._steps_expected = min(max(1, self._steps_this_tick), c.max_steps_per_tick)
        self._steps_this_tick = 0
        self._in_extra = self._fresh_step = False
        self._set_schedule(self._ramp, self._steps_expected)
        self._action_dirty = True
        self.ticks += 1

    def _renoise(self) -> None:
        """Raise every token to at least `_tau_new` (overwritten with the level reached)."""
        self._noise.normal_(generator=self.generator)
        renoise_(self.x, self.tau, self._tau_new, self._noise, a=self._a, b=self._b, c=self._c)

    def _pivot_by_token(self, level: float, goal: float, fresh: bool) -> None:
        """The `decay` and `shift` rules (module docstring), after the shift: surprise level
        `level`, goal-change floor `goal` (0: none)."""
        scale = level
        if self._pivot == "shift" and level > 0.0:
            if fresh and math.isfinite(self.surprise):
                # token j's state moves by carry**j e: the clean estimate all of it, the noisy
                # token (1 - tau_j) of it (its clean part)
                self._w.copy_(self.tau).neg_().add_(1.0).mul_(self._carry_pow)
                self._x_states.addcmul_(self._w_col, self._err_row)
                self._z_states.addcmul_(self._carry_col, self._err_row)
            scale = level * self.cfg.pivot_light
        self.renoise_level = max(level, goal)
        if self.renoise_level > 0.0:
            self.renoise_count += 1  # ticks the plan pivoted, as under `uniform`
        if scale <= 0.0 and goal <= 0.0:
            return
        self._tau_new.copy_(self._decay_pow).mul_(scale)
        if goal > 0.0:
            self._tau_new.clamp_(min=goal)
        self._renoise()

    def refresh(self, obs: Observation) -> bool:
        """A sub-token tick: the plan stays where it is, token 0's state becomes the fresh
        observation (as in `observe`'s inpainting), so the next refine step's clean estimate of
        token 0's action is computed from it. The tick's steps count towards the token's
        `max_steps_per_tick`, but a fresh state always earns one step past it: without it, a
        token whose steps an earlier tick used up (the loop's early emit refines on after the
        command) would send an action computed from an older state."""
        if not super().refresh(obs):
            return False
        self._x0_state.copy_(self.obs_n)
        self._z0_state.copy_(self.obs_n)
        self._fresh_step = True
        return True

    def refine(self, budget_ns: int) -> int:
        if self._steps_this_tick >= self.cfg.max_steps_per_tick and not self._fresh_step:
            return 0
        self._fresh_step = False
        if self._steps_this_tick >= self._steps_expected and not self._in_extra:
            if self.cfg.near_tokens == 0:
                return 0
            # Ramp reached: spend extra steps on the nearest tokens (corrector steps).
            self._in_extra = True
            self._set_schedule(self._extra_target, self._steps_expected)
        self._step()
        self._steps_this_tick += 1
        return 1

    # -- plan-ahead --------------------------------------------------------------------------
    def plan_into(self, out: npt.NDArray[np.float64]) -> int:
        """`runtime.PlanSource`: the clean estimates of tokens 1..H-1's actions, one row per
        model tick after the current one (the far tokens' estimates come from noisier
        tokens: a plant executes them only when no fresher command arrives)."""
        return self._plan_rows(self.z_hat[0, 1:, self.Ds :], out)

    def predicted_states_into(self, out: npt.NDArray[np.floating[Any]]) -> int:
        """`runtime.PredictsStates`: the clean estimates of tokens 1..H-1's states, one row per
        model tick after the current one, in the plant's units; the token that entered at this
        tick's shift counts only once a refine step has estimated it (its estimate is zero
        until then, a placeholder, not a prediction)."""
        states = self._z_ahead_states if self._far_estimated else self._z_ahead_near
        return self._state_rows(states, out)

    # -- tracing -----------------------------------------------------------------------------
    def noise_levels(self) -> npt.NDArray[np.float32]:
        """(H,) float32 copy of the per-token levels (planner-owned array, overwritten later)."""
        self._tau_np[...] = self.tau[0].detach().cpu().numpy()
        return self._tau_np

    def steps_this_tick(self) -> int:
        return self._steps_this_tick

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        """The planner's state tensors, for tests that check nothing is reallocated."""
        return {
            "x": self.x,
            "z_hat": self.z_hat,
            "tau": self.tau,
            "target": self.target,
            "delta": self.delta,
            "ctx": self.ctx,
            "obs_n": self.obs_n,
            "noise": self._noise,
        }
