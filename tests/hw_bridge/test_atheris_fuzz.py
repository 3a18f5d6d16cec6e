"""The coverage-guided fuzz harness (`hw_bridge.fuzzing`): its inputs, seeds and mutator, that
each target's invariants really catch a broken bridge, and the findings it has made.

Everything here runs the targets in-process (`run_input`), without atheris; the libFuzzer runs
(a short one per target, the CLI) are in tests/runtime/test_bench_fuzz.py.

Every defect the fuzzer found is fixed and has a regression test at the end with the input
that showed it. `KNOWN_FINDINGS` lists defects found and not fixed yet (none now): the short
libFuzzer runs tolerate a crash only when it is one of these, and each gets a strict-xfail test
until it is fixed.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hw_bridge import fuzzing
from hw_bridge.codec import encode, message, spec_to_wire
from hw_bridge.driver import motor_spec
from hw_bridge.fuzzing import (
    TARGETS,
    WIDE_DA,
    FuzzViolation,
    Mutator,
    Record,
    Script,
    _cmd,
    _error,
    _hello,
    _state_msg,
    parse,
    run_input,
    seeds,
    serialize,
)
from hw_bridge.safety import ActionLimiter, LimitResult

# (target, violation kind, what its detail says): the open findings (module docstring)
KNOWN_FINDINGS: list[tuple[str, str, str]] = []


def is_known_finding(target: str, kind: str, detail: str) -> bool:
    return any(t == target and k == kind and re.search(pattern, detail)
               for t, k, pattern in KNOWN_FINDINGS)


def _violation(target: str, data: bytes, **kw: Any) -> FuzzViolation | None:
    try:
        run_input(target, data, **kw)
    except FuzzViolation as exc:
        return exc
    return None


# --- inputs, seeds, mutator ---------------------------------------------------------------------


def test_any_bytes_parse_and_parsed_records_serialize_back() -> None:
    rng = random.Random(0)
    for _ in range(500):
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        config, records = parse(data)
        assert len(records) <= fuzzing.MAX_RECORDS
        again = parse(serialize(config, records))
        assert again[0] == config
        assert [(r.op, r.payload) for r in again[1]] == [(r.op, r.payload) for r in records]
    assert parse(b"") == (0, [])
    cfg, recs = parse(bytes([0x03, 0x21, 0x02, 0x00, 0xAB, 0xCD, 0x9F]))
    assert cfg == 3
    assert recs[0].payload == b"\xab\xcd" and recs[0].ident == b"B" and recs[0].tick_after
    assert recs[1].payload is None and recs[1].repeat == 2 and recs[1].advance_ns == 2_000_000


def test_the_seeds_run_clean_and_reach_the_deep_states() -> None:
    totals = {t: Counter[str]() for t in TARGETS}
    for target in TARGETS:
        for data in seeds(target):
            totals[target].update(run_input(target, data))
    server, client, codec = totals["server"], totals["client"], totals["codec"]
    for k in ("applied", "rejected", "clamped", "rate_limited", "watchdog_trips", "resets",
              "takeovers", "plan_rows_fed", "plans_limited", "late", "out_of_order",
              "unauthorized", "refused", "stale_stream", "apply_errors", "bad_version"):
        assert server[k] > 0, k
    for k in ("taken", "stale_taken", "nonfinite_states", "reconnects", "fatal", "errors"):
        assert client[k] > 0, k
    for kind in ("hello", "welcome", "state", "command", "heartbeat", "reset", "error", "goodbye"):
        assert codec[f"accepted_{kind}"] > 0, kind
    assert codec["fast_state_accepted"] > 0 and codec["specs_accepted"] > 0


def test_the_mutator_is_deterministic_bounded_and_keeps_frames_msgpack() -> None:
    for target in TARGETS:
        m = Mutator(target)
        data = seeds(target)[0]
        assert m.mutate(data, 4096, 7) == m.mutate(data, 4096, 7)
        changed = frames = still_msgpack = 0
        for seed in range(300):
            out = m.mutate(data, 1500, seed)
            assert len(out) <= 1500
            changed += out != data
            for rec in parse(out)[1]:
                if rec.payload is not None:
                    frames += 1
                    try:
                        fuzzing._unpack_loose(rec.payload)
                        still_msgpack += 1
                    except Exception:
                        pass
        assert changed > 250
        assert still_msgpack > 0.6 * frames  # structure-aware: most frames stay messages
        x = m.crossover(seeds(target)[0], seeds(target)[-1], 2000, 3)
        assert len(x) <= 2000


def test_mutated_inputs_raise_nothing_but_violations() -> None:
    """The harness's own code never fails on what the mutator makes: whatever escapes a
    target is a FuzzViolation (a finding), never the harness's own error."""
    n = 0
    for target in TARGETS:
        m = Mutator(target)
        rng = random.Random(1)
        corpus = list(seeds(target))
        for i in range(120):
            data = m.mutate(rng.choice(corpus), 8192, i)
            try:
                run_input(target, data)
                corpus.append(data)
            except FuzzViolation as exc:
                assert exc.kind in ("invalid_applied", "duplicate_applied", "stale_applied",
                                    "raised", "bad_reply", "bad_state", "codec_contract")
            n += 1
    assert n == 360


# --- the invariants catch a broken bridge -------------------------------------------------------


def test_a_limiter_that_lets_nan_through_is_caught_as_invalid_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = seeds("server")[0]  # sends a NaN action among valid ones
    assert _violation("server", data) is None
    orig = ActionLimiter.limit

    def leaky(self: ActionLimiter, action: Any, *, dt_s: float) -> LimitResult:
        if isinstance(action, np.ndarray) and not np.isfinite(action).all():
            return LimitResult(np.array(action, dtype=np.float64), False, False)
        return orig(self, action, dt_s=dt_s)

    monkeypatch.setattr(ActionLimiter, "limit", leaky)
    exc = _violation("server", data)
    assert exc is not None and exc.kind == "invalid_applied" and "not finite" in exc.detail


def test_a_limiter_that_stops_clamping_is_caught_as_invalid_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ActionLimiter, "limit",
                        lambda self, action, *, dt_s: LimitResult(action.copy(), False, False))
    exc = _violation("server", seeds("server")[0])  # a command of 2.0 in a [-1, 1] box
    assert exc is not None and exc.kind == "invalid_applied" and "outside" in exc.detail


def test_the_built_in_faults_are_caught() -> None:
    data = seeds("server")[0]  # a NaN action, and a replayed command
    nan = _violation("server", data, fault="nan_action")
    assert nan is not None and nan.kind == "invalid_applied"
    dup = _violation("server", data, fault="replay")
    assert dup is not None and dup.kind == "duplicate_applied"


def test_a_core_that_raises_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: Any) -> bool:
        raise KeyError("x")

    monkeypatch.setattr("hw_bridge.core.ServerCore.tick", boom)
    exc = _violation("server", seeds("server")[0])
    assert exc is not None and exc.kind == "raised" and "ServerCore.tick" in exc.detail


def test_a_client_handing_out_a_misshaped_state_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("hw_bridge.receive.fast_state",
                        lambda msg, *, state_dim, goal_dim: (np.zeros(state_dim + 1),
                                                             np.zeros(goal_dim))
                        if isinstance(msg, dict) and msg.get("type") == "state" else None)
    exc = _violation("client", seeds("client")[0])
    assert exc is not None and exc.kind == "bad_state" and "state (3,)" in exc.detail


def test_a_stale_copy_that_leaks_the_callers_writes_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hw_bridge.receive import StateReceiver

    orig = StateReceiver.take

    def take(self: StateReceiver) -> Any:
        obs = orig(self)
        if self.latest is not None:
            self.latest.stale = True  # a repeat hands the same arrays out again
            return self.latest
        return obs

    monkeypatch.setattr(StateReceiver, "take", take)
    exc = _violation("client", seeds("client")[0])
    assert exc is not None and exc.kind == "bad_state" and "stale repeat" in exc.detail


def test_a_fast_path_that_accepts_too_much_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fuzzing, "fast_state",
                        lambda msg, *, state_dim, goal_dim: (np.zeros(state_dim),
                                                             np.zeros(goal_dim)))
    exc = _violation("codec", serialize(0, [Record(0, b"\x93\x01\x02\x03")]))
    assert exc is not None and exc.kind == "codec_contract"


# --- what the fuzzer found, each with the input that showed it ----------------------------------

def _holds(target: str, data: bytes) -> None:
    """The input that showed a finding now passes every invariant of its target."""
    exc = _violation(target, data)
    assert exc is None, exc


def test_a_replayed_hello_does_not_reopen_the_session() -> None:
    """A hello with a seq at or below its live session's last is out_of_order: reopening the
    session would let the replayed command after it be applied again."""
    s = Script(0x01)
    s.send(0, _hello(1)).send(0, _cmd(s, 2, [0.1]))
    s.send(0, _hello(1)).send(0, _cmd(s, 2, [0.1]))
    stats = run_input("server", s.build())
    assert stats["applied"] == 1 and stats["out_of_order"] == 2


def test_a_connection_that_said_goodbye_cannot_replay_older_commands() -> None:
    """The server remembers the last seq of sessions that ended (goodbye, silence) per
    connection: an older hello and command replayed on it stay out_of_order."""
    s = Script(0x01)
    s.send(0, _hello(5)).send(0, _cmd(s, 6, [0.1])).send(0, message("goodbye", 7, s.t))
    s.send(0, _hello(1)).send(0, _cmd(s, 2, [0.1], stream=8))
    _holds("server", s.build())


def test_an_unbounded_rate_limit_never_makes_an_action_nan() -> None:
    """An inf `max_rate_per_s` means no limit on that element, also for two commands in the
    same instant (dt 0, where inf * 0 would be NaN)."""
    s = Script(0x01 | 0x02 | 0x20)
    s.send(0, _hello(1)).send(0, _cmd(s, 2, np.zeros(WIDE_DA)))
    s.send(0, _cmd(s, 3, np.full(WIDE_DA, 0.2)))
    _holds("server", s.build())


def test_error_messages_fit_the_protocols_string_limit() -> None:
    """`busy`, `taken_over` and `mismatch` quote a client's name or expect map; the server cuts
    the text to MAX_STR_BYTES so that the client can read it."""
    s = Script(0x01)
    s.send(0, _hello(1, name="x" * 1000)).send(1, _hello(1, name="y"))
    _holds("server", s.build())


def test_the_fast_state_check_types_ack_lag() -> None:
    """The fast paths for states check `ack_lag_ns` (int or null) like the reference check."""
    m = _state_msg(1, 0, np.zeros(2), np.zeros(0))
    m["ack_lag_ns"] = {"x": 1}
    _holds("codec", serialize(0, [Record(0, encode(m))]))


def test_a_welcome_with_an_infinite_dimension_is_a_bad_message() -> None:
    """`state_dim: inf` in a welcome's spec is a bad message, not an OverflowError."""
    spec = spec_to_wire(motor_spec())
    spec["state_dim"] = float("inf")
    w = message("welcome", 0, 0, version=1, session=1, role="control", mode="realtime",
                spec=spec, limits={}, echo_t_ns=0, rx_t_ns=0)
    _holds("codec", serialize(0, [Record(0, encode(w))]))


def test_a_server_clock_far_off_does_not_overflow_the_latency_ring() -> None:
    """A `late` error's lag near the int64 limit, minus the clock offset, is no latency:
    `LinkLatency.add` drops it instead of overflowing its int64 ring."""
    s = Script(0x00)
    s.send(0, message("welcome", 0, 2**62, version=1, session=3, role="control",
                      mode="realtime", spec=spec_to_wire(motor_spec()), limits={},
                      echo_t_ns=0, rx_t_ns=2**62))
    s.send(0, _error("late", s.t, ref=5, lag_ns=-(2**63)))
    _holds("client", s.build())


def test_a_goal_size_changed_across_a_reconnect_is_refused() -> None:
    """A welcome that changes `goal_dim` across a reconnect is refused like a changed state or
    action size, so a stale `take` never re-checks a held state against another layout."""
    s = Script(0x00)
    s.send(0, fuzzing._welcome(motor_spec(), mode="realtime", version=1, session=1, t_ns=0))
    s.send(0, _state_msg(1, s.t, np.zeros(2), np.zeros(0)), tick_after=True)
    other = motor_spec()
    object.__setattr__(other, "goal_dim", 1)
    s.send(0, fuzzing._welcome(other, mode="realtime", version=1, session=2, t_ns=0))
    s.tick()
    _holds("client", s.build())


FINDINGS_DIR = Path(__file__).with_name("fuzz_findings")


@pytest.mark.parametrize("name", sorted(p.name for p in FINDINGS_DIR.iterdir()))
def test_the_inputs_a_long_fuzz_run_found_now_pass(name: str) -> None:
    """Crash inputs kept from `rtdiff bench fuzz` runs, replayed: named TARGET-what-it-showed.
    `codec-plan-fields-without-a-plan`: the fast command check skipped `plan_obs_t_ns` (and the
    other plan fields) when `plan` itself was absent, which the reference check types.
    `server-lag-beyond-int64`: a command whose `t_ns` is far from the server's clock made a
    `late` error's `lag_ns` (and a state's `ack_lag_ns`) overflow int64; it is null then."""
    target = name.split("-", 1)[0]
    _holds(target, (FINDINGS_DIR / name).read_bytes())
