"""A controller whose plant server went away for good stops with an error instead of waiting."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from hw_bridge import BridgeError, RemotePlant


def test_observe_raises_once_the_link_stayed_lost_past_give_up(
    serve: Callable[..., Any],
) -> None:
    rs = serve(mode="realtime")
    plant = RemotePlant(rs.address, timeout_s=0.2, give_up_s=0.6)
    try:
        plant.reset(seed=0)
        assert plant.observe().state.shape == (2,)
        rs.stop()
        t0 = time.monotonic()
        with pytest.raises(BridgeError, match="lost the link"):
            while time.monotonic() - t0 < 5.0:
                plant.observe()  # stale copies while it reconnects, then the error
                time.sleep(0.01)
        assert 0.6 <= time.monotonic() - t0 < 3.0  # after give_up_s, not long after
    finally:
        plant.close()


def test_a_link_that_comes_back_in_time_is_not_given_up(serve: Callable[..., Any]) -> None:
    rs = serve(mode="realtime")
    plant = RemotePlant(rs.address, timeout_s=0.2, give_up_s=30.0)
    try:
        plant.reset(seed=0)
        plant.session.lost("test")  # a loss noticed, then the hello answered at once
        t_end = time.monotonic() + 2.0
        while not plant.session.connected and time.monotonic() < t_end:
            plant.observe()
            time.sleep(0.01)
        assert plant.session.connected and plant.session.lost_since_ns is None
    finally:
        plant.close()


def test_give_up_must_be_positive() -> None:
    with pytest.raises(ValueError, match="give_up_s"):
        RemotePlant("tcp://127.0.0.1:1", give_up_s=0.0)
