from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from policies import Normalizer, PlannerConfig, RollingPlanner
from runtime.protocols import Planner

from .conftest import DS, obs, small_model, small_planner_cfg, toy_normalizer, toy_spec

NO_RENOISE = dict(surprise_threshold=1e9, surprise_full=2e9)


def make(cfg: PlannerConfig | None = None, *, goal_dim: int = 0, seed: int = 0, **kw):
    return RollingPlanner(
        small_model(goal_dim, **kw),
        toy_normalizer(goal_dim),
        toy_spec(goal_dim),
        cfg or small_planner_cfg(),
        seed=seed,
    )


def states(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DS))


def test_rolling_planner_implements_the_runtime_protocol() -> None:
    assert isinstance(make(), Planner)


def test_reset_warms_the_buffer_to_the_ramp() -> None:
    p = make()
    p.reset(obs(states(1)[0]))
    np.testing.assert_allclose(p.noise_levels(), [0, 0.25, 0.5, 0.75, 1, 1], atol=1e-6)


def test_a_bounded_reset_cuts_the_warm_up_short_and_the_first_tick_reaches_the_ramp() -> None:
    cfg = small_planner_cfg(warmup_steps=8, steps_per_tick=1, **NO_RENOISE)
    ramp = [0, 0.25, 0.5, 0.75, 1, 1]
    calls = []
    p = make(cfg)
    step = p._step
    p._step = lambda: (calls.append(1), step())[1]  # type: ignore[method-assign]
    p.reset(obs(states(1)[0]), budget_ns=0)  # no time: one step of the warm-up, no more
    assert len(calls) == 1
    assert np.all(p.noise_levels() >= np.array(ramp) - 1e-6)  # not yet down to the ramp
    assert p.noise_levels()[1] > 0.25 + 1e-3
    p.observe(obs(states(2)[1], seq=1))
    p.refine(10**9)  # the first tick's one step takes every token to its (shifted) ramp level
    np.testing.assert_allclose(p.noise_levels(), [0, 0.25, 0.5, 0.75, 1, 1], atol=1e-6)
    calls.clear()
    p.reset(obs(states(1)[0]), budget_ns=10**12)  # time enough: the whole warm-up
    assert len(calls) == 8
    np.testing.assert_allclose(p.noise_levels(), ramp, atol=1e-6)


def _reference_levels(H, Hc, near, steps_per_tick, fixed_k, max_steps):
    """Plain loop over the ramp schedule: yields the levels after every step."""
    ramp = [min(1.0, j / Hc) for j in range(H)]
    tau = list(ramp)
    k_expected = fixed_k or 1
    prev_steps = None
    for n_steps in steps_per_tick:
        if prev_steps is not None and not fixed_k:
            k_expected = min(max(1, prev_steps), max_steps)
        tau = [*tau[1:], 1.0]  # shift
        target = list(ramp)
        delta = [max(t - g, 1.0 / Hc) / k_expected for t, g in zip(tau, target, strict=True)]
        for s in range(n_steps):
            if s == k_expected:  # corrector steps on the near tokens
                target = [0.0 if j < near else ramp[j] for j in range(H)]
                delta = [
                    max(t - g, 1.0 / Hc) / k_expected for t, g in zip(tau, target, strict=True)
                ]
            tau = [min(t, max(g, t - d)) for t, g, d in zip(tau, target, delta, strict=True)]
            yield list(tau)
        prev_steps = n_steps


@pytest.mark.parametrize("fixed_k", [0, 3])
def test_per_token_schedule_matches_a_plain_reference_loop(fixed_k: int) -> None:
    cfg = small_planner_cfg(
        steps_per_tick=fixed_k, near_tokens=2, max_steps_per_tick=5, **NO_RENOISE
    )
    p = make(cfg)
    xs = states(12)
    p.reset(obs(xs[0]))
    pattern = [1, 3, 3, 5, 2, 1, 4, 4, 1, 0, 2]
    got = []
    for k, n in enumerate(pattern):
        p.observe(obs(xs[k + 1], seq=k + 1))
        for _ in range(n):
            assert p.refine(10**9) == 1
            got.append(p.noise_levels().copy())
    want = list(_reference_levels(6, 4, 2, pattern, fixed_k, 5))
    np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-6)


def test_steady_state_step_lowers_each_ramp_token_by_one_over_k_hc() -> None:
    p = make(small_planner_cfg(steps_per_tick=4, near_tokens=0, **NO_RENOISE))
    xs = states(4)
    p.reset(obs(xs[0]))
    for k in range(1, 4):
        p.observe(obs(xs[k], seq=k))
        before = p.noise_levels().copy()
        p.refine(0)
        after = p.noise_levels().copy()
        np.testing.assert_allclose(before - after, [1 / 16] * 4 + [0, 0], atol=1e-6)
        for _ in range(3):
            p.refine(0)
        assert p.refine(0) == 0  # ramp reached and no corrector tokens: nothing more to do


def test_refine_step_is_the_flow_step_on_the_models_clean_estimate() -> None:
    p = make(small_planner_cfg(**NO_RENOISE))
    xs = states(2)
    p.reset(obs(xs[0]))
    p.observe(obs(xs[1], seq=1))
    x, tau, ctx = p.x.clone(), p.tau.clone(), p.ctx.clone()
    target, delta = p.target.clone(), p.delta.clone()
    with torch.no_grad():
        z_hat = p.model(x, tau, ctx, None)
    z_hat[0, 0, :DS] = p.obs_n
    tau_new = torch.minimum(torch.maximum(tau - delta, target), tau)
    want = z_hat + (tau_new / tau.clamp(min=1e-6)).unsqueeze(-1) * (x - z_hat)
    want[0, 0, :DS] = p.obs_n
    p.refine(0)
    torch.testing.assert_close(p.x, want)
    torch.testing.assert_close(p.z_hat, z_hat)


def test_observe_shifts_tokens_and_inpaints_the_observed_state() -> None:
    p = make(small_planner_cfg(**NO_RENOISE))
    xs = states(2)
    p.reset(obs(xs[0]))
    old_x = p.x.clone()
    p.observe(obs(xs[1], seq=1))
    torch.testing.assert_close(p.x[0, 1:-1], old_x[0, 2:])
    torch.testing.assert_close(p.x[0, 0, DS:], old_x[0, 1, DS:])
    norm = toy_normalizer()
    torch.testing.assert_close(p.x[0, 0, :DS], torch.from_numpy(norm.norm_state(xs[1])))
    torch.testing.assert_close(p.ctx[0, -1], torch.from_numpy(norm.norm_state(xs[1])))
    torch.testing.assert_close(p.ctx[0, -2], torch.from_numpy(norm.norm_state(xs[0])))


def test_renoising_raises_levels_monotonically_with_surprise() -> None:
    cfg = small_planner_cfg(surprise_threshold=0.2, surprise_full=3.0, renoise_max=0.9)
    x0 = states(1)[0]
    direction = states(1, seed=5)[0]
    probe = make(cfg, seed=3)
    probe.reset(obs(x0))
    predicted = toy_normalizer().denorm_state(probe.z_hat[0, 1, :DS].numpy())  # plan's s_{t+1}
    surprises, levels = [], []
    for d in [0.0, 0.1, 0.3, 0.6, 1.0, 2.0, 4.0, 8.0]:
        p = make(cfg, seed=3)
        p.reset(obs(x0))
        p.observe(obs(predicted + d * direction, seq=1))
        surprises.append(p.surprise)
        levels.append(p.noise_levels().copy())
    assert all(b > a for a, b in itertools.pairwise(surprises))
    lv = np.array(levels)
    assert np.all(lv[1:] >= lv[:-1] - 1e-7)
    assert lv[-1, 0] >= 0.9 - 1e-6 > lv[0, 0]  # a big surprise re-noises even the next action
    assert lv[-1].max() <= 1.0


@pytest.mark.parametrize("pivot", ["uniform", "decay", "shift"])
def test_goal_change_renoises_the_plan(pivot: str) -> None:
    cfg = small_planner_cfg(goal_renoise=0.7, pivot=pivot, **NO_RENOISE)
    p = make(cfg, goal_dim=2)
    x0 = states(1)[0]
    p.reset(obs(x0, goal=np.array([1.0, 0.0])))
    p.observe(obs(x0, seq=1, goal=np.array([1.0, 0.0])))
    assert p.renoise_level == 0.0
    p.observe(obs(x0, seq=2, goal=np.array([-1.0, 2.0])))
    assert p.renoise_level == 0.7
    assert np.all(p.noise_levels() >= 0.7 - 1e-6)  # every token, under every pivot rule


def test_seeded_planners_are_deterministic() -> None:
    xs = states(15)

    def run(seed: int) -> np.ndarray:
        p = make(small_planner_cfg(surprise_threshold=0.05, surprise_full=1.0), seed=seed)
        p.reset(obs(xs[0]))
        out = []
        for k in range(1, 15):
            p.observe(obs(xs[k], seq=k))
            p.refine(0)
            out.append(p.action().copy())
        return np.array(out)

    assert np.array_equal(run(7), run(7))
    assert not np.array_equal(run(7), run(8))


@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_action_is_finite_and_within_limits_for_extreme_observations(scale: float) -> None:
    p = make(small_planner_cfg(surprise_threshold=0.05, surprise_full=1.0), seed=1)
    with torch.no_grad():
        for prm in p.model.parameters():
            prm.mul_(scale)  # random weights, possibly wild
    p.reset(obs(np.zeros(DS)))
    extreme = [1e6, -1e6, 1e30, np.nan, np.inf, -np.inf, 0.0]
    for k, v in enumerate(extreme * 3):
        p.observe(obs(np.full(DS, v), seq=k + 1))
        for _ in range(k % 3):
            p.refine(0)
        a = p.action()
        assert np.all(np.isfinite(a)) and np.all(a >= -2.0) and np.all(a <= 2.0)
        assert np.all(np.isfinite(p.noise_levels()))


def test_nan_weights_fall_back_to_the_last_finite_action_and_count_it() -> None:
    p = make(small_planner_cfg(**NO_RENOISE))
    p.reset(obs(np.zeros(DS)))
    p.refine(0)
    good = p.action().copy()
    with torch.no_grad():
        p.model.head.bias.fill_(float("nan"))
    p.observe(obs(np.ones(DS), seq=1))
    p.refine(0)
    assert np.array_equal(p.action(), good)
    assert p.nonfinite_actions == 1


def test_stale_observations_are_counted_and_do_not_enter_the_context() -> None:
    p = make(small_planner_cfg(**NO_RENOISE))
    xs = states(3)
    p.reset(obs(xs[0]))
    p.observe(obs(xs[1], seq=1))
    ctx = p.ctx.clone()
    p.observe(obs(xs[2], seq=1, stale=True))
    assert p.stale_observations == 1 and p.surprise == 0.0
    assert torch.equal(p.ctx, ctx)


def test_no_tensor_is_reallocated_on_the_per_tick_path() -> None:
    p = make(
        small_planner_cfg(surprise_threshold=0.05, surprise_full=1.0, goal_renoise=0.5), goal_dim=2
    )
    xs = states(30)
    p.reset(obs(xs[0], goal=np.zeros(2)))
    ids = {k: (id(t), t.data_ptr()) for k, t in p.buffers.items()}
    out = p.action()
    for k in range(1, 30):
        p.observe(obs(xs[k] * (1 + 3 * (k % 4 == 0)), seq=k, goal=np.full(2, k // 10)))
        for _ in range(k % 4):
            p.refine(0)
        assert p.action() is out
    assert {k: (id(t), t.data_ptr()) for k, t in p.buffers.items()} == ids
    assert p.renoise_count > 0  # the re-noising path ran too


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_graph_replay_matches_the_eager_step() -> None:
    cfg = small_planner_cfg(surprise_threshold=0.05, surprise_full=1.0)
    xs = states(20)
    model = small_model()
    graph = RollingPlanner(model, toy_normalizer(), toy_spec(), cfg, device="cuda", seed=4)
    eager = RollingPlanner(
        small_model(),
        toy_normalizer(),
        toy_spec(),
        cfg,
        device="cuda",
        seed=4,
        use_cuda_graph=False,
    )
    assert graph._graph is not None
    for p in (graph, eager):
        p.reset(obs(xs[0]))
    ptrs = {k: t.data_ptr() for k, t in graph.buffers.items()}
    for k in range(1, 20):
        for p in (graph, eager):
            p.observe(obs(xs[k], seq=k))
            p.refine(0)
            p.refine(0)
        np.testing.assert_allclose(graph.action(), eager.action(), rtol=1e-4, atol=1e-5)
        ahead = [np.zeros((graph.H - 1, DS), dtype=np.float32) for _ in range(2)]
        assert graph.predicted_states_into(ahead[0]) == eager.predicted_states_into(ahead[1])
        np.testing.assert_allclose(ahead[0], ahead[1], rtol=1e-4, atol=1e-5)
    assert {k: t.data_ptr() for k, t in graph.buffers.items()} == ptrs


def test_ablation_variants_switch_renoising_off_or_to_a_blank_slate() -> None:
    from policies.evaluate import variant_config

    base = small_planner_cfg(surprise_threshold=0.2, surprise_full=1.0)
    x0 = states(1)[0]
    levels = {}
    for v in ("renoise", "none", "blank"):
        p = make(variant_config(base, v), seed=2)
        p.reset(obs(x0))
        p.observe(obs(x0 + 0.5, seq=1))
        levels[v] = p.noise_levels().copy()
    assert levels["none"][0] < 0.3 and np.all(levels["blank"] == 1.0)
    assert 0.3 < levels["renoise"][0] < 1.0


class _CountNewTensors:
    """Records every aten op that returns a freshly allocated tensor (not a view, not in place,
    not an `out=` variant)."""

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode

        seen: list[str] = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
                rets = [r for r in func._schema.returns if str(r.type) == "Tensor"]
                if any(r.alias_info is None for r in rets):
                    seen.append(str(func))
                return func(*args, **(kwargs or {}))

        self.mode, self.seen = Mode(), seen


def test_observe_and_action_allocate_no_tensor_storage() -> None:
    p = make(
        small_planner_cfg(surprise_threshold=0.05, surprise_full=1.0, goal_renoise=0.5), goal_dim=2
    )
    xs = states(8)
    p.reset(obs(xs[0], goal=np.zeros(2)))
    counter = _CountNewTensors()
    with counter.mode:
        for k in range(1, 8):  # includes re-noising ticks and a goal change
            p.observe(obs(xs[k] * 3, seq=k, goal=np.full(2, float(k > 4))))
            p.action()
    assert p.renoise_count > 0
    assert counter.seen == []


def _denormalized_states(p: RollingPlanner, norm: Normalizer) -> np.ndarray:
    z = p.z_hat[0, 1:, :DS].double().numpy()
    return z * norm.state_std + norm.state_mean


def test_predicted_states_are_the_clean_estimates_of_tokens_1_on_in_plant_units() -> None:
    from runtime.protocols import PredictsStates

    norm = toy_normalizer()
    p = make(small_planner_cfg(**NO_RENOISE))
    assert isinstance(p, PredictsStates) and p.predicted_ticks == p.H - 1
    xs = states(3)
    p.reset(obs(xs[0]))
    out = np.full((10, DS), -1.0, dtype=np.float32)  # the sidecar's rows are float32
    assert p.predicted_states_into(out) == p.H - 1
    np.testing.assert_allclose(out[: p.H - 1], _denormalized_states(p, norm), rtol=1e-5,
                               atol=1e-5)
    assert np.all(out[p.H - 1 :] == -1.0)
    # after the shift the far token holds no estimate until a step makes one
    p.observe(obs(xs[1], seq=1))
    out[:] = -1.0
    assert p.predicted_states_into(out) == p.H - 2 and np.all(out[p.H - 2 :] == -1.0)
    np.testing.assert_allclose(out[: p.H - 2], _denormalized_states(p, norm)[:-1], rtol=1e-5,
                               atol=1e-5)
    p.refine(0)
    assert p.predicted_states_into(out) == p.H - 1
    assert p.predicted_states_into(out[:2]) == 2  # a shorter buffer: what fits


def test_predicted_states_allocate_no_tensor_storage() -> None:
    p = make(small_planner_cfg(surprise_threshold=0.05, surprise_full=1.0))
    xs = states(6)
    p.reset(obs(xs[0]))
    out = np.zeros((8, DS), dtype=np.float32)
    staging = p._pred_cpu.data_ptr()
    counter = _CountNewTensors()
    with counter.mode:
        for k in range(1, 6):
            p.observe(obs(xs[k] * 3, seq=k))
            p.predicted_states_into(out)
            p.action()
    assert counter.seen == []
    assert p._pred_cpu.data_ptr() == staging
