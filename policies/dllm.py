"""`DLLMPlanner`: a masked discrete-diffusion rolling planner, the discrete twin of
`RollingPlanner`.

The rolling buffer holds H plan tokens, each a group of G = Ds + Da sub-token ids (state dims,
then action dims; `policies.discrete`), a sub-token either decided (a bin id) or masked (id K).
Where the continuous planner gives token j a noise level, this one gives it a masked share,
and the same ramp sets it: at the end of a tick token j holds at most
`allow_j = floor(l(j) * G)` masked sub-tokens, `l(j) = min(1, j / Hc)`, so near tokens are
decided and far ones masked (token 0 fully decided, tokens from Hc on fully masked).

Invariant: `pred` holds, at every position, the planner's belief: the id itself where decided,
the argmax of the last forward where masked. Plans, surprise and the emitted action read it.

observe(obs), once per tick:
  1. surprise = the share of state sub-tokens whose observed bin is more than one bin away
     from the bin token 1 predicted (its belief), before the shift.
  2. shift by one token; a fully masked token enters at the far end (its belief: the one of
     the token before it, until a forward says otherwise).
  3. re-mask: `surprise_to_level` turns the surprise into a level sigma (0 below
     `surprise_threshold`); every token j gets at least `ceil(sigma * E_j)` of its E_j
     eligible sub-tokens masked, choosing decided ones at random (the forward process of
     masked diffusion). Eligible: every sub-token but token 0's state. A goal change re-masks
     to `goal_renoise`. The context is never masked.
  4. token 0's state sub-tokens become the observed bins (always decided).
  5. schedule: the tick's gaps `masked_j - allow_j` are closed over the K steps expected
     this tick (`steps_per_tick`, or adapted to the steps granted last tick).

refine(budget_ns), one step: one forward over the whole buffer; the masked sub-tokens' beliefs
and confidences (top probability) are updated; then in every token the `ceil(gap_j / steps_left)`
most confident masked sub-tokens are unmasked (never fewer: after K steps every token is at
its ramp), and, with `unmask_confidence <= 1`, also every masked sub-token at least that
confident (Fast-dLLM's threshold). A step never re-masks a decided sub-token; only surprise
does. After K steps, K more corrector steps bring the `near_tokens` nearest tokens to fully
decided; then `refine` returns 0, as it does past `max_steps_per_tick`.

action(): token 0's action sub-tokens' beliefs, decoded to their bins' centres, clipped. A
still-masked action sub-token takes its argmax from the last forward: such a decision is
counted in `unmasked_at_emit` (`malformed()`). Zero steps still give an action: the beliefs
the previous tick left.

On CUDA one refine step (forward and unmasking) is captured once in a CUDA graph on static
buffers and replayed; nothing on the step's path reads a value back to the host.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from policies.config import PlannerConfig
from policies.discrete import SubTokenPlanner, SubTokenTransformer
from policies.normalize import Normalizer
from policies.schedule import check_rolling_buffer, ramp_levels, surprise_to_level
from runtime.protocols import Observation, PlantSpec


class DLLMPlanner(SubTokenPlanner):
    """Implements `runtime.Planner` and declares `Anytime`, `BoundedReset`, `ReportsSurprise`,
    `ReportsNoiseLevels` (the masked share per token), `Refreshes`, `PlanSource` and
    `PredictsStates` (tokens 1..H-1's state beliefs, decoded).

    Example:
        planner = DLLMPlanner(model, normalizer, spec, PlannerConfig())
        planner.reset(obs)
        for each tick: planner.observe(obs); planner.refine(budget_ns); u = planner.action()
    """

    anytime = True
    bounded_reset = True

    def __init__(
        self,
        model: SubTokenTransformer,
        normalizer: Normalizer,
        spec: PlantSpec,
        cfg: PlannerConfig,
        *,
        device: str = "cpu",
        seed: int = 0,
        use_cuda_graph: bool = True,
    ) -> None:
        mc = model.cfg
        if mc.mask == "causal":
            raise ValueError("a dllm planner needs an aligned or full mask; this model is causal")
        check_rolling_buffer(mc.horizon, cfg.clean_ticks)
        super().__init__(model, normalizer, spec, device=device, seed=seed)
        self.cfg = cfg
        H, G, K, P, Ds, dev = self.H, self.G, self.K, self.P, self.Ds, self.device
        self.ids = torch.full((1, P), K, dtype=torch.long, device=dev)  # K = MASK
        self.pred = torch.zeros(1, P, dtype=torch.long, device=dev)  # beliefs (docstring)
        self.conf = torch.zeros(1, P, device=dev)  # top probability where masked, else 1
        allow = torch.floor(ramp_levels(H, cfg.clean_ticks) * G + 1e-6).long()  # (H,)
        self._allow = allow.view(1, H).to(dev)
        extra = allow.clone()
        extra[: cfg.near_tokens] = 0
        self._extra_allow = extra.view(1, H).to(dev)
        self.target = self._allow.clone()  # (1, H) masked sub-tokens allowed at the end
        self.steps_left = torch.ones(1, 1, dtype=torch.long, device=dev)  # of this schedule
        eligible = torch.ones(1, H, G, dtype=torch.bool)
        eligible[0, 0, :Ds] = False  # token 0's state is the observation
        self._eligible = eligible.to(dev)
        self._eligible_count = eligible.sum(-1).double().to(dev)  # (1, H)
        self._shift_l = torch.zeros(1, P - G, dtype=torch.long, device=dev)
        self._shift_f = torch.zeros(1, P - G, device=dev)
        self._belief1 = torch.zeros(Ds, dtype=torch.long)  # token 1's state beliefs, host
        self._belief1_np = self._belief1.numpy()
        self._moved = np.zeros(Ds, dtype=bool)
        self._emit = torch.zeros(self.Da + 1, device=dev)  # action (normalized), masked count
        self._emit_cpu = torch.zeros(self.Da + 1)
        self._emit_np = self._emit_cpu.numpy()
        self._act_n = self._emit[: self.Da]
        self._levels = np.zeros(H, dtype=np.float32)
        # predicted states (`runtime.PredictsStates`): tokens 1..H-1's state beliefs, decoded
        self._ahead_ids = self.pred.view(H, G)[1:, :Ds]  # (H-1, Ds) a view of the beliefs
        self._ahead_flat = torch.zeros(H - 1, Ds, dtype=torch.long, device=dev)
        self._ahead_n = torch.zeros(H - 1, Ds, device=dev)
        self._init_predicted_states(H - 1)
        self._steps_this_tick = 0
        self._steps_expected = max(1, cfg.steps_per_tick)
        self._in_extra = False
        self._fresh_step = False
        self.renoise_level = 0.0  # the level the last observe re-masked to (0: none)
        self.renoise_count = 0
        self.ticks = 0
        self.unmasked_at_emit = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        if self.device.type == "cuda" and use_cuda_graph:
            self._capture_graph()

    # -- the refine step ---------------------------------------------------------------------
    def _step_eager(self) -> None:
        H, G, K, P = self.H, self.G, self.K, self.P
        with torch.no_grad():
            logits = self.model(self.ids, self.ctx, self.goal_arg)  # (1, P, K)
            conf, arg = torch.softmax(logits, dim=-1).max(dim=-1)  # (1, P) each
            masked = self.ids == K  # (1, P)
            torch.where(masked, arg, self.ids, out=self.pred)
            torch.where(masked, conf, torch.ones_like(conf), out=self.conf)
            m3 = masked.view(1, H, G)
            gap = (m3.sum(-1) - self.target).clamp_(min=0)  # (1, H)
            need = torch.div(gap + self.steps_left - 1, self.steps_left, rounding_mode="floor")
            score = torch.where(m3, self.conf.view(1, H, G), torch.full_like(conf, -1.0).view(
                1, H, G))  # decided sub-tokens rank last
            rank = score.argsort(dim=-1, descending=True).argsort(dim=-1)  # 0 = most confident
            pick = (rank < need.unsqueeze(-1)) & m3
            pick |= m3 & (self.conf.view(1, H, G) >= self.cfg.unmask_confidence)
            torch.where(pick.view(1, P), self.pred, self.ids, out=self.ids)
            self.steps_left.sub_(1).clamp_(min=1)

    def _capture_graph(self) -> None:
        """Capture `_step_eager` on the static buffers; a replay does the same work."""
        bufs = (self.ids, self.pred, self.conf, self.target, self.steps_left)
        saved = [t.clone() for t in bufs]
        stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm up kernels and the allocator outside the capture
                self._step_eager()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._step_eager()
        for buf, old in zip(bufs, saved, strict=True):
            buf.copy_(old)
        self._graph = graph

    def _step(self) -> None:
        if self._graph is not None:
            self._graph.replay()
        else:
            self._step_eager()
        self._action_dirty = True

    def _set_schedule(self, target: torch.Tensor, steps: int) -> None:
        self.target.copy_(target)
        self.steps_left.fill_(max(1, steps))

    # -- runtime.Planner ---------------------------------------------------------------------
    def reset(self, obs: Observation, budget_ns: int | None = None) -> None:
        """Start at `obs`: a fully masked plan (token 0's state observed), brought to the ramp
        by `warmup_steps` steps (with `budget_ns`: until the next would not fit, after at
        least one)."""
        if not self._stage(obs):
            raise ValueError("reset needs a finite observation state")
        self._fill_context()
        self._goal_changed()
        self._encode_state(np.asarray(obs.state, dtype=np.float64))
        self.ids.fill_(self.K)
        self.ids[0, : self.Ds].copy_(self._obs_ids)
        self.pred.zero_()
        self.pred[0, : self.Ds].copy_(self._obs_ids)
        self.conf.zero_()
        self.surprise, self.renoise_level, self.ticks = 0.0, 0.0, 0
        warmup = max(1, self.cfg.warmup_steps)
        self._set_schedule(self._allow, warmup)
        if budget_ns is None:
            for _ in range(warmup):
                self._step()
        else:
            self._bounded_warmup(warmup, budget_ns)
        self._steps_this_tick = 0
        self._steps_expected = max(1, self.cfg.steps_per_tick)
        self._in_extra = self._fresh_step = False
        self._set_schedule(self._allow, self._steps_expected)
        self._action_dirty, self._counted = True, False

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
        G, Ds, K = self.G, self.Ds, self.K
        fresh = (not obs.stale) and self._stage(obs)
        # 1. surprise: the observed bins against token 1's state beliefs, before the shift
        if fresh:
            self._encode_state(np.asarray(obs.state, dtype=np.float64))
            self._belief1.copy_(self.pred[0, G : G + Ds])
            np.subtract(self._obs_ids_np, self._belief1_np, out=self._belief1_np)
            np.greater(np.abs(self._belief1_np, out=self._belief1_np), 1, out=self._moved)
            self.surprise = float(np.count_nonzero(self._moved)) / Ds
        else:
            self.stale_observations += 1
            self.surprise = 0.0
        # 2. shift one token; a fully masked token enters at the far end
        for buf, tmp in ((self.ids, self._shift_l), (self.pred, self._shift_l),
                         (self.conf, self._shift_f)):
            tmp.copy_(buf[:, G:])
            buf[:, :-G].copy_(tmp)
        self.ids[:, -G:].fill_(K)
        self.pred[:, -G:].copy_(self.pred[:, -2 * G : -G])
        self.conf[:, -G:].zero_()
        # 3. re-mask in proportion to the surprise (or on a goal change)
        c = self.cfg
        level = surprise_to_level(
            self.surprise, c.surprise_threshold, c.surprise_full, c.renoise_max
        )
        if fresh and self._goal_changed():
            level = max(level, c.goal_renoise)
        self.renoise_level = level
        if level > 0.0:
            self.renoise_count += 1
            self._remask(level)
        # 4. token 0's state: the observation (stale: the plan's own belief, now decided)
        if fresh:
            self._push_context()
            self.ids[0, :Ds].copy_(self._obs_ids)
            self.pred[0, :Ds].copy_(self._obs_ids)
        else:
            self.ids[0, :Ds].copy_(self.pred[0, :Ds])
        # 5. this tick's schedule, over the steps the loop granted last tick
        if c.steps_per_tick == 0:
            self._steps_expected = min(max(1, self._steps_this_tick), c.max_steps_per_tick)
        self._steps_this_tick = 0
        self._in_extra = self._fresh_step = False
        self._set_schedule(self._allow, self._steps_expected)
        self._action_dirty, self._counted = True, False
        self.ticks += 1

    def _remask(self, level: float) -> None:
        """Mask decided eligible sub-tokens at random until every token j has at least
        `ceil(level * E_j)` of its E_j eligible sub-tokens masked."""
        H, G, K = self.H, self.G, self.K
        m3 = (self.ids == K).view(1, H, G)
        want = torch.ceil(self._eligible_count * level - 1e-9).long()  # (1, H)
        have = (m3 & self._eligible).sum(-1)
        need = (want - have).clamp_(min=0)
        open_ = self._eligible & ~m3  # decided and eligible
        draw = torch.rand(1, H, G, generator=self.generator, device=self.device)
        score = torch.where(open_, draw, torch.full_like(draw, -1.0))
        rank = score.argsort(dim=-1, descending=True).argsort(dim=-1)
        pick = (rank < need.unsqueeze(-1)) & open_
        self.ids.masked_fill_(pick.view(1, -1), K)
        self.conf.masked_fill_(pick.view(1, -1), 0.0)

    def refresh(self, obs: Observation) -> bool:
        """A sub-token tick (`policies.tokenrate`): the plan stays, the context's current slot
        and token 0's state sub-tokens take the fresh observation; it earns one step past the
        token's `max_steps_per_tick` (as `RollingPlanner.refresh`)."""
        if not super().refresh(obs):
            return False
        self._encode_state(np.asarray(obs.state, dtype=np.float64))
        self.ids[0, : self.Ds].copy_(self._obs_ids)
        self.pred[0, : self.Ds].copy_(self._obs_ids)
        self._fresh_step = True
        self._action_dirty = True
        return True

    def refine(self, budget_ns: int) -> int:
        c = self.cfg
        if self._steps_this_tick >= c.max_steps_per_tick and not self._fresh_step:
            return 0
        fresh, self._fresh_step = self._fresh_step, False
        if self._steps_this_tick >= self._steps_expected and not self._in_extra:
            if c.near_tokens == 0 and not fresh:
                return 0
            # ramp reached: corrector steps decide the nearest tokens fully
            self._in_extra = True
            self._set_schedule(self._extra_allow, self._steps_expected)
        elif self._in_extra and self._steps_this_tick >= 2 * self._steps_expected and not fresh:
            return 0  # the nearest tokens are decided: nothing is left to unmask this tick
        self._step()
        self._steps_this_tick += 1
        return 1

    def action(self) -> npt.NDArray[np.float64]:
        """(Da,) float64, finite, within the plant's limits; planner-owned (copy to keep)."""
        if self._action_dirty:
            Ds, G, Da = self.Ds, self.G, self.Da
            self._emit[:Da].copy_(self._decode_n(self.pred[0, Ds:G], Ds))
            masked = self.ids[0, Ds:G] == self.K
            torch.sum(masked, dim=0, keepdim=True, dtype=torch.float32, out=self._emit[Da:])
            self._emit_cpu.copy_(self._emit)  # the one read-back of the tick's decision
            out = self._out
            np.multiply(self._emit_np[:Da], self._a_std_np, out=out)
            np.add(out, self._a_mean_np, out=out)
            self._repair(out)
            if not self._counted:
                self.decisions += 1
                self.unmasked_at_emit += int(self._emit_np[Da] > 0)
                self._counted = True
            self._action_dirty = False
        return self._out

    # -- plan-ahead, traces, counters --------------------------------------------------------
    def plan_into(self, out: npt.NDArray[np.float64]) -> int:
        """`runtime.PlanSource`: the beliefs of tokens 1..H-1's actions, decoded (far tokens'
        come from mostly masked tokens: the plant runs them only without a fresher command)."""
        plan = self.pred.view(self.H, self.G)[1:, self.Ds :]  # (H-1, Da)
        return self._plan_rows(self._decode_n(plan, self.Ds), out)

    def predicted_states_into(self, out: npt.NDArray[np.floating[Any]]) -> int:
        """`runtime.PredictsStates`: tokens 1..H-1's state beliefs decoded to their bins'
        centres, in the plant's units (a masked sub-token's belief is its last argmax)."""
        torch.add(self._ahead_ids, self._dim_base[: self.Ds], out=self._ahead_flat)
        torch.index_select(self._centers_n, 0, self._ahead_flat.view(-1),
                           out=self._ahead_n.view(-1))
        return self._state_rows(self._ahead_n, out)

    def noise_levels(self) -> npt.NDArray[np.float32]:
        """(H,) float32: the masked share of each token (planner-owned, overwritten later)."""
        masked = (self.ids == self.K).view(self.H, self.G).float().mean(dim=-1)
        self._levels[...] = masked.cpu().numpy()
        return self._levels

    def steps_this_tick(self) -> int:
        return self._steps_this_tick

    def malformed(self) -> dict[str, int]:
        """`decisions`, `unmasked_at_emit` (decisions whose action had a sub-token still masked
        and took its argmax), `out_of_vocab` (0 by construction)."""
        return {**super().malformed(), "unmasked_at_emit": self.unmasked_at_emit}

    def masked_counts(self) -> npt.NDArray[np.int64]:
        """(H,) masked sub-tokens per token now (tests and diagnostics; reads the device)."""
        out: npt.NDArray[np.int64] = (
            (self.ids == self.K).view(self.H, self.G).sum(-1).cpu().numpy().astype(np.int64)
        )
        return out
