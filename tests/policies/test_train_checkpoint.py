from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from policies import (
    DenoiserConfig,
    MLPConfig,
    load_checkpoint,
    load_planner,
    save_checkpoint,
)
from policies.checkpoint import state_dict_equal
from policies.data import fit_normalizer, make_windows
from policies.train import TrainConfig, train

from .conftest import DA, DS, obs, toy_episodes, toy_spec

TINY = DenoiserConfig(state_dim=DS, action_dim=DA, horizon=6, n_layer=1, n_embd=32)


def test_windows_hold_context_goal_and_future_tokens() -> None:
    eps = toy_episodes(n=2, T=10, goal_dim=2)
    w = make_windows(eps, horizon=4, n_past=2)
    assert (
        w.ctx.shape == (2 * 7, 3, DS)
        and w.goal.shape == (14, 2)
        and w.plan.shape == (14, 4, DS + DA)
    )
    s, a = eps[0].states, eps[0].actions
    np.testing.assert_array_equal(w.ctx[0], s[[0, 0, 0]])  # padded with the first state
    np.testing.assert_array_equal(w.ctx[3], s[[1, 2, 3]])
    np.testing.assert_array_equal(w.plan[3, :, :DS], s[3:7])
    np.testing.assert_array_equal(w.plan[3, :, DS:], a[3:7])


def test_normalization_round_trips_and_standardizes() -> None:
    eps = toy_episodes(n=3, T=30, goal_dim=1)
    norm = fit_normalizer(eps)
    s = np.concatenate([e.states for e in eps])
    ns = norm.norm_state(s)
    np.testing.assert_allclose(ns.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(ns.std(axis=0), 1, atol=1e-3)
    np.testing.assert_allclose(norm.denorm_state(ns), s, rtol=1e-5, atol=1e-5)
    a = np.concatenate([e.actions for e in eps])
    np.testing.assert_allclose(norm.denorm_action(norm.norm_action(a)), a, rtol=1e-5, atol=1e-5)


def test_malformed_episodes_are_refused_with_the_shapes() -> None:
    eps = toy_episodes(n=1, T=10)
    eps[0].actions = eps[0].actions[:-2]
    with pytest.raises(ValueError, match=r"episode 0: want states \(T\+1, Ds\)"):
        make_windows(eps, horizon=4, n_past=1)


@pytest.mark.parametrize("kind", ["rolling", "chunked"])
def test_denoiser_overfits_a_tiny_dataset(kind: str) -> None:
    eps = toy_episodes(n=2, T=24)
    res = train(
        eps,
        TrainConfig(kind=kind, steps=300, batch_size=64, log_every=100),
        task="toy",
        model_cfg=TINY,
    )
    assert res.final_loss < 0.35 * res.first_loss
    assert res.checkpoint.planner.surprise_threshold > 0


def test_mlp_overfits_a_tiny_dataset() -> None:
    eps = toy_episodes(n=2, T=24)
    res = train(
        eps,
        TrainConfig(kind="mlp", steps=200, batch_size=64, log_every=50),
        task="toy",
        model_cfg=MLPConfig(state_dim=DS, action_dim=DA, hidden=32),
    )
    assert res.final_loss < 0.2 * res.first_loss


def test_training_is_deterministic_under_a_seed() -> None:
    eps = toy_episodes(n=2, T=16)
    runs = [
        train(
            eps,
            TrainConfig(steps=20, batch_size=16, seed=s, log_every=0),
            task="toy",
            model_cfg=TINY,
        )
        for s in (3, 3, 4)
    ]
    assert state_dict_equal(runs[0].checkpoint.model, runs[1].checkpoint.model)
    assert not state_dict_equal(runs[0].checkpoint.model, runs[2].checkpoint.model)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = train(
            toy_episodes(n=2, T=16),
            TrainConfig(steps=5, batch_size=8, log_every=0),
            task="toy",
            model_cfg=TINY,
        )
    finally:
        torch.set_num_threads(threads)
    return save_checkpoint(res.checkpoint, tmp_path_factory.mktemp("ckpt") / "rolling-toy")


def test_checkpoint_round_trip_is_bit_exact(saved: Path) -> None:
    a, b = load_checkpoint(saved), load_checkpoint(saved)
    assert state_dict_equal(a.model, b.model)
    res2 = load_checkpoint(saved)
    for k, v in a.normalizer.to_arrays().items():
        np.testing.assert_array_equal(v, res2.normalizer.to_arrays()[k])
    assert a.kind == "rolling" and a.task == "toy" and a.planner == b.planner
    # save the loaded one again: same bytes
    again = save_checkpoint(a, saved.parent / "again")
    assert (again / "model.safetensors").read_bytes() == (saved / "model.safetensors").read_bytes()
    assert not any(p.suffix in (".pt", ".pth", ".pkl", ".bin") for p in saved.iterdir())


def test_load_planner_from_a_directory_drives_a_tick(saved: Path) -> None:
    p = load_planner(str(saved), spec=toy_spec())
    p.reset(obs(np.zeros(DS)))
    p.observe(obs(np.ones(DS), seq=1))
    assert p.refine(0) == 1
    assert np.all(np.isfinite(p.action()))


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_corrupt_checkpoints_give_one_line_value_errors(saved: Path, tmp_path: Path) -> None:
    bad = _copy(saved, tmp_path / "trunc")
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors does not match its sha256") as e:
        load_planner(str(bad), spec=toy_spec())
    assert "\n" not in str(e.value)

    bad2 = _copy(saved, tmp_path / "json")
    (bad2 / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json is not JSON"):
        load_planner(str(bad2), spec=toy_spec())

    bad3 = _copy(saved, tmp_path / "dims")
    cfg = json.loads((bad3 / "config.json").read_text())
    cfg["model"]["n_embd"] = 64
    (bad3 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="bad checkpoint"):
        load_planner(str(bad3), spec=toy_spec())


def test_mismatched_plant_and_unknown_policies_are_refused(saved: Path) -> None:
    wrong = toy_spec(goal_dim=3)
    with pytest.raises(ValueError, match=r"trained for state/action/goal dims \(4, 1, 0\)"):
        load_planner(str(saved), spec=wrong)
    with pytest.raises(ValueError, match="unknown policy kind 'diffuser'"):
        load_planner("diffuser:toy", spec=toy_spec())
    with pytest.raises(ValueError, match="no shipped checkpoint for 'rolling:no-such-task'"):
        load_planner("rolling:no-such-task", spec=toy_spec())
    with pytest.raises(ValueError, match="neither KIND:TASK nor a checkpoint directory"):
        load_planner("/no/such/dir", spec=toy_spec())


def test_periodic_evaluation_sees_snapshots_and_leaves_the_weights_alone() -> None:
    eps = toy_episodes(n=2, T=16)
    cfg = TrainConfig(steps=12, batch_size=8, log_every=0)
    seen: list[str] = []

    def evaluate(ckpt) -> str:  # type: ignore[no-untyped-def]
        seen.append(ckpt.kind)
        return "ok"

    plain = train(eps, cfg, task="toy", model_cfg=TINY)
    evald = train(eps, cfg, task="toy", model_cfg=TINY, evaluate=evaluate, eval_every=5)
    assert seen == ["rolling", "rolling"]  # steps 5 and 10 (not the last)
    assert state_dict_equal(plain.checkpoint.model, evald.checkpoint.model)
