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


@pytest.mark.parametrize(
    "policy", [*shipped_policies(), "pertick:double-pendulum", "chunked-async:double-pendulum"]
)
def test_shipped_checkpoint_loads_and_gives_a_finite_action(policy: str) -> None:
    from policies import load_checkpoint, resolve_policy

    ckpt = load_checkpoint(resolve_policy(policy)[0])
    Ds, Da, Dg = ckpt.dims
    p = load_planner(policy, spec=_spec(Ds, Da, Dg))
    try:
        goal = np.zeros(Dg)
        p.reset(obs(np.zeros(Ds), goal=goal))
        for k in range(1, 4):
            p.observe(obs(np.full(Ds, 0.01 * k), seq=k, goal=goal))
            p.refine(10**9)
            a = p.action()
            assert a.shape == (Da,) and np.all(np.isfinite(a)) and np.all(np.abs(a) <= 1.0)
    finally:
        close = getattr(p, "close", None)
        if close is not None:
            close()


def test_double_pendulum_checkpoints_ship() -> None:
    assert {"rolling:double-pendulum", "chunked:double-pendulum"} <= set(shipped_policies())


def test_shipped_checkpoint_refuses_a_plant_of_other_dims() -> None:
    with pytest.raises(ValueError, match=r"dims \(6, 1, 0\), but plant 'shipped' has \(4, 2, 2\)"):
        load_planner("rolling:double-pendulum", spec=_spec(4, 2, 2))
