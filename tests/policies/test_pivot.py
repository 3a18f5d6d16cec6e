"""The rolling planner's pivot rules (`PlannerConfig.pivot`) on hand-built plans: which tokens
each rule re-noises and to what level, what `shift` adds to the plan's states, that `uniform` is
the plain re-noising it always was, that levels never go down, and that the per-tick path
allocates nothing under any rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from policies import PlannerConfig
from policies.evaluate import VARIANTS, planner_settings, variant_config
from policies.rolling import RollingPlanner
from policies.schedule import renoise_

from .conftest import DS, obs, small_planner_cfg, toy_normalizer
from .test_rolling import _CountNewTensors, make, states

H = 6  # the small model's horizon
# sigma(surprise) = surprise - 0.1 up to 1: an error of 0.6 in every normalized state dimension
# (RMS 0.6) re-noises to 0.5
MAP = dict(surprise_threshold=0.1, surprise_full=1.1, renoise_max=1.0)
ERR, SIGMA = 0.6, 0.5


def hand_built(pivot: str, tau: list[float], **kw: object) -> RollingPlanner:
    """A planner whose plan is known: levels `tau`, seeded random tokens, and a clean estimate
    that predicts the normalized state 0 for the next tick (token 1)."""
    p = make(small_planner_cfg(pivot=pivot, **{**MAP, **kw}), seed=3)
    p.reset(obs(np.zeros(DS)))
    g = torch.Generator().manual_seed(11)
    p.x.copy_(torch.randn(p.x.shape, generator=g))
    p.z_hat.copy_(torch.randn(p.z_hat.shape, generator=g))
    p.z_hat[0, 1, :DS] = 0.0
    p.tau.copy_(torch.tensor([tau]))
    return p


def surprised(p: RollingPlanner, err: float = ERR, **kw: object) -> None:
    """Observe a state `err` off the plan's prediction in every normalized dimension."""
    p.observe(obs(toy_normalizer().denorm_state(np.full(DS, err)), seq=1, **kw))


CLEAN = [0.0] * H  # every token clean: after the shift only the new last token is noise


def test_the_surprise_and_its_level_are_what_the_rules_start_from() -> None:
    p = hand_built("uniform", CLEAN)
    surprised(p)
    assert p.surprise == pytest.approx(ERR, abs=1e-5)
    assert p.renoise_level == pytest.approx(SIGMA, abs=1e-5)


@pytest.mark.parametrize(
    ("pivot", "kw", "levels"),
    [
        ("uniform", {}, [SIGMA] * (H - 1) + [1.0]),
        # decay: sigma * decay**j, the near tokens most
        ("decay", {"pivot_decay": 0.5}, [SIGMA * 0.5**j for j in range(H - 1)] + [1.0]),
        ("decay", {"pivot_decay": 1.0}, [SIGMA] * (H - 1) + [1.0]),
        # shift: light * sigma * decay**j
        ("shift", {"pivot_decay": 0.5, "pivot_light": 0.4},
         [0.4 * SIGMA * 0.5**j for j in range(H - 1)] + [1.0]),
        ("shift", {"pivot_light": 0.0}, [0.0] * (H - 1) + [1.0]),
    ],
)
def test_each_rule_renoises_each_token_to_its_level(
    pivot: str, kw: dict[str, float], levels: list[float]
) -> None:
    p = hand_built(pivot, CLEAN, **kw)
    surprised(p)
    np.testing.assert_allclose(p.noise_levels(), levels, atol=1e-5)
    assert p.renoise_level == pytest.approx(SIGMA, abs=1e-5) and p.renoise_count == 1


@pytest.mark.parametrize("pivot", ["uniform", "decay", "shift"])
def test_levels_never_go_down(pivot: str) -> None:
    before = [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]  # the ramp, shifted: 0.25 0.5 0.75 1 1 | 1
    shifted = np.array([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    p = hand_built(pivot, before, pivot_decay=0.5)
    surprised(p)
    lv = p.noise_levels()
    assert np.all(lv >= shifted - 1e-6)
    floor = {"uniform": [SIGMA] * H, "decay": [SIGMA * 0.5**j for j in range(H)],
             "shift": [0.5 * SIGMA * 0.5**j for j in range(H)]}[pivot]
    np.testing.assert_allclose(lv, np.maximum(shifted, floor), atol=1e-5)
    if pivot == "decay":
        assert lv[0] == pytest.approx(SIGMA, abs=1e-5) and lv[1] == pytest.approx(0.5)


@pytest.mark.parametrize("pivot", ["uniform", "decay", "shift"])
def test_more_surprise_never_means_lower_levels(pivot: str) -> None:
    levels = []
    for err in (0.05, 0.2, 0.4, 0.8, 1.6):
        p = hand_built(pivot, CLEAN)
        surprised(p, err)
        levels.append(p.noise_levels().copy())
    lv = np.array(levels)
    assert np.all(lv[1:] >= lv[:-1] - 1e-7)
    assert np.all(lv[0] == [0.0] * (H - 1) + [1.0])  # below the threshold: nothing re-noised


def test_uniform_is_the_plain_uniform_renoising_bit_for_bit() -> None:
    """The default rule raises every token to sigma with the planner's next noise draw,
    nothing else: the same tensors, exactly, as the kernel called by hand."""
    p = hand_built("uniform", [0.0, 0.25, 0.5, 0.75, 1.0, 1.0])
    assert PlannerConfig().pivot == "uniform"
    x, tau = p.x.clone(), p.tau.clone()
    g = torch.Generator()
    g.set_state(p.generator.get_state())
    # the reference: shift, a fresh noise token, every token to at least sigma, inpaint
    x_ref = torch.cat([x[:, 1:], torch.randn(1, 1, x.shape[-1], generator=g)], dim=1)
    tau_ref = torch.cat([tau[:, 1:], torch.ones(1, 1)], dim=1)
    surprised(p)
    level = torch.full_like(tau_ref, p.renoise_level)
    noise = torch.randn(x_ref.shape, generator=g)
    a, b, c = (torch.empty_like(tau_ref) for _ in range(3))
    renoise_(x_ref, tau_ref, level, noise, a=a, b=b, c=c)
    x_ref[0, 0, :DS] = p.obs_n
    assert torch.equal(p.tau, tau_ref) and torch.equal(p.x, x_ref)


def test_decay_of_one_is_uniform_over_a_run_of_ticks() -> None:
    xs = states(12)

    def run(**kw: object) -> np.ndarray:
        p = make(small_planner_cfg(surprise_threshold=0.05, surprise_full=1.0, **kw), seed=5)
        p.reset(obs(xs[0]))
        out = []
        for k in range(1, 12):
            p.observe(obs(xs[k] * (1 + (k % 3 == 0)), seq=k))
            p.refine(0)
            out.append(p.action().copy())
        assert p.renoise_count > 0
        return np.array(out)

    uniform = run()
    assert np.array_equal(uniform, run(pivot="uniform"))
    assert np.array_equal(uniform, run(pivot="decay", pivot_decay=1.0))
    assert not np.array_equal(uniform, run(pivot="decay", pivot_decay=0.5))


def test_shift_translates_the_plans_states_by_the_observed_error() -> None:
    p = hand_built("shift", CLEAN, pivot_carry=0.5, pivot_light=0.0)
    p.tau.copy_(torch.tensor([[0.0, 0.0, 0.2, 0.4, 0.6, 1.0]]))
    x, z = p.x.clone(), p.z_hat.clone()
    surprised(p)
    tau = torch.tensor([0.0, 0.2, 0.4, 0.6, 1.0, 1.0])  # after the shift; no re-noising
    np.testing.assert_allclose(p.noise_levels(), tau.numpy(), atol=1e-7)
    e = torch.full((DS,), ERR)
    for j in range(1, H - 1):  # token 0's state is the observation (inpainted)
        torch.testing.assert_close(p.z_hat[0, j, :DS], z[0, j + 1, :DS] + 0.5**j * e)
        torch.testing.assert_close(p.x[0, j, :DS],
                                   x[0, j + 1, :DS] + (1 - tau[j]) * 0.5**j * e)
    torch.testing.assert_close(p.x[0, :-1, DS:], x[0, 1:, DS:])  # actions untouched
    torch.testing.assert_close(p.z_hat[0, :-1, DS:], z[0, 1:, DS:])


def test_shift_moves_nothing_below_the_threshold_or_on_a_stale_tick() -> None:
    for kw, err in (({}, 0.05), ({"stale": True}, ERR)):
        p = hand_built("shift", CLEAN, pivot_light=0.0)
        x = p.x.clone()
        surprised(p, err, **kw)
        torch.testing.assert_close(p.x[0, 1:-1], x[0, 2:])
        assert p.renoise_level == 0.0 and p.renoise_count == 0


def test_a_bad_rule_is_a_one_line_error_naming_the_rules() -> None:
    for make_cfg in (lambda: PlannerConfig(pivot="first"),
                     lambda: planner_settings(["pivot=first"], PlannerConfig())):
        with pytest.raises(ValueError) as err:
            make_cfg()
        msg = str(err.value)
        assert "\n" not in msg and "'first'" in msg and "uniform, decay, shift" in msg


@pytest.mark.parametrize(
    ("field", "value"),
    [("pivot_decay", 0.0), ("pivot_decay", 1.5), ("pivot_carry", -0.1),
     ("pivot_light", 1.01), ("pivot_light", float("nan"))],
)
def test_pivot_settings_are_validated(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        PlannerConfig(**{field: value})  # type: ignore[arg-type]


def test_set_takes_the_rule_as_text_and_the_variants_name_the_rules() -> None:
    cfg = planner_settings(["pivot=shift", "pivot_light=0.25"], PlannerConfig())
    assert cfg.pivot == "shift" and cfg.pivot_light == 0.25
    assert {"decay", "shift"} <= set(VARIANTS) and VARIANTS[:3] == ("renoise", "none", "blank")
    assert variant_config(PlannerConfig(), "decay").pivot == "decay"
    assert variant_config(cfg, "renoise") == cfg  # the rule the settings chose
    assert variant_config(cfg, "blank").pivot == "uniform"  # a blank slate is one rule
    assert variant_config(PlannerConfig(), "blank") == variant_config(
        PlannerConfig(pivot="decay"), "blank")


@pytest.mark.parametrize("pivot", ["decay", "shift"])
def test_the_rules_allocate_nothing_on_the_per_tick_path(pivot: str) -> None:
    p = make(small_planner_cfg(pivot=pivot, surprise_threshold=0.05, surprise_full=1.0,
                               goal_renoise=0.5), goal_dim=2)
    xs = states(8)
    p.reset(obs(xs[0], goal=np.zeros(2)))
    ids = {k: (id(t), t.data_ptr()) for k, t in p.buffers.items()}
    counter = _CountNewTensors()
    with counter.mode:
        for k in range(1, 8):  # re-noising ticks and a goal change
            p.observe(obs(xs[k] * 3, seq=k, goal=np.full(2, float(k > 4))))
            p.action()
    assert p.renoise_count > 0
    assert counter.seen == []
    p.refine(0)
    assert {k: (id(t), t.data_ptr()) for k, t in p.buffers.items()} == ids


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("pivot", ["decay", "shift"])
def test_the_rules_leave_the_cuda_graph_path_matching_the_eager_step(pivot: str) -> None:
    from .conftest import small_model, toy_spec

    cfg = small_planner_cfg(pivot=pivot, surprise_threshold=0.05, surprise_full=1.0)
    xs = states(20)
    planners = [RollingPlanner(small_model(), toy_normalizer(), toy_spec(), cfg, device="cuda",
                               seed=4, use_cuda_graph=graph) for graph in (True, False)]
    assert planners[0]._graph is not None
    for p in planners:
        p.reset(obs(xs[0]))
    for k in range(1, 20):
        for p in planners:
            p.observe(obs(xs[k] * (1 + (k % 3 == 0)), seq=k))
            p.refine(0)
        np.testing.assert_allclose(planners[0].action(), planners[1].action(), rtol=1e-4,
                                   atol=1e-5)
    assert all(p.renoise_count > 0 for p in planners)
