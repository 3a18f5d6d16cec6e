"""A broken or hostile server cannot crash the client: every frame is checked or dropped."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest

from hw_bridge.client import RemotePlant
from hw_bridge.codec import encode, encode_array, message, obs_to_wire, spec_to_wire
from hw_bridge.driver import motor_spec

from .test_fuzz import malformed_frames


class _NullSocket:
    def send(self, data: bytes, flags: int = 0) -> None:
        pass

    def close(self, linger: int = 0) -> None:
        pass

    def getsockopt(self, option: int) -> int:
        return 0  # nothing to read, ever


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> RemotePlant:
    """A RemotePlant wired to nothing, fed frames by hand."""
    monkeypatch.setattr(RemotePlant, "_open", lambda self: None)
    monkeypatch.setattr(RemotePlant, "_wait_connected", lambda self, t: None)
    plant = RemotePlant("tcp://nowhere:1")
    plant._sock = _NullSocket()  # type: ignore[assignment]
    plant._on_message(_welcome())
    assert plant.connected
    return plant


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
    client._on_message(encode(_state(1)))
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
        client._on_message(frame)  # must not raise
    obs = client.observe()
    assert obs.stale and obs.seq == good.seq  # nothing malformed replaced the last good state
    np.testing.assert_array_equal(obs.state, good.state)
    assert client.counts["errors"] > 0
