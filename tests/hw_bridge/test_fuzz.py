"""Malformed input: the server keeps serving, applies none of it, and counts every frame.

`test_fuzz_10k_malformed_frames_over_a_socket` (default run) sends 10,000 seeded malformed
frames through a real socket into a serving `PlantServer`. The hypothesis harness at the end
is the longer one, run outside `make test`: `pytest -m slow tests/hw_bridge/test_fuzz.py`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq

from hw_bridge import FirstOrderMotor, ServerConfig, ServerCore
from hw_bridge.codec import ProtocolError, decode, encode, encode_array, message
from runtime import Command, FakeClock

from .helpers import command, hello

N_FUZZ = 10_000
REFUSALS = ("bad_message", "bad_version", "out_of_order", "rejected", "unauthorized", "late")


def _valid_command(seq: int) -> dict[str, Any]:
    return message(
        "command",
        seq,
        0,
        stream=7,
        tick=seq,
        obs_seq=-1,
        action=encode_array(np.array([0.1])),
        deadline_ns=None,
    )


def _wrong_value(rng: np.random.Generator, key: str) -> Any:
    """A value of a type `key` must not have (ints too big for int64 included)."""
    choices: list[Any] = [True, 1.5, float("nan"), "x", b"\x00", [], {}, [1, 2], 2**64 - 1]
    if key != "deadline_ns":
        choices.append(None)
    return choices[int(rng.integers(len(choices)))]


def malformed_frames(seed: int, n: int, first_seq: int) -> Iterator[bytes]:
    """`n` frames, none of which may be applied; seqs above `first_seq` are fresh, so only
    the frames meant as replays are refused for their seq."""
    rng = np.random.default_rng(seed)
    seq = first_seq
    for i in range(n):
        seq += 1
        kind = i % 10
        if kind == 0:  # random bytes
            yield rng.bytes(int(rng.integers(0, 300)))
        elif kind == 1:  # truncated msgpack
            full = encode(_valid_command(seq))
            yield full[: int(rng.integers(0, len(full)))]
        elif kind == 2:  # a field of the wrong type (or missing)
            m = _valid_command(seq)
            key = list(m)[int(rng.integers(len(m)))]
            if rng.random() < 0.2:
                del m[key]
            else:
                m[key] = _wrong_value(rng, key)
            yield encode(m)
        elif kind == 3:  # wrong shape / dtype / byte count
            m = _valid_command(seq)
            a = m["action"]
            v = int(rng.integers(6))
            if v == 0:
                m["action"] = encode_array(np.zeros(int(rng.integers(2, 9))))
            elif v == 1:
                m["action"] = encode_array(np.zeros((1, 1)))
            elif v == 2:
                a["dtype"] = [">f8", "<i8", "|u1", "<c16", "object", ""][int(rng.integers(6))]
            elif v == 3:
                a["data"] = a["data"][:-1]
            elif v == 4:
                a["shape"] = [-1]
            else:
                m["action"] = encode_array(np.zeros(0))
            yield encode(m)
        elif kind == 4:  # huge arrays: claimed, or real and over the size limit
            m = _valid_command(seq)
            if rng.random() < 0.5:
                m["action"]["shape"] = [int(rng.choice([10**6, 2**40, 2**62]))]
            else:
                m["action"] = {"dtype": "<f8", "shape": [9000], "data": bytes(72_000)}
            yield encode(m)
        elif kind == 5:  # NaN / inf
            m = _valid_command(seq)
            m["action"] = encode_array(np.array([[np.nan, np.inf, -np.inf][int(rng.integers(3))]]))
            yield encode(m)
        elif kind == 6:  # replayed / out-of-order sequence numbers
            yield encode(_valid_command(int(rng.integers(0, first_seq + 1))))
        elif kind == 7:  # wrong protocol version
            m = _valid_command(seq)
            m["v"] = [0, 2, 99, -1, "1", 1.0][int(rng.integers(6))]
            yield encode(m)
        elif kind == 8:  # valid msgpack, not a message: lists, scalars, ext, odd maps
            objs: list[Any] = [
                [1, 2, 3],
                42,
                "hello",
                None,
                {"v": 1},
                {1: 2},
                msgpack.ExtType(5, b"abc"),
                {"v": 1, "type": "command"},
                [[[[[[[]]]]]]],
                {"v": 1, "type": "nope", "seq": seq, "t_ns": 0},
            ]
            yield msgpack.packb(objs[int(rng.integers(len(objs)))], use_bin_type=True)
        else:  # types a client may not send, and a multi-byte garbage tail
            if rng.random() < 0.5:
                yield encode(message(str(rng.choice(["state", "welcome", "error"])), seq, 0))
            else:
                yield encode(_valid_command(seq)) + b"\x00"


def test_fuzz_10k_malformed_frames_over_a_socket(serve) -> None:
    # budgets far above the flood: every frame is judged (the limits have their own tests)
    rs = serve(config=ServerConfig(mode="lockstep", frames_per_s=1e9, frames_burst=10**6,
                                   errors_per_s=1e9, errors_burst=10**6))
    server = rs.server
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100)  # replies we do not read are dropped, never block anyone
    sock.connect(rs.address)
    try:
        sock.send(hello(1))
        sock.send(command(2, [0.1]))  # one valid command: the baseline
        _until(lambda: server.counters["applied"] == 1)
        base = server.counters
        for frame in malformed_frames(seed=0, n=N_FUZZ, first_seq=2):
            sock.send(frame)
        _until(lambda: server.counters["received"] >= base["received"] + N_FUZZ)
        after = server.counters
        assert after["received"] - base["received"] == N_FUZZ
        assert after["applied"] == 1 and after["plant_applied"] == 1  # none applied
        refused = sum(after[k] - base[k] for k in REFUSALS)
        assert refused == N_FUZZ, {k: after[k] - base[k] for k in REFUSALS}
        for k in ("bad_message", "bad_version", "out_of_order", "rejected"):
            assert after[k] - base[k] > 0, k  # every category was exercised and counted
        sock.send(command(10**9, [0.1]))  # and the server still serves
        _until(lambda: server.counters["applied"] == 2)
    finally:
        sock.close()


def _until(cond: Any, timeout_s: float = 30.0) -> None:
    end = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def test_decode_raises_only_protocol_errors_on_the_fuzz_corpus() -> None:
    n_ok = 0
    for frame in malformed_frames(seed=1, n=2000, first_seq=2):
        try:
            decode(frame)
            n_ok += 1  # well-formed header (replays, NaN, bad shapes): refused later
        except ProtocolError as exc:
            assert exc.code in ("bad_message", "bad_version")
    assert 0 < n_ok < 2000


# --- the longer harness (hypothesis), outside the default run --------------------------------


class _CheckingMotor(FirstOrderMotor):
    """Fails the test if anything non-finite or out of limits reaches the 'hardware'."""

    def apply(self, cmd: Command) -> None:
        a = cmd.action
        spec = self.spec()
        if not (
            np.all(np.isfinite(a))
            and np.all(a >= spec.action_low)
            and np.all(a <= spec.action_high)
        ):
            raise AssertionError(f"unsafe action reached the plant: {a!r}")
        super().apply(cmd)


@pytest.mark.slow
def test_hypothesis_server_core_survives_arbitrary_messages() -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.text(max_size=20),
        st.binary(max_size=64),
    )
    values = st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=12,
    )
    arrays = st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(["<f8", "<f4", ">f8", "<i4", "x"]),
            "shape": st.lists(st.integers(-2, 5), max_size=3),
            "data": st.binary(max_size=64),
        }
    )
    commands = st.fixed_dictionaries(
        {
            "v": st.sampled_from([1, 1, 1, 2, 0]),
            "type": st.just("command"),
            "seq": st.integers(-3, 2**40),
            "t_ns": st.integers(-(2**63), 2**63 - 1),
            "stream": st.integers(-1, 2**33),
            "tick": st.integers(-5, 5),
            "obs_seq": st.integers(-5, 5),
            "action": arrays | values,
            "deadline_ns": st.none() | st.integers(-(2**63), 2**63 - 1),
        },
        optional={"fallback": values},
    )
    frames = st.one_of(
        st.binary(max_size=256),
        values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
        commands.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    )

    clock = FakeClock()
    core = ServerCore(
        _CheckingMotor(mode="realtime", clock=clock), ServerConfig(mode="realtime"), clock=clock
    )
    core.start()
    core.handle(b"A", hello(1))

    @settings(max_examples=20_000, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(frames, min_size=1, max_size=8), st.integers(0, 10**9))
    def run(batch: list[bytes], dt: int) -> None:
        core.handle(b"A", hello(1))  # keep A the controller whatever time has passed
        for frame in batch:
            core.handle(b"A", frame)  # must not raise
            core.handle(b"B", frame)  # no session: must never apply
        clock.advance_ns(dt)
        core.tick()
        core.outbox.clear()

    run()
    assert core.counters["received"] > 20_000
    assert (
        core.counters["applied"] == core.plant.counters()["applied"] - core.counters["safe_applied"]
    )


def test_fast_accept_paths_agree_with_the_reference_field_check() -> None:
    from hw_bridge.codec import _FAST, check_fields

    checked = 0
    corpus = list(malformed_frames(seed=2, n=3000, first_seq=2))
    corpus += [command(k, [0.1], deadline_ns=d) for k, d in ((3, None), (4, 10**9))]
    corpus += [
        encode(message("state", 1, 0, obs={}, ack_seq=a, reset_seq=-1, safe=s))
        for a, s in ((1, True), (2**63, False), (-1, 1))
    ]
    for frame in corpus:
        try:
            m = msgpack.unpackb(frame, raw=False, strict_map_key=False)
        except Exception:
            continue
        if not isinstance(m, dict) or not isinstance(m.get("type"), str) or m["type"] not in _FAST:
            continue
        try:
            check_fields(m, m["type"])
            reference_ok = True
        except ProtocolError:
            reference_ok = False
        assert _FAST[m["type"]](m) in (reference_ok, False), m  # fast never accepts more
        if m.get("v") == 1 and reference_ok and m["type"] == "command":
            assert _FAST["command"](m), m  # and accepts what the encoder makes
        checked += 1
    assert checked > 1000
