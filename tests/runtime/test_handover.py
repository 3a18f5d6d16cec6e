"""Async hand-over: the tick thread never reads a torn action."""

import threading

import numpy as np

from runtime.handover import LatestAction, Mailbox
from runtime.protocols import Observation


def test_concurrent_publish_and_read_never_tear() -> None:
    da = 64
    slot = LatestAction(da)
    stop = threading.Event()
    writes = [0]

    def writer() -> None:
        i = 0
        buf = np.empty(da)
        while not stop.is_set():
            i += 1
            buf.fill(float(i))  # every element equal: a torn read shows two values
            slot.publish(buf, obs_seq=i, steps=i)
        writes[0] = i

    t = threading.Thread(target=writer)
    t.start()
    out = np.empty(da)
    seen = set()
    try:
        for _ in range(20_000):
            seq, steps = slot.read(out)
            assert np.all(out == out[0]), "torn read"
            if seq > 0:
                assert out[0] == float(seq) == float(steps)
            seen.add(seq)
    finally:
        stop.set()
        t.join()
    assert writes[0] > 0 and len(seen) > 1  # the two threads really interleaved


def test_mailbox_is_newest_wins_and_keeps_a_pending_reset() -> None:
    box = Mailbox()
    box.post(Observation(seq=1, t_ns=0, state=np.zeros(1)), reset=True)
    box.post(Observation(seq=2, t_ns=0, state=np.zeros(1)))
    obs, reset = box.take(timeout_s=None)
    assert obs is not None and obs.seq == 2 and reset
    obs, reset = box.take(timeout_s=0.0)
    assert obs is None and not reset
