"""A broken or hostile server cannot crash the client: every frame is checked or dropped."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from hw_bridge.client import RemotePlant
from hw_bridge.codec import encode, encode_array, message, obs_to_wire, spec_to_wire
from hw_bridge.driver import motor_spec

from .test_fuzz import malformed_frames


class _FakeSocket:
    """A DEALER stand-in: sends vanish, `queued` frames are received in order."""

    def __init__(self, fd: int) -> None:
        self.queued: list[bytes] = []
        self.fd = fd

    def setsockopt(self, option: int, value: Any) -> None:
        pass

    def connect(self, address: str) -> None:
        pass

    def send(self, data: bytes, flags: int = 0) -> None:
        pass

    def recv(self, flags: int = 0) -> bytes:
        if not self.queued:
            raise zmq.Again()
        return self.queued.pop(0)

    def getsockopt(self, option: int) -> int:
        if option == zmq.FD:
            return self.fd  # a pipe nobody writes to: select() only times out
        return int(zmq.POLLIN) if self.queued else 0  # zmq.EVENTS

    def close(self, linger: int = 0) -> None:
        pass


class _FakeContext:
    def __init__(self, sock: _FakeSocket) -> None:
        self.sock = sock

    def socket(self, kind: int) -> _FakeSocket:
        return self.sock

    def term(self) -> None:
        pass


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> Iterator[RemotePlant]:
    """A RemotePlant wired to a fake socket that holds a welcome, then fed frames by hand."""
    monkeypatch.delenv("RTDIFF_KEYS", raising=False)  # no CurveZMQ on a fake socket
    r, w = os.pipe()
    sock = _FakeSocket(r)
    sock.queued.append(_welcome())
    monkeypatch.setattr("hw_bridge.link.new_context", lambda: _FakeContext(sock))
    plant = RemotePlant("tcp://nowhere:1", connect_timeout_s=1.0)
    assert plant.connected and plant.mode == "realtime"
    try:
        yield plant
    finally:
        plant.close()
        os.close(r)
        os.close(w)


def _welcome(**over: Any) -> bytes:
    m = message(
        "welcome",
        0,
        0,
        version=1,
        session=1,
        role="control",
        mode="realtime",
        spec=spec_to_wire(motor_spec()),
        limits={"heartbeat_ms": 100.0},
        echo_t_ns=0,
        rx_t_ns=0,
    )
    m.update(over)
    return encode(m)


def _state(seq: int, **over: Any) -> dict[str, Any]:
    obs = obs_to_wire(seq, 0, np.zeros(2), np.zeros(0), 0.0, False, False, {})
    m = message("state", seq, 0, obs=obs, ack_seq=-1, reset_seq=-1, safe=False)
    m.update(over)
    return m


def test_client_survives_malformed_server_frames(client: RemotePlant) -> None:
    client.receiver.on_frame(encode(_state(1)))
    good = client.observe()
    rng = np.random.default_rng(0)
    frames = list(malformed_frames(seed=3, n=3000, first_seq=2))
    for i in range(2000):  # well-formed headers, broken bodies
        m = _state(10 + i)
        key = ["obs", "ack_seq", "safe", "reset_seq"][i % 4]
        m[key] = [None, "x", 1.5, [1], {"a": 1}, 2**64 - 1][int(rng.integers(6))]
        if i % 7 == 0:
            bad_len = [0, 1, 3, 4, 8][int(rng.integers(5))]  # anything but Ds = 2
            m["obs"] = dict(_state(1)["obs"], state=encode_array(np.zeros(bad_len)))
        frames.append(encode(m))
    frames += [
        _welcome(session=1, limits={"heartbeat_ms": "soon"}),
        _welcome(spec={"name": 3}),
        encode(message("heartbeat", 0, 0, echo_seq=1, counters={"a": "b"})),
        encode(message("error", 0, 0, code=3, message=None)),
        msgpack.packb({"v": 1, "type": "goodbye", "seq": 0, "t_ns": 0, "reason": 5}),
    ]
    for frame in frames:
        client.receiver.on_frame(frame)  # must not raise
    obs = client.observe()
    assert obs.stale and obs.seq == good.seq  # nothing malformed replaced the last good state
    np.testing.assert_array_equal(obs.state, good.state)
    assert client.counts["errors"] > 0


def test_fast_state_accepts_only_what_the_reference_checks_accept() -> None:
    """`fast_state` (the client's one-pass path) never accepts a frame that `check_message` +
    `check_obs` refuse, returns the same arrays when it accepts, and accepts the states the
    server's encoder makes."""
    from hw_bridge.codec import ProtocolError, check_message, check_obs, fast_state

    rng = np.random.default_rng(4)
    frames = list(malformed_frames(seed=5, n=3000, first_seq=2))
    bad_values = [None, "x", 1.5, True, -1, [1], [True], [2.0], {"a": 1}, 2**63, 2**64 - 1, b"x"]
    for i in range(6000):
        m = _state(1 + i)
        o = m["obs"]
        where = int(rng.integers(4))
        if where == 0:  # a header or state field
            key = ["v", "seq", "t_ns", "type", "ack_seq", "reset_seq", "safe", "obs"][i % 8]
            m[key] = bad_values[int(rng.integers(len(bad_values)))]
        elif where == 1:  # an obs field
            key = ["seq", "t_ns", "reward", "terminated", "truncated", "info", "stale"][i % 7]
            o[key] = bad_values[int(rng.integers(len(bad_values)))]
        elif where == 2:  # an array map
            arr = dict(o["state" if i % 2 else "goal"])
            key = ["dtype", "shape", "data"][i % 3]
            arr[key] = [
                "<f4",
                ">f8",
                "<i8",
                [2],
                [1],
                [0],
                [True],
                [2.0],
                [1, 2],
                b"\0" * 8,
                b"",
                None,
            ][int(rng.integers(12))]
            o["state" if i % 2 else "goal"] = arr
        # where == 3: left well-formed
        frames.append(encode(m))
    accepted = 0
    for frame in frames:
        try:
            msg = msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True)
        except Exception:
            continue
        fast = fast_state(msg, state_dim=2, goal_dim=0)
        try:
            ref = check_message(msg)
            ok = ref["type"] == "state"
            if ok:
                ref_arrays = check_obs(ref["obs"], state_dim=2, goal_dim=0)
        except ProtocolError:
            ok = False
        if fast is not None:
            assert ok, msg  # fast never accepts more
            assert all(a.dtype == np.float64 and a.flags.writeable for a in fast)
            np.testing.assert_array_equal(fast[0], ref_arrays[0])
            np.testing.assert_array_equal(fast[1], ref_arrays[1])
            accepted += 1
        elif ok and ref["obs"]["state"]["dtype"] == "<f8" and ref["obs"]["goal"]["dtype"] == "<f8":
            raise AssertionError(f"a well-formed <f8 state took the slow path: {msg}")
    assert accepted > 1000
