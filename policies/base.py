"""What every torch planner shares: observation staging, the context ring, the action output.

- Observations arrive as float64 numpy; they are copied into a preallocated float32 staging
  array (shared with a CPU tensor), moved to the device and normalized in place.
- The context is `n_past + 1` normalized states, oldest first, current last. At an episode's
  start the ring is filled with the first state (the model was trained with the same padding).
- `action()` reads a normalized action tensor into a preallocated float64 numpy array,
  denormalizes, clips to the plant's limits and checks finiteness. A non-finite action is never
  returned: the last finite action (or the zero action clipped into the limits, if there never
  was one) goes out instead and `nonfinite_actions` counts it.

The array `action()` returns is owned by the planner and overwritten by the next call: copy it
to keep it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from policies.normalize import Normalizer
from runtime.protocols import Observation, PlantSpec


def check_dims(spec: PlantSpec, dims: tuple[int, int, int], what: str) -> None:
    """Raise a one-line ValueError when the model's (Ds, Da, Dg) differ from the plant's."""
    want = (spec.state_dim, spec.action_dim, spec.goal_dim)
    if tuple(dims) != want:
        raise ValueError(
            f"{what} was trained for state/action/goal dims {tuple(dims)}, "
            f"but plant {spec.name!r} has {want}"
        )


class TorchPlannerBase:
    """Shared buffers and helpers; subclasses implement reset/observe/refine."""

    def __init__(
        self,
        normalizer: Normalizer,
        spec: PlantSpec,
        *,
        n_past: int,
        device: str = "cpu",
        seed: int = 0,
    ) -> None:
        check_dims(spec, normalizer.dims, "this policy")
        self.spec = spec
        self.device = torch.device(device)
        Ds, Da, Dg = normalizer.dims
        self.Ds, self.Da, self.Dg = Ds, Da, Dg
        self.n_past = n_past
        dev = self.device

        def t(a: npt.NDArray[Any]) -> torch.Tensor:
            return torch.as_tensor(np.asarray(a, dtype=np.float32)).to(dev)

        self._s_mean, self._s_std = t(normalizer.state_mean), t(normalizer.state_std)
        self._a_mean, self._a_std = t(normalizer.action_mean), t(normalizer.action_std)
        self._g_mean, self._g_std = t(normalizer.goal_mean), t(normalizer.goal_std)
        self.generator = torch.Generator(device=dev)
        self.generator.manual_seed(seed)
        # Observation staging: numpy float32 arrays sharing memory with CPU tensors.
        self._obs_np = np.zeros(Ds, dtype=np.float32)
        self._goal_np = np.zeros(Dg, dtype=np.float32)
        self._obs_cpu = torch.from_numpy(self._obs_np)
        self._goal_cpu = torch.from_numpy(self._goal_np)
        self.obs_n = torch.zeros(Ds, device=dev)  # (Ds,) normalized current state
        self.goal_n = torch.zeros(1, Dg, device=dev)  # (1, Dg) normalized goal
        self._goal_prev_np = np.zeros(Dg, dtype=np.float32)
        self._goal_ne = np.zeros(Dg, dtype=bool)
        self.ctx = torch.zeros(1, n_past + 1, Ds, device=dev)  # (1, P+1, Ds) oldest first
        self._ctx_tmp = torch.zeros(1, n_past, Ds, device=dev)
        self._ctx_old, self._ctx_new = self.ctx[:, 1:], self.ctx[:, :-1]
        self._ctx_last = self.ctx[0, -1]
        # the current state as of the last token boundary, saved by the first `refresh` that
        # overwrites the context's current slot (the history must keep one token between
        # states); `_refreshed` says whether the slot holds a newer state than that
        self._ctx_token = torch.zeros(Ds, device=dev)
        self._refreshed = False
        # Action output.
        self._act_n = torch.zeros(Da, device=dev)  # normalized action the output is read from
        self._act_cpu = torch.zeros(Da)
        self._act_np32 = self._act_cpu.numpy()
        self._out = np.zeros(Da, dtype=np.float64)  # returned by action(); planner-owned
        self._last_good = np.clip(np.zeros(Da), spec.action_low, spec.action_high)
        self._a_std_np = normalizer.action_std.astype(np.float64)
        self._a_mean_np = normalizer.action_mean.astype(np.float64)
        self._s_std_np = normalizer.state_std.astype(np.float64)  # predicted states' units
        self._s_mean_np = normalizer.state_mean.astype(np.float64)
        self._action_dirty = True
        self.surprise = 0.0
        self.nonfinite_actions = 0
        self.stale_observations = 0

    # -- observation -------------------------------------------------------------------------
    def _stage(self, obs: Observation) -> bool:
        """Copy and normalize obs into `obs_n` (and `goal_n`). False if the reading is unusable."""
        state = np.asarray(obs.state)
        if state.shape != (self.Ds,):
            raise ValueError(f"observation state has shape {state.shape}, want ({self.Ds},)")
        if not np.all(np.isfinite(state)):
            return False
        self._obs_np[...] = state
        self.obs_n.copy_(self._obs_cpu, non_blocking=False)
        self.obs_n.sub_(self._s_mean).div_(self._s_std)
        if self.Dg > 0:
            goal = np.asarray(obs.goal)
            if goal.shape == (self.Dg,) and np.all(np.isfinite(goal)):
                self._goal_np[...] = goal
                self.goal_n[0].copy_(self._goal_cpu)
                self.goal_n[0].sub_(self._g_mean).div_(self._g_std)
        return True

    def _fill_context(self) -> None:
        self.ctx.copy_(self.obs_n.expand_as(self.ctx))
        self._refreshed = False

    def _push_context(self) -> None:
        if self.n_past > 0:
            if self._refreshed:  # undo the refreshes before the slot becomes history
                self._ctx_last.copy_(self._ctx_token)
            self._ctx_tmp.copy_(self._ctx_old)
            self._ctx_new.copy_(self._ctx_tmp)
        self._ctx_last.copy_(self.obs_n)
        self._refreshed = False

    def refresh(self, obs: Observation) -> bool:
        """A sub-token tick (`policies.tokenrate`): put the fresh state in the context's
        current slot without moving the history. False (nothing changed) when `obs` is stale or
        unusable. Subclasses add what their plan needs."""
        if obs.stale or not self._stage(obs):
            return False
        if not self._refreshed:  # keep the token's own state for the history
            self._ctx_token.copy_(self._ctx_last)
            self._refreshed = True
        self._ctx_last.copy_(self.obs_n)
        return True

    def _goal_changed(self) -> bool:
        if self.Dg == 0:
            return False
        # numpy on the staged raw goal: no tensor (and no device sync) per tick
        np.not_equal(self._goal_np, self._goal_prev_np, out=self._goal_ne)
        self._goal_prev_np[...] = self._goal_np
        return bool(self._goal_ne.any())

    @property
    def goal_arg(self) -> torch.Tensor | None:
        return self.goal_n if self.Dg > 0 else None

    # -- plan-ahead --------------------------------------------------------------------------
    def _plan_rows(self, actions_n: torch.Tensor, out: npt.NDArray[np.float64]) -> int:
        """Denormalize and clip the normalized actions `actions_n` (N, Da) into `out[:N]`
        (fewer if `out` is shorter); returns the rows written, 0 when any is not finite (a
        plan that cannot be trusted whole is not offered). The CPU staging buffer grows once
        to the longest plan asked for, then is reused."""
        n: int = min(int(actions_n.shape[0]), int(out.shape[0]))
        if n <= 0:
            return 0
        staging = getattr(self, "_plan_cpu", None)
        if staging is None or staging.shape[0] < n:
            staging = self._plan_cpu = torch.zeros(n, self.Da)
            self._plan_np32 = staging.numpy()
        staging[:n].copy_(actions_n[:n])
        rows = out[:n]
        np.multiply(self._plan_np32[:n], self._a_std_np, out=rows)
        np.add(rows, self._a_mean_np, out=rows)
        if not np.isfinite(rows.sum()):
            return 0
        np.clip(rows, self.spec.action_low, self.spec.action_high, out=rows)
        return n

    def _init_predicted_states(self, rows: int) -> None:
        """`runtime.PredictsStates` for a subclass whose plan predicts `rows` states: the host
        staging buffer `_state_rows` copies them through, made once here."""
        self.predicted_ticks = rows
        self._pred_cpu = torch.zeros(rows, self.Ds)
        self._pred_np32 = self._pred_cpu.numpy()

    def _state_rows(self, states_n: torch.Tensor, out: npt.NDArray[np.floating[Any]]) -> int:
        """Denormalize the normalized states `states_n` (N, Ds) into `out[:N]` (fewer if `out`
        is shorter) through the staging buffer of `_init_predicted_states`; returns the rows
        written, 0 when any is not finite (a prediction that cannot be trusted whole is not
        offered). One device-to-host copy; nothing allocated but views."""
        n: int = min(int(states_n.shape[0]), int(out.shape[0]), self.predicted_ticks)
        if n <= 0:
            return 0
        self._pred_cpu[:n].copy_(states_n[:n])
        rows = out[:n]
        np.multiply(self._pred_np32[:n], self._s_std_np, out=rows)
        np.add(rows, self._s_mean_np, out=rows)
        return n if np.isfinite(rows.sum()) else 0

    # -- action ------------------------------------------------------------------------------
    def _repair(self, out: npt.NDArray[np.float64]) -> None:
        """Make `out` (Da,) a sendable action in place: clipped into the limits and kept as the
        last good one when finite; else the last good one, counted in `nonfinite_actions`."""
        if np.all(np.isfinite(out)):
            np.clip(out, self.spec.action_low, self.spec.action_high, out=out)
            self._last_good[...] = out
        else:
            self.nonfinite_actions += 1
            out[...] = self._last_good

    def action(self) -> npt.NDArray[np.float64]:
        """(Da,) float64, finite, within the plant's limits; planner-owned (copy to keep)."""
        if self._action_dirty:
            self._act_cpu.copy_(self._act_n)
            out = self._out
            np.multiply(self._act_np32, self._a_std_np, out=out)
            np.add(out, self._a_mean_np, out=out)
            self._repair(out)
            self._action_dirty = False
        return self._out
