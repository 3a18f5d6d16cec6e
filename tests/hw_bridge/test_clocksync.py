"""The clock-offset estimate against a simulated pair of clocks."""

from __future__ import annotations

import numpy as np

from hw_bridge import ClockSync


def test_symmetric_delays_give_the_exact_offset() -> None:
    sync = ClockSync()
    offset = 5_000_000_123  # server clock - client clock
    t1 = 1_000
    t2 = t1 + 40_000 + offset  # 40 us each way, 10 us inside the server
    t3 = t2 + 10_000
    t4 = t3 - offset + 40_000
    sync.add(t1, t2, t3, t4)
    assert sync.offset_ns == offset and sync.rtt_ns == 80_000


def test_the_least_queued_sample_wins_and_the_error_stays_within_half_its_round_trip() -> None:
    rng = np.random.default_rng(0)
    offset = -777_000_000
    sync = ClockSync(window=16)
    t = 0
    for _ in range(200):
        up, down = (int(x) for x in rng.exponential(200_000, size=2) + 30_000)  # queueing
        t1 = t
        t2 = t1 + up + offset
        t3 = t2 + 5_000
        t4 = t3 - offset + down
        sync.add(t1, t2, t3, t4)
        t += 10_000_000
        rtts = [r for r, _ in sync.samples]
        assert sync.rtt_ns == min(rtts)
        assert abs(sync.offset_ns - offset) <= sync.rtt_ns // 2 + 1


def test_impossible_samples_are_ignored() -> None:
    sync = ClockSync()
    sync.add(100, 50, 60, 90)  # server time inside the exchange longer than the round trip
    assert not sync.samples and sync.offset_ns == 0
