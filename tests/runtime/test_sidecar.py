"""The sidecar's size: every tick of a short run, at most `MAX_SECONDS` of a long one."""

from __future__ import annotations

import numpy as np

from runtime.protocols import Observation
from runtime.sidecar import MAX_SECONDS, Sidecar, capacity_for


def test_capacity_is_the_run_up_to_the_cap() -> None:
    assert capacity_for(1_000, 100.0) == 1_000
    assert capacity_for(3_600 * 500, 500.0) == round(MAX_SECONDS * 500)


def test_ticks_past_the_capacity_are_counted_not_stored() -> None:
    car = Sidecar(3, state_dim=2)
    obs = Observation(seq=0, t_ns=0, state=np.ones(2), goal=np.zeros(0))
    for _ in range(5):
        car.record(obs, levels=None, reset=False)
    assert car.n == 3 and car.dropped == 2
    assert np.all(car.arrays()["state"] == 1.0)
