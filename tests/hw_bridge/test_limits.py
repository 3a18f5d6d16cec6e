"""Flood limits: token buckets, per-peer budgets, the observer cap and the drain batch."""

from __future__ import annotations

import os
import time

import pytest
import zmq

from hw_bridge import FirstOrderMotor, PlantServer, ServerConfig, ServerCore
from hw_bridge.budget import Buckets
from hw_bridge.server import DRAIN_BATCH
from runtime import FakeClock

from .helpers import command, heartbeat, hello, replies

MS = 1_000_000


def test_a_bucket_allows_its_burst_then_its_rate() -> None:
    b = Buckets(rate=100.0, burst=10, max_keys=8)
    t = 10**9
    assert sum(b.take(b"a", t) for _ in range(50)) == 10  # the burst, all at one instant
    assert b.take(b"b", t)  # another key has its own bucket
    # one second later: 100 more (the rate), not 110 (the bucket holds at most the burst)
    got = sum(b.take(b"a", t + 10 * MS * k) for k in range(1, 101))
    assert got == 100
    assert sum(b.take(b"a", t + 10**9 + 5 * MS) for _ in range(5)) == 0  # spent to the ns


def test_the_table_is_bounded_and_forgetting_gives_a_fresh_bucket() -> None:
    b = Buckets(rate=1.0, burst=1, max_keys=3)
    assert b.take(b"a", 0) and not b.take(b"a", 0)
    for k in (b"b", b"c", b"d"):
        b.take(k, 0)
    assert len(b) == 3  # `a`, the oldest, was forgotten
    assert b.take(b"a", 0)


def _core(**kw: object) -> tuple[ServerCore, FakeClock]:
    clock = FakeClock(start_ns=10**9)
    motor = FirstOrderMotor(mode="realtime", clock=clock, rate_hz=200.0)
    core = ServerCore(motor, ServerConfig(mode="realtime", **kw), clock=clock)  # type: ignore[arg-type]
    core.start()
    return core, clock


def test_a_garbage_flood_is_dropped_unread_and_its_replies_are_bounded() -> None:
    core, clock = _core()
    core.handle(b"ctl", hello())
    core.outbox.clear()
    junk = os.urandom(64)
    for _ in range(20_000):  # one second of frames at 20 kHz from one peer
        core.handle(b"evil", junk)
        clock.advance_ns(50_000)
    c = core.counters
    assert c["flooded"] >= 20_000 - (5_000 + 500)  # the frame budget: 5,000/s + a burst
    sent = len(replies(core.outbox, b"evil"))
    assert sent <= 1_000 + 100  # session-less peers share 1,000 replies/s (+ a burst)
    assert c["replies_withheld"] > 0
    # the controller was never affected
    core.handle(b"ctl", command(2, [0.1]))
    assert core.counters["applied"] == 1


def test_thousands_of_identities_share_one_reply_budget() -> None:
    core, clock = _core()
    for i in range(5_000):  # every frame from a new identity: no per-identity budget helps
        core.handle(b"id%d" % i, b"\xc1")
        clock.advance_ns(100_000)  # 0.5 s in all
    sent = sum(1 for ident, _ in core.outbox if ident.startswith(b"id"))
    assert sent <= 500 + 100  # 1,000/s over 0.5 s, plus the burst
    assert core.counters["bad_message"] == 5_000  # every frame still counted
    assert len(core._frames) <= core.config.max_tracked_peers


def test_a_hello_storm_from_one_peer_is_cut_to_its_hello_budget() -> None:
    core, clock = _core()
    for seq in range(1, 1_001):  # 1,000 hellos in 0.1 s
        core.handle(b"storm", hello(seq, role="observe"))
        clock.advance_ns(100_000)
    welcomes = replies(core.outbox, b"storm", "welcome")
    assert 10 <= len(welcomes) <= 10 + 3  # the burst, then 20/s
    assert core.counters["flooded"] >= 1_000 - 13


def test_observer_sessions_are_capped_but_a_controller_always_gets_in() -> None:
    core, clock = _core(max_observers=4)
    for i in range(10):
        core.handle(b"obs%d" % i, hello(role="observe"))
    assert sum(p.role == "observe" for p in core.peers.values()) == 4
    busy = [m for i in range(4, 10) for m in replies(core.outbox, b"obs%d" % i, "error")]
    assert {m["code"] for m in busy} == {"busy"} and len(busy) == 6
    core.handle(b"ctl", hello())
    assert core.controller == b"ctl"
    # an observer already in may say hello again (a reconnecting client keeps its place)
    core.outbox.clear()
    clock.advance_ns(10**9)
    core.handle(b"obs0", hello(5, role="observe"))
    assert replies(core.outbox, b"obs0", "welcome")


def test_a_well_behaved_1khz_controller_never_meets_a_limit() -> None:
    core, clock = _core()
    core.handle(b"ctl", hello())
    seq = 1
    for k in range(3_000):  # 3 s at 1 kHz, a heartbeat every 100 ms
        seq += 1
        core.handle(b"ctl", command(seq, [0.0]))
        if k % 100 == 0:
            seq += 1
            core.handle(b"ctl", heartbeat(seq))
        clock.advance_ns(MS)
        core.tick()
    assert core.counters["flooded"] == 0 and core.counters["replies_withheld"] == 0
    assert core.counters["applied"] == 3_000


def test_a_drain_handles_one_batch_then_returns_to_the_clock() -> None:
    server = PlantServer(FirstOrderMotor(mode="realtime"), bind="tcp://127.0.0.1:*",
                         mode="realtime")
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(server.address)
    try:
        server.core.start()
        n = 3 * DRAIN_BATCH
        for _ in range(n):
            s.send(b"\xc1")
        end = time.monotonic() + 5.0
        while server.core.counters["received"] < n and time.monotonic() < end:
            if server._wait(0.05):
                before = server.core.counters["received"]
                server._drain()
                assert server.core.counters["received"] - before <= DRAIN_BATCH
        assert server.core.counters["received"] == n
    finally:
        s.close()
        server.close()


@pytest.mark.parametrize("field", ["frames_per_s", "hellos_burst", "max_tracked_peers"])
def test_config_refuses_nonsense_limits(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ServerConfig(**{field: 0})  # type: ignore[arg-type]
