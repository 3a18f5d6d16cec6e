"""The discrete planners: the sub-token backbone and its masks, the dllm schedule and surprise,
the ar KV cache and fills, zero-budget actions, training and checkpoints."""

from __future__ import annotations

import argparse
import json
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from policies import (
    ARPlanner,
    Denoiser,
    DenoiserConfig,
    DiscreteConfig,
    DLLMPlanner,
    PlannerConfig,
    SubTokenTransformer,
    load_checkpoint,
    load_planner,
    planner_from_checkpoint,
    save_checkpoint,
)
from policies.checkpoint import state_dict_equal
from policies.data import fit_normalizer
from policies.discrete import param_count
from policies.train import TrainConfig, parse_settings, train
from policies.train_discrete import fit_tokenizer

from .conftest import DA, DS, obs, toy_episodes, toy_spec

K = 16


def tiny(mask: str = "aligned", goal_dim: int = 0, **kw: object) -> DiscreteConfig:
    args: dict[str, object] = dict(horizon=4, n_layer=1, n_embd=32, bins=K, mask=mask)
    args.update(kw)
    return DiscreteConfig(state_dim=DS, action_dim=DA, goal_dim=goal_dim, **args)  # type: ignore[arg-type]


def tiny_net(mask: str = "aligned", goal_dim: int = 0, seed: int = 0) -> SubTokenTransformer:
    """An untrained model holding a tokenizer fitted on the toy episodes."""
    torch.manual_seed(seed)
    net = SubTokenTransformer(tiny(mask, goal_dim)).eval()
    tok, _ = fit_tokenizer(toy_episodes(goal_dim=goal_dim), bins=K, kind="quantile")
    net.set_tokenizer(tok)
    return net


def dllm(cfg: PlannerConfig | None = None, **spec_kw: float) -> DLLMPlanner:
    norm = fit_normalizer(toy_episodes())
    pcfg = cfg or PlannerConfig(clean_ticks=3, warmup_steps=4, steps_per_tick=2)
    return DLLMPlanner(tiny_net(), norm, toy_spec(**spec_kw), pcfg)  # type: ignore[arg-type]


def ar(**spec_kw: float) -> ARPlanner:
    norm = fit_normalizer(toy_episodes())
    return ARPlanner(tiny_net("causal"), norm, toy_spec(**spec_kw), PlannerConfig())  # type: ignore[arg-type]


# -- the backbone ---------------------------------------------------------------------------


def test_both_planners_run_one_backbone_the_size_of_the_denoiser() -> None:
    for ds, da in ((DS, DA), (6, 1), (4, 2)):  # toy, double-pendulum, reacher-like dims
        sizes = {
            m: param_count(SubTokenTransformer(DiscreteConfig(state_dim=ds, action_dim=da, mask=m)))
            for m in ("aligned", "causal")
        }
        assert sizes["aligned"] == sizes["causal"]  # dllm and ar: the same parameters
        cont = param_count(Denoiser(DenoiserConfig(state_dim=ds, action_dim=da)))
        assert abs(sizes["aligned"] - cont) <= 0.10 * cont, (sizes, cont)


def _inputs(cfg: DiscreteConfig, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.bins + 1, (2, cfg.n_plan), generator=gen)
    ctx = torch.randn(2, cfg.n_past + 1, cfg.state_dim, generator=gen)
    goal = torch.randn(2, cfg.goal_dim, generator=gen)
    return ids, ctx, goal


@pytest.mark.parametrize("mask", ["aligned", "causal", "full"])
def test_masks_do_what_they_say(mask: str) -> None:
    net = tiny_net(mask, goal_dim=2)
    ids, ctx, goal = _inputs(net.cfg)
    other = ids.clone()
    other[:, -3:] = (other[:, -3:] + 1) % (K + 1)  # change the last plan positions only
    C = net.cfg.n_context
    with torch.no_grad():
        h, h2 = net.encode(ids, ctx, goal), net.encode(other, ctx, goal)
    ctx_same = torch.allclose(h[:, :C], h2[:, :C], atol=1e-6)
    earlier_same = torch.allclose(h[:, : h.shape[1] - 3], h2[:, : h.shape[1] - 3], atol=1e-6)
    if mask == "full":
        assert not ctx_same  # the ablation: the context sees the plan
    else:
        assert ctx_same  # no layer's context representation depends on the plan
    # causal: a plan position sees nothing after it; aligned: the plan sees the whole plan
    assert earlier_same == (mask == "causal")


def test_ar_kv_cache_gives_the_logits_of_a_full_forward() -> None:
    net = tiny_net("causal", goal_dim=2)
    c = net.cfg
    ids, ctx, goal = (t[:1] for t in _inputs(c, seed=3))
    ids = ids.clamp(max=K - 1)  # an ar sequence holds bins only
    with torch.no_grad():
        full = net(ids, ctx, goal)  # (1, P, K): position p predicts p + 1
        cache = net.new_cache(1)
        got = [net.prefill(ids[:, : c.state_dim], ctx, goal, cache)]
        for p in range(c.state_dim, c.n_plan - 1):
            got.append(net.step(torch.tensor([p]), ids[:, p : p + 1], cache))
    want = full[0, c.state_dim - 1 : -1]
    torch.testing.assert_close(torch.cat(got), want, atol=1e-5, rtol=0)


# -- the dllm planner -----------------------------------------------------------------------


def _ramp_allow(p: DLLMPlanner) -> np.ndarray:
    return p._allow[0].cpu().numpy()


def test_a_dllm_step_unmasks_at_least_what_the_schedule_asks_and_never_remasks() -> None:
    p = dllm()
    eps = toy_episodes()
    p.reset(obs(eps[0].states[0]))
    assert np.all(p.masked_counts() <= _ramp_allow(p))  # the warm-up reaches the ramp
    for t in range(1, 6):
        p.observe(obs(eps[0].states[t], seq=t))
        state_ids = p.ids[0, :DS].clone()
        assert torch.equal(state_ids, p._obs_ids)  # token 0's state: the observation
        for _ in range(p._steps_expected):
            before_ids = p.ids.clone()
            before = p.masked_counts()
            steps_left = int(p.steps_left)
            need = np.maximum(0, -(-(before - p.target[0].cpu().numpy()) // steps_left))
            assert p.refine(1_000_000) == 1
            after = p.masked_counts()
            assert np.all(before - after >= need), (before, after, need)
            decided = before_ids != p.K
            assert torch.equal(p.ids[decided], before_ids[decided])  # nothing decided moves
        assert np.all(p.masked_counts() <= _ramp_allow(p))  # the tick ends on the ramp
        assert torch.equal(p.ids[0, :DS], state_ids)


def test_the_confidence_threshold_unmasks_more_than_the_schedule() -> None:
    eps = toy_episodes()
    counts = {}
    for threshold in (1.01, 1e-6):
        p = dllm(PlannerConfig(clean_ticks=3, warmup_steps=1, unmask_confidence=threshold))
        p.reset(obs(eps[0].states[0]))
        counts[threshold] = p.masked_counts().sum()
    assert counts[1e-6] == 0 < counts[1.01]  # every masked sub-token was confident enough


def test_surprise_remasks_later_tokens_and_an_expected_state_does_not() -> None:
    p = dllm()
    eps = toy_episodes()
    p.reset(obs(eps[0].states[0]))
    # the state token 1 predicts, as values: decoding its beliefs gives no surprise
    belief = p.pred[0, p.G : p.G + DS].cpu().numpy()
    expected = p.tokenizer.centers[np.arange(DS), belief]
    allow_next = np.concatenate([_ramp_allow(p)[1:], [p.G]])  # the shifted ramp
    p.observe(obs(expected, seq=1))
    assert p.surprise == 0.0 and p.renoise_level == 0.0
    assert np.all(p.masked_counts() <= allow_next)
    while p.refine(1_000_000):
        pass
    calm = p.masked_counts().copy()
    belief = p.pred[0, p.G : p.G + DS].cpu().numpy()
    far = np.where(belief < K // 2, 50.0, -50.0)  # the end bin away from each prediction
    p.observe(obs(far, seq=2))
    assert p.surprise == 1.0 and p.renoise_level == pytest.approx(p.cfg.renoise_max)
    counts = p.masked_counts()
    assert np.all(counts[1:] >= np.ceil(p.cfg.renoise_max * p.G))
    assert counts.sum() > calm.sum()
    assert torch.equal(p.ids[0, :DS], p._obs_ids)  # token 0's state is never masked
    assert p.renoise_count == 1


def test_an_action_still_masked_at_emit_takes_its_argmax_and_is_counted() -> None:
    p = dllm()
    eps = toy_episodes()
    p.reset(obs(eps[0].states[0]))
    p.observe(obs(eps[0].states[1] + 50.0, seq=1))  # surprise re-masks token 0's action
    assert bool((p.ids[0, DS:p.G] == p.K).all())
    a = p.action()
    assert np.all(np.isfinite(a)) and p.malformed()["unmasked_at_emit"] == 1
    p.action()  # the same tick's decision is counted once
    assert p.malformed() == {"decisions": 1, "out_of_vocab": 0, "unmasked_at_emit": 1}


def test_dllm_plan_and_noise_levels() -> None:
    p = dllm()
    p.reset(obs(toy_episodes()[0].states[0]))
    out = np.zeros((10, DA))
    assert p.plan_into(out) == p.H - 1 and np.all(np.isfinite(out[: p.H - 1]))
    levels = p.noise_levels()
    np.testing.assert_allclose(levels, p.masked_counts() / p.G)
    assert levels[0] == 0.0 and levels[-1] == 1.0


def test_dllm_predicted_states_are_token_1_on_state_beliefs_at_their_bin_centres() -> None:
    p = dllm()
    eps = toy_episodes()
    p.reset(obs(eps[0].states[0]))
    p.observe(obs(eps[0].states[1], seq=1))
    p.refine(1_000_000)
    assert p.predicted_ticks == p.H - 1
    out = np.full((10, DS), -1.0)
    assert p.predicted_states_into(out) == p.H - 1 and np.all(out[p.H - 1 :] == -1.0)
    ids = p.pred.view(p.H, p.G)[1:, :DS].numpy()  # (H-1, Ds) beliefs
    want = p.tokenizer.centers[np.arange(DS), ids]  # each dimension's bin centre
    np.testing.assert_allclose(out[: p.H - 1], want, rtol=1e-5, atol=1e-5)


# -- the ar planner -------------------------------------------------------------------------


def test_ar_decodes_the_action_then_the_plan_and_fills_a_cut_short_action() -> None:
    p = ar()
    eps = toy_episodes()
    p.reset(obs(eps[0].states[0]))
    p.action()  # nothing decoded, no plan yet: the held action
    assert p.malformed()["filled_fallback"] == 1
    out = np.zeros((10, DA))
    for _ in range(p.steps_per_decision):
        assert p.refine(1_000_000) == 1
    assert p.plan_into(out) == 0  # a_t only: no plan beyond it
    n = p.steps_per_decision
    while p.refine(1_000_000):
        n += 1
    assert n == p.P - DS and p.plan_into(out) == p.H - 1  # the whole plan
    planned = out[0].copy()
    p.observe(obs(eps[0].states[1], seq=1))
    np.testing.assert_allclose(p.action(), planned, rtol=1e-6)  # a_{t+1} of the last plan
    p.observe(obs(eps[0].states[2], seq=2))
    p.action()  # the last tick decoded nothing: the held action
    assert p.malformed() == {"decisions": 3, "out_of_vocab": 0, "filled_from_plan": 1,
                             "filled_fallback": 2}


def test_ar_greedy_decoding_is_the_full_forwards_argmax() -> None:
    p = ar()
    p.reset(obs(toy_episodes()[0].states[0]))
    while p.refine(1_000_000):
        pass
    with torch.no_grad():
        full = p.model(p.seq, p.ctx, None).argmax(-1)
    assert torch.equal(full[0, DS:-1], p.seq[0, DS + 1 :])


@pytest.mark.parametrize("kind", ["dllm", "ar"])
def test_zero_budget_still_emits_a_finite_action_within_limits(kind: str) -> None:
    p = (dllm if kind == "dllm" else ar)(low=-0.01, high=0.01)
    eps = toy_episodes()
    p.reset(obs(eps[0].states[0]))
    for t in range(1, 8):  # refine is never called
        p.observe(obs(eps[0].states[t] * (1 + 5 * (t % 2)), seq=t))
        a = p.action()
        assert a.shape == (DA,) and np.all(np.isfinite(a)) and np.all(np.abs(a) <= 0.01)
    assert p.malformed()["decisions"] == 7 and p.malformed()["out_of_vocab"] == 0


def test_the_wrong_mask_for_a_planner_is_refused() -> None:
    norm = fit_normalizer(toy_episodes())
    with pytest.raises(ValueError, match="needs a causal model"):
        ARPlanner(tiny_net("aligned"), norm, toy_spec(), PlannerConfig())
    with pytest.raises(ValueError, match="aligned or full mask"):
        DLLMPlanner(tiny_net("causal"), norm, toy_spec(), PlannerConfig(clean_ticks=3))


# -- training, settings, checkpoints ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["dllm", "ar"])
def test_training_round_trips_through_a_checkpoint(kind: str, tmp_path: Path) -> None:
    eps = toy_episodes(n=2, T=24)
    mask = "causal" if kind == "ar" else "aligned"
    res = train(eps, TrainConfig(kind=kind, steps=200, batch_size=32, warmup_steps=20, lr=3e-3,
                                 log_every=50),
                task="toy", model_cfg=tiny(mask), rate_hz=100.0)
    assert res.final_loss < 0.8 * res.first_loss
    ckpt = res.checkpoint
    assert ckpt is not None and ckpt.model_type == "discrete"
    rt = ckpt.train["tokenizer"]
    assert rt["bins"] == K and len(rt["round_trip_state"]["mean_abs"]) == DS
    assert max(rt["round_trip_action"]["mean_over_std"]) < 0.2
    save_checkpoint(ckpt, tmp_path / kind)
    back = load_checkpoint(tmp_path / kind)
    assert back.kind == kind and state_dict_equal(back.model, ckpt.model)
    assert isinstance(ckpt.model, SubTokenTransformer)
    assert isinstance(back.model, SubTokenTransformer)
    tok, tok_back = ckpt.model.tokenizer(), back.model.tokenizer()
    np.testing.assert_array_equal(tok.edges, tok_back.edges)
    a = planner_from_checkpoint(ckpt, spec=toy_spec())
    b = load_planner(str(tmp_path / kind), spec=toy_spec())
    assert type(b) is (DLLMPlanner if kind == "dllm" else ARPlanner)
    steps = 2 if kind == "dllm" else DA
    a.reset(obs(eps[0].states[0]))
    b.reset(obs(eps[0].states[0]))
    for t in range(1, 6):
        for p in (a, b):
            p.observe(obs(eps[0].states[t], seq=t))
            for _ in range(steps):
                p.refine(1_000_000)
        np.testing.assert_array_equal(a.action(), b.action())
    with pytest.raises(ValueError, match="holds a discrete model, not a rolling one"):
        planner_from_checkpoint(back, spec=toy_spec(), kind="rolling")


def test_discrete_settings_reach_the_model_and_refuse_a_wrong_mask() -> None:
    model, train_set, planner = parse_settings(
        ["tokenizer.bins=32", "tokenizer.kind=uniform", "aligned_attention=false",
         "n_layer=1", "train.p_ramp=0.3", "unmask_confidence=0.9"], "dllm")
    assert model == {"bins": 32, "tokenizer": "uniform", "mask": "full", "n_layer": 1}
    assert train_set == {"p_ramp": 0.3} and planner == {"unmask_confidence": 0.9}
    assert parse_settings(["mask=causal"], "ar")[0] == {"mask": "causal"}
    with pytest.raises(ValueError, match="a ar model's mask is causal"):
        parse_settings(["mask=aligned"], "ar")
    with pytest.raises(ValueError, match="a dllm model's mask is aligned or full"):
        parse_settings(["mask=causal"], "dllm")
    with pytest.raises(ValueError, match="unknown setting for dllm"):
        parse_settings(["tokenizer.width=3"], "dllm")


def test_rtdiff_train_writes_a_dllm_ablation_checkpoint(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from runtime.cli.train import cli_train

    sims = types.ModuleType("sims")  # no make_plant: the CLI skips the lockstep evaluation
    datasets = types.ModuleType("sims.datasets")
    datasets.load_episodes = lambda path: toy_episodes(n=2, T=20)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sims", sims)
    monkeypatch.setitem(sys.modules, "sims.datasets", datasets)
    out = tmp_path / "ck"
    args = argparse.Namespace(
        task="toy", policy="dllm", data="toy-data", out=str(out), steps=3, device="cpu", seed=0,
        settings=["tokenizer.bins=8", "aligned_attention=false", "n_layer=1", "n_embd=32",
                  "horizon=4"],
    )
    assert cli_train(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "dllm" and cfg["model_type"] == "discrete"
    assert cfg["model"]["mask"] == "full" and cfg["model"]["bins"] == 8
    assert set(cfg["train"]["tokenizer"]) >= {"round_trip_state", "round_trip_action"}
    assert cfg["train"]["command"].startswith("rtdiff ")


# -- CUDA graphs -----------------------------------------------------------------------------


def test_the_steps_work_on_static_buffers_as_a_cuda_graph_needs() -> None:
    """What a captured graph replays must live in buffers that never move: the CPU check."""
    eps = toy_episodes()
    d, a = dllm(), ar()
    bufs: dict[object, Callable[[], list[torch.Tensor]]] = {
        d: lambda: [d.ids, d.pred, d.conf, d.target, d.steps_left, d.ctx, d.goal_n],
        a: lambda: [a.seq, a.pos, a.cache.k, a.cache.v, a.ctx, a.goal_n],
    }
    ptrs = {p: [t.data_ptr() for t in get()] for p, get in bufs.items()}
    for p in (d, a):
        p.reset(obs(eps[0].states[0]))
        for t in range(1, 5):
            p.observe(obs(eps[0].states[t] + (9.0 if t == 3 else 0.0), seq=t))
            while p.refine(1_000_000):
                pass
            p.action()
        assert [t.data_ptr() for t in bufs[p]()] == ptrs[p]


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@cuda
def test_dllm_cuda_graph_replay_matches_the_eager_step() -> None:
    norm = fit_normalizer(toy_episodes())
    eps = toy_episodes()
    pcfg = PlannerConfig(clean_ticks=3, warmup_steps=4, steps_per_tick=2)
    a = DLLMPlanner(tiny_net(), norm, toy_spec(), pcfg, device="cuda")
    b = DLLMPlanner(tiny_net(), norm, toy_spec(), pcfg, device="cuda", use_cuda_graph=False)
    assert a._graph is not None and b._graph is None
    for p in (a, b):
        p.reset(obs(eps[0].states[0]))
    for t in range(1, 6):
        for p in (a, b):
            p.observe(obs(eps[0].states[t], seq=t))
            for _ in range(3):
                p.refine(1_000_000)
        assert torch.equal(a.ids, b.ids)
        np.testing.assert_allclose(a.action(), b.action(), rtol=1e-5)


@pytest.mark.gpu
@cuda
def test_ar_cuda_graph_replay_matches_the_eager_decoding() -> None:
    norm = fit_normalizer(toy_episodes())
    eps = toy_episodes()
    a = ARPlanner(tiny_net("causal"), norm, toy_spec(), PlannerConfig(), device="cuda")
    b = ARPlanner(tiny_net("causal"), norm, toy_spec(), PlannerConfig(), device="cuda",
                  use_cuda_graph=False)
    assert a._graphs is not None and b._graphs is None
    for t in range(0, 4):
        for p in (a, b):
            if t == 0:
                p.reset(obs(eps[0].states[0]))
            else:
                p.observe(obs(eps[0].states[t], seq=t))
            while p.refine(1_000_000):
                pass
        assert torch.equal(a.seq, b.seq)


@pytest.mark.parametrize("mask", ["aligned", "causal"])
def test_the_frozen_cpu_model_decides_as_the_eager_one(mask: str) -> None:
    eps = toy_episodes()
    norm = fit_normalizer(toy_episodes())
    frozen = tiny_net(mask, goal_dim=0)
    assert frozen.freeze_for_cpu() and set(frozen._frozen) == (
        {"forward", "prefill", "step"} if mask == "causal" else {"forward"})
    assert tiny_net(mask, goal_dim=2).freeze_for_cpu()  # checked against eager inside
    planners = []
    for net in (frozen, tiny_net(mask, goal_dim=0)):
        cls = ARPlanner if mask == "causal" else DLLMPlanner
        planners.append(cls(net, norm, toy_spec(), PlannerConfig(clean_ticks=3, warmup_steps=4)))
    for p in planners:
        p.reset(obs(eps[0].states[0]))
    for t in range(1, 6):
        for p in planners:
            p.observe(obs(eps[0].states[t], seq=t))
            for _ in range(3):
                p.refine(1_000_000)
        np.testing.assert_allclose(planners[0].action(), planners[1].action(), rtol=1e-6)
