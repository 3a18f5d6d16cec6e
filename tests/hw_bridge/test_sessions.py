"""A new controller session is never answered by an earlier session's acknowledgements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hw_bridge import RemotePlant
from runtime.protocols import Command


def test_a_second_controllers_reset_returns_the_fresh_state(serve: Callable[..., Any]) -> None:
    rs = serve(mode="lockstep")
    first = RemotePlant(rs.address, name="first")
    for i in range(20):  # the server's last reset ack now names seq ~40 of that session
        first.reset(seed=i)
        first.apply(Command(seq=i, t_ns=0, action=np.full(1, 0.5), deadline_ns=0))
    before = first.observe()
    first.close()

    second = RemotePlant(rs.address, name="second")
    try:
        obs = second.reset(seed=0)
        assert obs.seq > before.seq  # the reset's own state, not the last one of `first`
        # lockstep: apply waits for this session's own ack, so the plant really stepped
        second.apply(Command(seq=0, t_ns=0, action=np.full(1, 0.5), deadline_ns=0))
        after = second.observe()
        assert after.seq > obs.seq
    finally:
        second.close()
