"""The checkpoints shipped in the package load, verify and act (specs built here, no sims)."""

from __future__ import annotations

import numpy as np
import pytest

from policies import load_planner, shipped_policies
from runtime.protocols import PlantSpec

from .conftest import obs


def _spec(Ds: int, Da: int, Dg: int) -> PlantSpec:
    return PlantSpec(
        name="shipped",
        state_dim=Ds,
        action_dim=Da,
        goal_dim=Dg,
        action_low=-np.ones(Da),
        action_high=np.ones(Da),
        rate_hz=100.0,
    )


def _actions(policy: str, offset: float, seed: int = 0, *, scaled: bool = False) -> np.ndarray:
    """The actions of three refined ticks on states `0.01 k + offset * sin(1..Ds)`; `scaled`:
    on `mean + 0.01 k + offset * std * sin(1..Ds)` instead, in the checkpoint's state
    statistics (the data's own scale)."""
    from policies import load_checkpoint, resolve_policy

    ckpt = load_checkpoint(resolve_policy(policy)[0])
    Ds, Da, Dg = ckpt.dims
    p = load_planner(policy, spec=_spec(Ds, Da, Dg), seed=seed)
    shift = offset * np.sin(np.arange(1, Ds + 1))
    if scaled:
        stats = ckpt.normalizer
        shift = np.asarray(stats.state_mean, np.float64) + shift * np.asarray(
            stats.state_std, np.float64)
    out = []
    try:
        goal = np.zeros(Dg)
        p.reset(obs(shift, goal=goal))
        for k in range(1, 4):
            p.observe(obs(np.full(Ds, 0.01 * k) + shift, seq=k, goal=goal))
            p.refine(10**9)
            wait_idle = getattr(p, "wait_idle", None)
            if wait_idle is not None:  # chunked-async: the worker's chunk, whatever its speed
                assert wait_idle()
            a = p.action()
            assert a.shape == (Da,)
            out.append(a.copy())
    finally:
        close = getattr(p, "close", None)
        if close is not None:
            close()
    return np.array(out)


@pytest.mark.parametrize(
    "policy", [*shipped_policies(), "pertick:double-pendulum", "chunked-async:double-pendulum"]
)
def test_shipped_checkpoint_acts_on_its_observations_and_reproducibly_per_seed(
    policy: str,
) -> None:
    near = _actions(policy, 0.0)
    # the same seed and observations give the same actions, bit for bit
    np.testing.assert_array_equal(_actions(policy, 0.0), near)
    # other states give other actions: the observation reaches the model. Two probes: a
    # fixed offset, and one standard deviation of the data from its mean (a task whose
    # action is the same over a wide band of states, swerve's straight run, needs the second)
    far = _actions(policy, 0.5)
    moved = np.abs(far - near).max()
    if moved <= 0.05:
        moved = np.abs(_actions(policy, 1.0, scaled=True) - _actions(policy, 0.0, scaled=True)
                       ).max()
    assert moved > 0.05


def test_double_pendulum_checkpoints_ship() -> None:
    assert {"rolling:double-pendulum", "chunked:double-pendulum"} <= set(shipped_policies())


def test_shipped_checkpoint_refuses_a_plant_of_other_dims() -> None:
    with pytest.raises(ValueError, match=r"dims \(6, 1, 0\), but plant 'shipped' has \(4, 2, 2\)"):
        load_planner("rolling:double-pendulum", spec=_spec(4, 2, 2))
