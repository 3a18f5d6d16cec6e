"""`ARPlanner`: greedy autoregressive decoding over the same sub-tokens, one per forward.

The baseline of "DLLM Agent: See Farther, Run Faster": the same backbone
(`policies.discrete.SubTokenTransformer`, causal mask), trained on the same data, decoding the
plan left to right. The prefix is the context and token 0's state sub-tokens (the observed
state's bins); the plan positions after it are decoded greedily (argmax), one per `refine`
step, with the key/value cache:

  step 1: `prefill` (the context and token 0's state at once) -> a_t's first sub-token;
  steps 2..Da: the rest of a_t, one sub-token each (`steps_per_decision` = Da);
  then, while the loop grants steps: s_{t+1}, a_{t+1}, s_{t+2}, ... up to the horizon
  (`steps_per_plan` = P - Ds steps decode all of it). That is its plan (`plan_into`, the hit
  rate of `rtdiff bench paradigms`): the tokens whose action is decoded.

action() emits what is decoded of a_t. Under a deadline (`action()` before all Da action
sub-tokens are decoded) each missing sub-token comes from the previous tick's plan (its
a_{t+1}, when it got that far), counted in `filled_from_plan`, else from the fallback, holding
the last emitted action, counted in `filled_fallback` (decisions, not sub-tokens). A new
observation restarts the decoding: the prefix changed, so the cache is rebuilt.

`surprise` (for traces; nothing is re-planned from it: every tick decodes afresh) is the
share of state sub-tokens more than one bin away from the previous plan's s_{t+1}, 0 when
that plan did not reach it.

On CUDA the prefill and the one-sub-token step are each captured once in a CUDA graph; the
step's position is a device tensor, so one graph serves every position and nothing on the
path reads back to the host.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from policies.config import PlannerConfig
from policies.discrete import SubTokenPlanner, SubTokenTransformer
from policies.normalize import Normalizer
from runtime.protocols import Observation, PlantSpec


class ARPlanner(SubTokenPlanner):
    """Implements `runtime.Planner`, `ReportsSurprise` and `PlanSource`; not `Anytime` (an
    action is complete only after `steps_per_decision` steps).

    Example:
        planner = ARPlanner(model, normalizer, spec, PlannerConfig())
        planner.reset(obs)
        for each tick: planner.observe(obs); planner.refine(budget_ns) (Da times or more);
                       u = planner.action()
    """

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
        if model.cfg.mask != "causal":
            raise ValueError(
                f"an ar planner needs a causal model; this one has mask {model.cfg.mask!r}"
            )
        super().__init__(model, normalizer, spec, device=device, seed=seed)
        self.cfg = cfg
        self.steps_per_decision = self.Da  # refine steps one complete action takes
        self.steps_per_plan = self.P - self.Ds  # refine steps the whole plan takes
        P, dev = self.P, self.device
        self.seq = torch.zeros(1, P, dtype=torch.long, device=dev)  # decoded plan ids
        self.pos = torch.zeros(1, dtype=torch.long, device=dev)  # the last decoded position
        self.cache = model.new_cache(1, dev)
        self.decoded = self.Ds  # plan positions known (token 0's state, then decoded ones)
        self._prefilled = False
        # the previous tick's plan, on the host: fills an action cut short by a deadline
        self._prev = torch.zeros(P, dtype=torch.long)
        self._prev_np = self._prev.numpy()
        self._prev_decoded = 0
        self._act_ids = torch.zeros(self.Da, dtype=torch.long)
        self._act_ids_np = self._act_ids.numpy()
        self._centers = self.tokenizer.centers  # (G, K) raw units, float64
        self._act_dims = np.arange(self.Ds, self.G)
        self._moved = np.zeros(self.Ds, dtype=bool)
        self.ticks = 0
        self.filled_from_plan = 0
        self.filled_fallback = 0
        self._graphs: tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph] | None = None
        if self.device.type == "cuda" and use_cuda_graph:
            self._capture_graphs()

    # -- the two refine steps ----------------------------------------------------------------
    def _prefill_eager(self) -> None:
        Ds = self.Ds
        with torch.no_grad():
            logits = self.model.prefill(self.seq[:, :Ds], self.ctx, self.goal_arg, self.cache)
            self.seq[:, Ds].copy_(logits.argmax(dim=-1))
            self.pos.fill_(Ds)

    def _decode_eager(self) -> None:
        with torch.no_grad():
            logits = self.model.step(self.pos, self.seq.index_select(1, self.pos), self.cache)
            self.pos.add_(1)
            self.seq.index_copy_(1, self.pos, logits.argmax(dim=-1, keepdim=True))

    def _capture_graphs(self) -> None:
        """Capture the prefill and the one-sub-token step on the static buffers."""
        bufs = (self.seq, self.pos, self.cache.k, self.cache.v)
        saved = [t.clone() for t in bufs]
        stream = torch.cuda.Stream(device=self.device)  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(3):  # warm up kernels and the allocator outside the capture
                self._prefill_eager()
                self._decode_eager()
        torch.cuda.current_stream(self.device).wait_stream(stream)
        prefill, decode = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
        with torch.cuda.graph(prefill):
            self._prefill_eager()
        with torch.cuda.graph(decode, pool=prefill.pool()):
            self._decode_eager()
        for buf, old in zip(bufs, saved, strict=True):
            buf.copy_(old)
        self._graphs = (prefill, decode)

    # -- runtime.Planner ---------------------------------------------------------------------
    def reset(self, obs: Observation) -> None:
        if not self._stage(obs):
            raise ValueError("reset needs a finite observation state")
        self._fill_context()
        self._goal_changed()
        self._encode_state(np.asarray(obs.state, dtype=np.float64))
        self._prev_decoded = 0
        self._start(self._obs_ids)
        self.surprise, self.ticks = 0.0, 0

    def _start(self, state_ids: torch.Tensor) -> None:
        """A new prefix: token 0's state is `state_ids`; nothing after it is decoded."""
        self.seq[0, : self.Ds].copy_(state_ids)
        self.decoded = self.Ds
        self._prefilled = False
        self._action_dirty, self._counted = True, False

    def observe(self, obs: Observation) -> None:
        G, Ds = self.G, self.Ds
        self._prev.copy_(self.seq[0])  # this tick's plan becomes the previous one
        self._prev_decoded = self.decoded
        has_next_state = self._prev_decoded >= G + Ds
        fresh = (not obs.stale) and self._stage(obs)
        if fresh:
            self._encode_state(np.asarray(obs.state, dtype=np.float64))
            self._push_context()
            self._goal_changed()
            if has_next_state:
                diff = np.abs(self._obs_ids_np - self._prev_np[G : G + Ds])
                np.greater(diff, 1, out=self._moved)
                self.surprise = float(np.count_nonzero(self._moved)) / Ds
            else:
                self.surprise = 0.0
            self._start(self._obs_ids)
        else:
            self.stale_observations += 1
            self.surprise = 0.0
            # no reading: the previous plan's s_{t+1} when it has one, else the last state
            self._start(self._prev[G : G + Ds].to(self.device) if has_next_state
                        else self.seq[0, :Ds].clone())
        self.ticks += 1

    def refine(self, budget_ns: int) -> int:
        """Decode the next sub-token (the prefill first); 0 once the whole plan is decoded."""
        if self.decoded >= self.P:
            return 0
        graphs = self._graphs
        if not self._prefilled:
            if graphs is not None:
                graphs[0].replay()
            else:
                self._prefill_eager()
            self._prefilled = True
        elif graphs is not None:
            graphs[1].replay()
        else:
            self._decode_eager()
        self.decoded += 1
        self._action_dirty = True
        return 1

    def action(self) -> npt.NDArray[np.float64]:
        """(Da,) float64, finite, within the plant's limits; planner-owned (copy to keep)."""
        if not self._action_dirty:
            return self._out
        Ds, G, Da = self.Ds, self.G, self.Da
        have = max(0, min(Da, self.decoded - Ds))  # action sub-tokens decoded this tick
        if have:
            self._act_ids.copy_(self.seq[0, Ds:G])
        out = self._out
        from_plan = fallback = False
        for i in range(Da):
            if i < have:
                out[i] = self._centers[Ds + i, self._act_ids_np[i]]
            elif self._prev_decoded > G + Ds + i:  # the previous plan's a_{t+1}
                out[i] = self._centers[Ds + i, self._prev_np[G + Ds + i]]
                from_plan = True
            else:
                out[i] = self._last_good[i]
                fallback = True
        self._repair(out)
        if not self._counted:
            self.decisions += 1
            self.filled_from_plan += int(from_plan)
            self.filled_fallback += int(fallback)
            self._counted = True
        self._action_dirty = False
        return out

    # -- plan-ahead, counters ----------------------------------------------------------------
    def plan_into(self, out: npt.NDArray[np.float64]) -> int:
        """`runtime.PlanSource`: the actions of tokens 1.. decoded this tick (0 rows when the
        decoding has not reached a_{t+1})."""
        rows = self.decoded // self.G - 1  # tokens after token 0 with every action sub-token
        if rows <= 0:
            return 0
        ids = self.seq.view(self.H, self.G)[1 : 1 + rows, self.Ds :]  # (rows, Da)
        return self._plan_rows(self._decode_n(ids, self.Ds), out)

    def malformed(self) -> dict[str, int]:
        """`decisions`, `filled_from_plan` and `filled_fallback` (decisions with a sub-token
        filled from the previous plan / the held action), `out_of_vocab` (0 by
        construction)."""
        return {**super().malformed(), "filled_from_plan": self.filled_from_plan,
                "filled_fallback": self.filled_fallback}
