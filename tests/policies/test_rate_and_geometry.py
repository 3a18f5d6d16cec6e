"""The rate a checkpoint records (trainer, shipped configs) and the task geometry the recovery
rules read from `sims` instead of copying it."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from policies import load_checkpoint, model_rate_hz, resolve_policy, save_checkpoint
from policies import recovery as rec
from policies.train import TrainConfig, train

from .conftest import toy_episodes


def test_train_records_the_rate_it_is_given_and_loading_reads_it(tmp_path: Path) -> None:
    cfg = TrainConfig(kind="mlp", steps=2, log_every=0)
    ckpt = train(toy_episodes(n=2, T=20), cfg, task="toy", rate_hz=250.0).checkpoint
    assert ckpt.train == {"rate_hz": 250.0}
    assert model_rate_hz(ckpt) == 250.0
    loaded = load_checkpoint(save_checkpoint(ckpt, tmp_path / "ck"))
    assert loaded.train["rate_hz"] == 250.0 and model_rate_hz(loaded) == 250.0


def test_train_without_a_rate_records_none_and_refuses_a_bad_one() -> None:
    cfg = TrainConfig(kind="mlp", steps=1, log_every=0)
    assert train(toy_episodes(n=2, T=20), cfg, task="toy").checkpoint.train == {}
    with pytest.raises(ValueError, match="rate_hz"):
        train(toy_episodes(n=2, T=20), cfg, task="toy", rate_hz=0.0)


def test_shipped_checkpoints_record_their_task_rate() -> None:
    from policies import shipped_policies
    from sims.registry import get_task

    names = shipped_policies()
    assert names
    for name in names:
        ckpt = load_checkpoint(resolve_policy(name)[0])
        assert ckpt.train["rate_hz"] == get_task(ckpt.task).rate_hz, name


def test_recovery_geometry_comes_from_the_task_modules() -> None:
    from sims.tasks import bimodal, reacher_moving

    g = rec.bimodal_geometry()
    assert g.block_y_m == pytest.approx(
        (bimodal.BLOCK_Y_M - bimodal.BLOCK_HALF_M[1], bimodal.BLOCK_Y_M + bimodal.BLOCK_HALF_M[1])
    )
    assert g.clear_x_m == pytest.approx(bimodal.BLOCK_HALF_M[0] + bimodal.AGENT_RADIUS_M)
    assert g.dt_s == pytest.approx(1.0 / bimodal.INFO.rate_hz)
    assert rec.reacher_links_m() == reacher_moving.link_lengths_m() == pytest.approx((0.1, 0.11))
    assert rec.BimodalCourse().dt == pytest.approx(g.dt_s)


def test_recovery_rules_take_the_geometry_as_parameters() -> None:
    np.testing.assert_allclose(
        rec.reacher_fingertip_xy(0.0, 0.0, (0.3, 0.2)), [0.5, 0.0], atol=1e-12
    )
    ok = rec.fingertip_on_target(0.01, links_m=(0.3, 0.2))
    assert ok(np.array([math.pi / 2, 0.0, 0.0, 0.0]), np.array([0.0, 0.5]))
    assert not ok(np.array([0.0, 0.0, 0.0, 0.0]), np.array([0.21, 0.0]))
    # a block twice as wide: the same disc is no longer clear of it
    wide = rec.BimodalGeometry(block_y_m=(0.9, 1.1), block_half_x_m=0.6, radius_m=0.05, dt_s=0.02)
    xy, vel = np.array([0.36, 0.95]), np.array([0.0, 0.8])
    assert rec.bimodal_on_course(xy, vel, 1, 0.3)
    assert not rec.bimodal_on_course(xy, vel, 1, 0.3, wide)
    course = rec.recovery_predicate(
        "bimodal", angle_idx=(0,), tol_rad=0.1, tol_m=0.02, geometry=wide
    )[1]
    assert isinstance(course, rec.BimodalCourse) and course.geometry is wide
