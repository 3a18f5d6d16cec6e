"""docs/protocol.md and the server agree: one test per point where a client written from the
document alone could meet behaviour the document does not describe."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from hw_bridge import FirstOrderMotor, RemotePlant, ServerConfig, ServerCore
from hw_bridge.codec import MAX_DEPTH, ProtocolError, decode, encode, encode_array, message
from runtime import Command, FakeClock

from .helpers import command, hello, replies

DOC = " ".join((Path(__file__).parents[2] / "docs" / "protocol.md").read_text().split())
MS = 1_000_000


def _core(mode: str = "realtime") -> tuple[ServerCore, FakeClock, FirstOrderMotor]:
    clock = FakeClock(start_ns=10**9)
    motor = FirstOrderMotor(mode=mode, clock=clock, rate_hz=200.0)  # type: ignore[arg-type]
    core = ServerCore(motor, ServerConfig(mode=mode, watchdog_ms=100.0), clock=clock)  # type: ignore[arg-type]
    core.start()
    return core, clock, motor


def _cmd_map(seq: int, action: float = 0.3, **extra: Any) -> dict[str, Any]:
    return message("command", seq, 0, stream=7, tick=seq, obs_seq=-1,
                   action=encode_array(np.array([action])), deadline_ns=None, **extra)


# 1. Map keys are str, ext types make a message invalid: wherever they sit.


@pytest.mark.parametrize("extra", [
    {b"note": 1},  # a bin key among unknown fields
    {"note": msgpack.Timestamp(1, 2)},  # the timestamp ext (type -1) as an unknown field
    {"note": [1, msgpack.Timestamp(1, 2)]},
    {"note": {"deep": {b"k": 0}}},
], ids=["bin-key", "timestamp", "timestamp-in-array", "nested-bin-key"])
def test_bin_keys_and_timestamps_in_unknown_fields_make_the_command_invalid(extra: Any) -> None:
    assert "Map keys are `str`" in DOC and "ext** types" in DOC
    core, _, motor = _core()
    core.handle(b"A", hello())
    core.outbox.clear()
    payload = msgpack.packb({**_cmd_map(2), **extra}, use_bin_type=True)
    core.handle(b"A", payload)
    err = replies(core.outbox, b"A", "error")
    assert [e["code"] for e in err] == ["bad_message"]
    assert core.counters["applied"] == 0 and motor.counters()["applied"] == 0


def test_the_same_command_without_them_is_applied() -> None:  # the control for the test above
    core, _, _ = _core()
    core.handle(b"A", hello())
    core.handle(b"A", msgpack.packb({**_cmd_map(2), "note": {"deep": [1, "x"]}}))
    assert core.counters["applied"] == 1


# 2. A decode-stage error names the message's seq whenever it parsed.


def test_decode_errors_carry_ref_seq_when_the_seq_parsed() -> None:
    assert "whenever the frame is a map with a valid `seq`" in DOC
    core, _, _ = _core()
    core.handle(b"A", hello())
    core.outbox.clear()
    core.handle(b"A", encode({**_cmd_map(5), "stream": "not an int"}))
    core.handle(b"A", encode({**_cmd_map(6), "seq": -3}))  # seq itself ill-typed
    core.handle(b"A", b"\xc1")  # not msgpack at all
    errs = replies(core.outbox, b"A", "error")
    assert [(e["code"], e["ref_seq"]) for e in errs] == [
        ("bad_message", 5), ("bad_message", None), ("bad_message", None)
    ]


# 3. A multi-part client frame is answered like any other malformed frame.


def test_a_multipart_frame_is_counted_and_answered(serve) -> None:
    assert "is counted as `bad_message` and answered" in DOC
    rs = serve()
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(rs.address)
    try:
        s.send_multipart([hello(), b"extra"])
        assert s.poll(2000), "no answer to a multi-part frame"
        reply = decode(s.recv())
        assert reply["type"] == "error" and reply["code"] == "bad_message"
        assert rs.server.counters["bad_message"] == 1
    finally:
        s.close()


# 4. A hello carries v: 1; any other v is refused, fatally, naming the rule.


@pytest.mark.parametrize("v", [0, 2, 99])
def test_a_hello_with_another_header_version_is_refused(v: int) -> None:
    assert "A server refuses a hello whose `v` is not 1" in DOC
    core, _, _ = _core()
    core.handle(b"A", encode({**message("hello", 1, 0, versions=[1, 2], role="control"), "v": v}))
    (err,) = replies(core.outbox, b"A")
    assert err["type"] == "error" and err["code"] == "bad_version" and err["fatal"] is True
    assert err["ref_seq"] == 1 and "v: 1" in err["message"]
    assert b"A" not in core.peers and core.controller is None
    assert core.counters["refused"] == 1


def test_a_hello_with_v1_offering_two_versions_gets_the_highest() -> None:
    core, _, _ = _core()
    core.handle(b"A", encode(message("hello", 1, 0, versions=[1, 2], role="control")))
    (welcome,) = replies(core.outbox, b"A", "welcome")
    assert welcome["version"] == 2 and welcome["v"] == 2


# 5. Heartbeats go out every heartbeat_ms, also while the client sends commands.


def test_a_commanding_client_still_heartbeats(serve) -> None:
    assert "also while it sends commands" in DOC
    rs = serve(FirstOrderMotor(mode="realtime", rate_hz=100.0), mode="realtime")
    with RemotePlant(rs.address) as plant:
        plant.reset(0)
        samples = len(plant.sync.samples)
        t_end = time.monotonic() + 0.55
        k = 0
        while time.monotonic() < t_end:  # a 100 Hz controller: a command every tick
            obs = plant.observe()
            k += 1
            now = plant.clock.now_ns()
            plant.apply(Command(k, now, np.array([0.1]), now + 20 * MS))
            time.sleep(0.01)
            del obs
        plant.observe()
        # heartbeat_ms = 100: about five answered in 0.55 s; the hello gave the first sample
        assert len(plant.sync.samples) - samples >= 3


# 6. The offset example follows from the heartbeat example's timestamps.


def test_the_offset_example_follows_from_the_heartbeat_example() -> None:
    t1 = int(re.search(r'"type": "heartbeat", "seq": 43, "t_ns": (\d+)', DOC).group(1))  # type: ignore[union-attr]
    reply = re.search(r'"echo_seq": 43, "echo_t_ns": \d+, "rx_t_ns": (\d+)', DOC)
    t3 = int(re.search(r'"type": "heartbeat", "seq": 0, "t_ns": (\d+)', DOC).group(1))  # type: ignore[union-attr]
    assert reply is not None
    t2 = int(reply.group(1))
    t4 = int(re.search(r"reply arrived at t4 = (\d+)", DOC).group(1))  # type: ignore[union-attr]
    offset = int(re.search(r"offset (-?\d+) from the heartbeat", DOC).group(1))  # type: ignore[union-attr]
    rtt_us = int(re.search(r"round trip (\d+) us", DOC).group(1))  # type: ignore[union-attr]
    lag_us = int(re.search(r"means (\d+) us", DOC).group(1))  # type: ignore[union-attr]
    ack_lag = int(re.search(r'"ack_lag_ns": (-?\d+)', DOC).group(1))  # type: ignore[union-attr]
    assert (t4 - t1) - (t3 - t2) == rtt_us * 1000 > 0
    assert ((t2 - t1) + (t3 - t4)) // 2 == offset
    assert ack_lag - offset == lag_us * 1000


# 7. A realtime plant whose episode ended refuses commands with plant_error until a reset.


def test_commands_after_the_episode_ends_are_refused_until_reset() -> None:
    assert "commands are answered `plant_error`" in DOC
    from sims.plant import MujocoPlant

    clock = FakeClock(start_ns=10**9)
    plant = MujocoPlant("bimodal", mode="realtime", clock=clock, run_thread=False,
                        disturbances=False)
    core = ServerCore(plant, ServerConfig(mode="realtime"), clock=clock)
    core.start()
    core.handle(b"A", hello())
    period = plant.spec().period_ns
    seq = 1
    while not plant.observe().done:
        seq += 1
        clock.advance_ns(period)
        core.handle(b"A", command(seq, [0.0, 0.0], deadline_ns=clock.now_ns() + period))
        plant.step_realtime_tick()
        core.tick()
    applied = core.counters["applied"]
    core.outbox.clear()
    core.handle(b"A", command(seq + 1, [0.0, 0.0], deadline_ns=clock.now_ns() + period))
    (err,) = replies(core.outbox, b"A", "error")
    assert err["code"] == "plant_error" and err["ref_seq"] == seq + 1
    assert core.counters["applied"] == applied  # not acknowledged as applied
    reset = encode(message("reset", seq + 2, 0, seed=1))
    core.handle(b"A", reset)
    core.handle(b"A", command(seq + 3, [0.0, 0.0], deadline_ns=clock.now_ns() + period))
    assert core.counters["applied"] == applied + 1
    plant.close()


# 8. The trip itself publishes a state with safe: true.


def test_the_watchdog_trip_is_published_at_once_even_on_a_frozen_plant() -> None:
    assert "a state with `safe: true` goes to every session at the trip" in DOC
    core, clock, _ = _core()
    core.handle(b"A", hello())
    core.handle(b"B", hello(role="observe"))
    core.handle(b"A", command(2, [0.2]))
    core.tick()  # the state after the command goes out
    last_cmd = clock.now_ns()
    frozen = core.plant.observe()
    core.plant.observe = lambda: frozen  # type: ignore[method-assign]  # no new readings
    core.outbox.clear()
    while not core.events:
        clock.advance_ns(core.spec.period_ns)
        core.tick()
    assert clock.now_ns() - last_cmd <= 100 * MS + core.spec.period_ns
    for who in (b"A", b"B"):
        states = replies(core.outbox, who, "state")
        assert states and states[-1]["safe"] is True


def test_a_goodbye_publishes_the_safe_state_to_observers() -> None:
    core, _, _ = _core()
    core.handle(b"A", hello())
    core.handle(b"B", hello(role="observe"))
    core.handle(b"A", command(2, [0.2]))
    core.outbox.clear()
    core.handle(b"A", encode(message("goodbye", 3, 0)))
    states = replies(core.outbox, b"B", "state")
    assert states and states[-1]["safe"] is True


# 9. The nesting limit is documented and enforced as bad_message.


def test_nesting_deeper_than_the_documented_limit_is_a_bad_message() -> None:
    assert f"at most {MAX_DEPTH:,} levels deep" in DOC
    ok = message("heartbeat", 1, 0, note=0)
    deep_ok = b"\x91" * (MAX_DEPTH - 1) + b"\xc0"  # the map is the outermost level
    payload = encode(ok)[:-1] + deep_ok  # replace the last value (note: 0) by the deep array
    assert decode(payload)["type"] == "heartbeat"
    with pytest.raises(ProtocolError) as e:
        decode(encode(ok)[:-1] + b"\x91" + deep_ok)
    assert e.value.code == "bad_message" and "deep" in str(e.value)


# 10. `refused` counts every refused hello, whatever its role.


def test_refused_counts_observer_hellos_refused_for_mismatch_or_version() -> None:
    assert "`refused` (hellos refused, any role" in DOC
    core, _, _ = _core()
    core.handle(b"A", hello(role="observe", expect={"state_dim": 99}))
    core.handle(b"B", encode(message("hello", 1, 0, versions=[7], role="observe")))
    assert core.counters["refused"] == 2 and not core.peers


# 11. The string limit counts UTF-8 bytes.


def test_the_string_limit_counts_utf8_bytes() -> None:
    assert "1,024 bytes of UTF-8" in DOC
    core, _, _ = _core()
    core.handle(b"A", hello())
    core.outbox.clear()
    ascii_ok, wide = "a" * 1024, "é" * 600  # 600 characters, 1,200 bytes
    core.handle(b"A", encode(_cmd_map(2, fallback=ascii_ok)))
    core.handle(b"A", encode(_cmd_map(3, fallback=wide)))
    core.handle(b"A", encode(_cmd_map(4, fallback="é" * 512)))  # exactly 1,024 bytes
    codes = [e["code"] for e in replies(core.outbox, b"A", "error")]
    assert codes == ["bad_message"] and core.counters["applied"] == 2
    (msg,) = [m for m in replies(core.outbox, b"A", "error")]
    assert msg["ref_seq"] == 3


def test_the_server_wakes_for_the_watchdog_not_only_at_its_ticks(serve) -> None:
    """A 20 Hz plant (50 ms period): the safe action comes within a few ms of watchdog_ms,
    well before the next tick would have brought it."""
    rs = serve(FirstOrderMotor(mode="realtime", rate_hz=20.0), mode="realtime", watchdog_ms=30.0)
    with RemotePlant(rs.address) as plant:
        plant.reset(0)
        plant.observe()
        now = plant.clock.now_ns()
        plant.apply(Command(1, now, np.array([0.2]), now + 40 * MS))
        deadline = time.monotonic() + 2.0
        while not rs.server.events and time.monotonic() < deadline:
            time.sleep(0.002)
        (ev,) = rs.server.events
        assert ev.kind == "watchdog"
        late_ms = (ev.t_ns - ev.last_valid_ns) / 1e6 - 30.0
        assert 0.0 < late_ms < 15.0, late_ms  # a tick-bound trip would be up to 50 ms late


def test_a_command_the_plant_finds_late_is_answered_late_and_not_acknowledged() -> None:
    core, clock, motor = _core()
    core.handle(b"A", hello())
    core.outbox.clear()

    def slow_apply(cmd: Command, apply: Any = motor.apply) -> None:
        clock.advance_ns(3 * MS)  # the plant's lock was held: the deadline passes meanwhile
        apply(cmd)

    motor.apply = slow_apply  # type: ignore[method-assign]
    core.handle(b"A", command(2, [0.2], deadline_ns=clock.now_ns() + 1 * MS))
    (err,) = replies(core.outbox, b"A", "error")
    assert err["code"] == "late" and err["ref_seq"] == 2
    assert core.counters["applied"] == 0 and core.counters["late"] == 1 and core.ack_seq == -1
    assert motor.counters()["late"] == 1
