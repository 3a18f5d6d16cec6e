"""Coverage-guided fuzz targets for the bridge (atheris / libFuzzer), run by `rtdiff bench fuzz`.

Three targets, each a function of one fuzz input that raises `FuzzViolation` when an invariant
breaks (atheris then reports a crash and keeps the input):

- `codec`: every frame of the input goes through `unpack`, `check_message`, `decode`,
  `fast_state`, `check_obs`, `decode_array` and `spec_from_wire`. Only `ProtocolError` may
  escape; `fast_state` never accepts what `check_message` + `check_obs` refuse (and returns the
  same arrays when it accepts); the fast accept paths of `check_message` never accept what the
  reference field check refuses; an array `decode_array` returns has the shape it declared.
- `server`: a fresh `ServerCore` on a `FakeClock` (realtime or lockstep, as the input's config
  byte says) serving a small in-memory plant (`FirstOrderMotor`, or an 18-action plant that
  takes the limiter's numpy path and may execute plans itself) under `AuditPlant`
  (hw_bridge/audit.py, keyed by the core's controller identity) and the harness's own check
  (`_FrameCheck`). The input's frames come from four identities, with clock advances and
  `tick()` calls between them, so that handshakes, sessions, takeovers, leases, plans,
  resets, goodbyes and watchdog trips are reached. On every apply: the action is (Da,)
  float64, finite and inside [action_low, action_high]; a plan is (N, Da), 1 <= N <=
  MAX_PLAN_TICKS, finite and in the box (`invalid_applied`); a controller command (`src_seq`
  >= 0) strictly increases within its session (`duplicate_applied`, `stale_applied`), comes
  from the current controller while its frame is handled and its `src_seq` is that frame's
  `seq` (`invalid_applied`), and in realtime its deadline has not passed (`stale_applied`).
  `handle()` and `tick()` never raise (`raised`), and every frame the core sends decodes
  (`bad_reply`; states, from one encoder, once per input).
- `client`: a `StateReceiver` over a `Session` without a socket (what it sends is dropped)
  fed hostile server frames, with `take()` and the session's housekeeping between them.
  `on_frame` and `housekeeping` never raise, `take` raises nothing but the `BridgeError` it
  documents (no state yet), a state it hands out is float64 of the layout the session's
  welcome announced, and a stale repeat is the last state exactly (the caller's writes to the
  arrays it was handed do not leak into it). States holding NaN or inf are counted
  (`nonfinite_states`), not refused: the plant's own reading travels as measured and the
  policies treat it as unusable (docs/policies.md).

The input format (all targets): byte 0 configures the run (server: bit 0 realtime, bit 1 the
wide plant, bit 2 the plant executes plans, bit 3 safe action `hold`, bit 4 a 300-byte frame
limit, bit 5 no rate limit (inf) on half the wide plant's actions, bit 6 a plant whose every
fifth apply raises; client: bit 0 a session already open,
bit 1 the wide layout, bit 2 role `observe`, bit 3 no automatic fresh stream). Then up to
`MAX_RECORDS` records: an op byte below 0x80 is a frame (bits 0-1 the identity, bits 2-4 a
clock advance from `FRAME_ADVANCE_NS` before it, bit 5 a tick right after it, bit 6 sent as a
multipart message where the core has `refuse_multipart`) followed by a 2-byte little-endian
length and the payload; an op byte from 0x80 is a tick (bits 0-3 the advance from
`TICK_ADVANCE_NS`, bits 4-6 repeat count - 1). Every byte string parses.

`Mutator` is structure-aware: it unpacks a frame's msgpack, changes fields (types, sizes, NaN
and inf, huge ints, nesting, extra, bin and int keys, ext types, arrays whose data matches
their new shape), repacks it, renumbers `seq`s and re-times deadlines along the input,
inserts, replays, drops and reorders frames, and leaves the rest to libFuzzer's byte mutator
(`atheris.Mutate`). `seeds(target)` are valid inputs with every message type (v1 and v2,
plans included).

Run: `python -m hw_bridge.fuzzing TARGET [libFuzzer flags] [corpus dirs]`; reproduce a crash
with `python -m hw_bridge.fuzzing TARGET CRASH_FILE`, or without atheris with
`python -m hw_bridge.fuzzing TARGET --replay CRASH_FILE` (a traceback on a violation).
atheris is a dev dependency, imported only by `main`.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import random
import sys
import time
import types
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from hw_bridge.audit import AuditPlant
from hw_bridge.codec import (
    _FAST,
    MAX_ARRAY_ELEMS,
    MAX_MSG_BYTES,
    SCHEMA,
    ProtocolError,
    check_fields,
    check_message,
    check_obs,
    decode,
    decode_array,
    encode,
    encode_array,
    fast_state,
    message,
    obs_to_wire,
    spec_from_wire,
    spec_to_wire,
    unpack,
)
from hw_bridge.core import ServerConfig, ServerCore
from hw_bridge.driver import FirstOrderMotor, motor_spec
from hw_bridge.link import CLIENT_COUNTERS, BridgeError, Session
from hw_bridge.receive import StateReceiver
from hw_bridge.safety import LimitResult
from runtime.clock import FakeClock
from runtime.planfeed import MAX_PLAN_TICKS
from runtime.protocols import Command, FloatArray, Observation, PlantSpec

TARGETS = ("codec", "server", "client")
FAULTS = ("nan_action", "replay")  # deliberate defects: the harness's own check (RTDIFF_FUZZ_FAULT)
VIOLATION_MARK = "rtdiff-fuzz: violation"  # the line a violation writes to stderr before raising
# what the harness instruments for coverage: the bridge's message handling, end to end
INSTRUMENTED = (
    "hw_bridge.codec",
    "hw_bridge.core",
    "hw_bridge.safety",
    "hw_bridge.receive",
    "hw_bridge.link",
    "hw_bridge.clocksync",
    "hw_bridge.linklatency",
    "hw_bridge.driver",
    "runtime.planfeed",
)

MAX_RECORDS = 48
T0_NS = 1_000_000_000_000  # the fake clock's start: stamps around it look like real ones
FRAME_ADVANCE_NS = (0, 0, 100_000, 1_000_000, 5_000_000, 40_000_000, 150_000_000, 1_200_000_000)
TICK_ADVANCE_NS = (
    0,
    1_000_000,
    5_000_000,  # one motor period (200 Hz)
    10_000_000,  # one wide-plant period (100 Hz)
    20_000_000,
    50_000_000,
    90_000_000,
    101_000_000,  # just past the 100 ms watchdog
    150_000_000,
    300_000_000,
    999_000_000,
    1_001_000_000,  # just past the 1 s lease
    2_500_000_000,
    10_000_000_000,
    31_000_000_000,  # past the 30 s peer timeout
    2_000_000,
)
IDENTS = (b"A", b"B", b"C", b"\x00\xff")


class FuzzViolation(AssertionError):
    """An invariant of the bridge broke. `kind`: invalid_applied, duplicate_applied,
    stale_applied, raised, bad_reply, bad_state or codec_contract."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


# --- the input container ------------------------------------------------------------------------


@dataclass
class Record:
    """One step of an input: a frame (`payload` bytes) or a tick (`payload` None)."""

    op: int
    payload: bytes | None = None

    @property
    def ident(self) -> bytes:
        return IDENTS[self.op & 3]

    @property
    def advance_ns(self) -> int:
        if self.payload is not None:
            return FRAME_ADVANCE_NS[(self.op >> 2) & 7]
        return TICK_ADVANCE_NS[self.op & 15]

    @property
    def repeat(self) -> int:
        return 1 if self.payload is not None else 1 + ((self.op >> 4) & 7)

    @property
    def tick_after(self) -> bool:
        return self.payload is not None and bool(self.op & 0x20)

    @property
    def multipart(self) -> bool:
        return self.payload is not None and bool(self.op & 0x40)


def parse(data: bytes) -> tuple[int, list[Record]]:
    """Any bytes -> (config byte, records); see the module docstring."""
    if not data:
        return 0, []
    config, i, n = data[0], 1, len(data)
    records: list[Record] = []
    while i < n and len(records) < MAX_RECORDS:
        op = data[i]
        i += 1
        if op >= 0x80:
            records.append(Record(op))
            continue
        size = int.from_bytes(data[i : i + 2], "little")
        i += 2
        records.append(Record(op, data[i : i + size]))
        i += size
    return config, records


def serialize(config: int, records: list[Record]) -> bytes:
    out = bytearray([config & 0xFF])
    for r in records[:MAX_RECORDS]:
        if r.payload is None:
            out.append(r.op | 0x80)
        else:
            p = r.payload[:65_535]
            out.append(r.op & 0x7F)
            out += len(p).to_bytes(2, "little")
            out += p
    return bytes(out)


def _violation(kind: str, detail: str) -> FuzzViolation:
    return FuzzViolation(kind, detail[:600])


def _raised(where: str, exc: BaseException) -> FuzzViolation:
    return _violation("raised", f"{where} raised {type(exc).__name__}: {exc}")


# --- codec --------------------------------------------------------------------------------------

CODEC_LAYOUTS = ((2, 0), (3, 2))  # (state_dim, goal_dim): the motor's and the wide plant's


def _same_arrays(a: FloatArray, b: FloatArray) -> bool:
    return a.shape == b.shape and a.tobytes() == b.tobytes()  # NaN payloads included


def _check_array(obj: Any, field: str, shape: tuple[int, ...] | None) -> None:
    try:
        arr = decode_array(obj, field=field, shape=shape)
    except ProtocolError:
        return
    except Exception as exc:
        raise _raised("decode_array", exc) from exc
    if not (type(arr) is np.ndarray and arr.dtype == np.float64):
        raise _violation("codec_contract", f"decode_array({field}) gave {type(arr).__name__}")
    if shape is not None and arr.shape != shape:
        raise _violation("codec_contract", f"decode_array({field}): {arr.shape} != {shape}")
    declared = obj.get("shape") if isinstance(obj, dict) else None
    if arr.size > MAX_ARRAY_ELEMS or list(arr.shape) != declared:
        raise _violation("codec_contract", f"decode_array({field}) {arr.shape} vs {declared}")


def codec_frame(payload: bytes, stats: Counter[str]) -> None:
    """One frame through every codec entry point (see the module docstring)."""
    try:
        value = unpack(payload)
    except ProtocolError:
        stats["undecodable"] += 1
        return
    except Exception as exc:
        raise _raised("unpack", exc) from exc
    msg: dict[str, Any] | None
    try:
        msg = check_message(value)
    except ProtocolError:
        msg = None
    except Exception as exc:
        raise _raised("check_message", exc) from exc
    try:
        whole = decode(payload)
    except ProtocolError:
        whole = None
    except Exception as exc:
        raise _raised("decode", exc) from exc
    if (whole is None) != (msg is None):
        raise _violation("codec_contract", "decode disagrees with unpack + check_message")
    kind = msg["type"] if msg is not None else None
    if msg is not None:
        stats[f"accepted_{kind}"] += 1
        if kind in _FAST:
            try:
                check_fields(msg, str(kind))  # what the fast path accepted, the reference must
            except ProtocolError as exc:
                raise _violation("codec_contract",
                                 f"fast {kind} accepted, reference: {exc}") from exc
    obs = value.get("obs") if type(value) is dict else None
    for ds, dg in CODEC_LAYOUTS:
        try:
            fast = fast_state(value, state_dim=ds, goal_dim=dg)
        except Exception as exc:
            raise _raised("fast_state", exc) from exc
        ref: tuple[FloatArray, FloatArray] | None = None
        if obs is not None:
            try:
                ref = check_obs(obs, state_dim=ds, goal_dim=dg)
            except ProtocolError:
                ref = None
            except Exception as exc:
                raise _raised("check_obs", exc) from exc
        if fast is None:
            continue
        stats["fast_state_accepted"] += 1
        if msg is None or kind != "state" or ref is None:
            raise _violation("codec_contract", f"fast_state accepted a frame the checks refuse "
                                               f"(check_message: {msg is not None}, {kind=})")
        st, gl = fast
        if not (
            type(st) is np.ndarray
            and st.dtype == np.float64
            and st.shape == (ds,)
            and st.flags.writeable
            and type(gl) is np.ndarray
            and gl.dtype == np.float64
            and gl.shape == (dg,)
            and gl.flags.writeable
        ):
            raise _violation("codec_contract", "fast_state arrays of the wrong kind or shape")
        if not (_same_arrays(st, ref[0]) and _same_arrays(gl, ref[1])):
            raise _violation("codec_contract", "fast_state and check_obs disagree on the arrays")
    if type(value) is dict:
        for key, shape in (("action", (1,)), ("action", (18,)), ("plan", None)):
            if key in value:
                _check_array(value[key], f"command.{key}", shape)
        if type(obs) is dict:
            _check_array(obs.get("state"), "obs.state", None)
            _check_array(obs.get("goal"), "obs.goal", (2,))
        if msg is not None and kind == "welcome":
            try:
                spec_from_wire(msg["spec"])
                stats["specs_accepted"] += 1
            except ProtocolError:
                pass
            except Exception as exc:
                raise _raised("spec_from_wire", exc) from exc


def run_codec(data: bytes, stats: Counter[str]) -> None:
    _, records = parse(data)
    for rec in records:
        if rec.payload is not None:
            stats["frames"] += 1
            codec_frame(rec.payload, stats)


# --- server -------------------------------------------------------------------------------------

WIDE_DA = 18  # over the limiter's 16-element scalar path: the numpy path is fuzzed too


def wide_spec(*, unbounded_rates: bool = False) -> PlantSpec:
    """An 18-action plant with an asymmetric box and a rate limit, state (3,), goal (2,).
    `unbounded_rates`: the second half of the actions has no rate limit (inf), which
    `ActionLimiter` and `PlantSpec` accept."""
    rate = np.full(WIDE_DA, 40.0)
    if unbounded_rates:
        rate[WIDE_DA // 2 :] = np.inf
    return PlantSpec(
        name="fuzz-wide",
        state_dim=3,
        action_dim=WIDE_DA,
        goal_dim=2,
        action_low=np.linspace(-2.0, -0.25, WIDE_DA),
        action_high=np.linspace(0.25, 3.0, WIDE_DA),
        rate_hz=100.0,
        max_action_rate_per_s=rate,
        episode_ticks=40,
    )


class WidePlant:
    """An in-memory plant of `wide_spec()` with no `safe_action` (the server's `zero` or
    `hold` then applies). Its state sums what it was handed; lockstep time moves per apply."""

    def __init__(self, clock: FakeClock, *, realtime: bool,
                 unbounded_rates: bool = False) -> None:
        self._spec = wide_spec(unbounded_rates=unbounded_rates)
        self.clock = clock
        self.mode = "realtime" if realtime else "lockstep"
        self._seq = 0
        self._t_ns = clock.now_ns()
        self._x = np.zeros(3)
        self._n = 0

    def spec(self) -> PlantSpec:
        return self._spec

    def reset(self, seed: int | None = None) -> Observation:
        self._x = np.zeros(3)
        self._n = 0
        self._t_ns = self.clock.now_ns()
        return self.observe()

    def observe(self) -> Observation:
        realtime = self.mode == "realtime"
        if realtime:
            self._t_ns = max(self._t_ns, self.clock.now_ns())
        self._seq += 1
        return Observation(
            seq=self._seq,
            t_ns=self._t_ns,
            state=self._x.copy(),
            goal=np.array([0.5, -0.5]),
            truncated=not realtime and self._n >= self._spec.episode_ticks,
        )

    def apply(self, cmd: Command) -> None:
        self._x[0] += float(cmd.action.sum())
        self._x[1] = float(cmd.action[0])
        self._x[2] = float(cmd.action[-1])
        self._n += 1
        if self.mode != "realtime":
            self._t_ns += self._spec.period_ns

    def counters(self) -> dict[str, int]:
        return {"applied": self._n, "late": 0}

    def close(self) -> None:
        pass


def _frame_seq(payload: bytes) -> int | None:
    try:
        m = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except Exception:
        return None
    s = m.get("seq") if type(m) is dict else None
    return s if type(s) is int else None


class _FrameCheck:
    """What the harness adds under `AuditPlant` (which checks every action, plan, duplicate and
    stale command): a controller command (`src_seq` >= 0) reaches the plant only while the
    core handles a frame of the current controller (`sender`, `payload`), its `src_seq` is
    that frame's `seq`, its action is finite (even where the plant would refuse it), and a plan
    has 1..MAX_PLAN_TICKS rows. Breaches go to `violations`
    (the core catches what `apply` raises). Every fifth apply raises when `flaky`."""

    core: ServerCore | None = None
    sender: bytes | None = None
    payload = b""
    flaky = False
    violations: list[str]
    applies = 0

    def check(self, cmd: Command) -> None:
        self.applies += 1
        # checked here, before the plant's own checks: a `Driver` refuses a non-finite action
        # itself, which must not hide a server that hands one over
        if not np.all(np.isfinite(np.asarray(cmd.action, dtype=np.float64))):
            self.violations.append(f"an action that is not finite reached the plant "
                                   f"(src_seq {cmd.src_seq})")
        if cmd.plan is not None and not 1 <= len(cmd.plan) <= MAX_PLAN_TICKS:
            self.violations.append(f"a plan of {len(cmd.plan)} rows (src_seq {cmd.src_seq})")
        if cmd.src_seq >= 0:
            core, ident = self.core, self.sender
            if core is None or ident is None:
                self.violations.append(f"src_seq {cmd.src_seq} applied outside handle()")
            elif core.controller != ident:
                self.violations.append(f"src_seq {cmd.src_seq} applied for {ident!r}, which "
                                       f"is not the controller ({core.controller!r})")
            elif cmd.src_seq != _frame_seq(self.payload):
                self.violations.append(f"src_seq {cmd.src_seq} is not the seq of the frame "
                                       "being handled")
        if self.flaky and self.applies % 5 == 0:
            raise RuntimeError("the plant refuses this apply (a flaky plant)")


class CheckedMotor(FirstOrderMotor, _FrameCheck):
    def __init__(self, clock: FakeClock, *, realtime: bool,
                 unbounded_rates: bool = False) -> None:
        super().__init__(mode="realtime" if realtime else "lockstep", clock=clock)
        self.violations = []

    def apply(self, cmd: Command) -> None:
        self.check(cmd)
        super().apply(cmd)


class CheckedWide(WidePlant, _FrameCheck):
    def __init__(self, clock: FakeClock, *, realtime: bool,
                 unbounded_rates: bool = False) -> None:
        super().__init__(clock, realtime=realtime, unbounded_rates=unbounded_rates)
        self.violations = []

    def apply(self, cmd: Command) -> None:
        self.check(cmd)
        super().apply(cmd)


class _Plans:
    """Says the plant executes plans itself: the core hands each command's plan over."""

    executes_plans = True

    def apply_counters(self) -> dict[str, int]:
        return {}


class PlanMotor(_Plans, CheckedMotor):
    pass


class PlanWide(_Plans, CheckedWide):
    pass


AUDIT_KINDS = ("invalid_applied", "duplicate_applied", "stale_applied")
_STATE_HEAD = b"\xa4type\xa5state"  # after the map header and `v` of a state the core encodes
SERVER_COUNTS = (
    "applied", "rejected", "clamped", "rate_limited", "late", "out_of_order", "unauthorized",
    "refused", "stale_stream", "watchdog_trips", "safe_applied", "resets", "plans_limited",
    "apply_errors", "bad_message", "bad_version", "unknown_peer",
)


def _leaky_limiter(core: ServerCore) -> None:
    """The `nan_action` fault: the limiter lets a non-finite action through unchanged."""
    lim = core.limiter
    orig = lim.limit

    def limit(action: FloatArray, *, dt_s: float) -> LimitResult:
        if (
            isinstance(action, np.ndarray)
            and action.shape == lim.low.shape
            and not np.isfinite(action).all()
        ):
            return LimitResult(action.copy(), False, False)
        return orig(action, dt_s=dt_s)

    setattr(lim, "limit", limit)  # noqa: B010 (an instance attribute over the method)


def run_server(data: bytes, stats: Counter[str], *, fault: str | None = None) -> None:
    config, records = parse(data)
    realtime = bool(config & 1)
    clock = FakeClock(start_ns=T0_NS)
    cls: type[CheckedMotor | CheckedWide] = (
        (PlanWide if config & 4 else CheckedWide)
        if config & 2
        else (PlanMotor if config & 4 else CheckedMotor)
    )
    inner = cls(clock, realtime=realtime, unbounded_rates=bool(config & 32))
    inner.flaky = bool(config & 64)
    plant = AuditPlant(inner, clock=clock, realtime=realtime)
    cfg = ServerConfig(
        mode="realtime" if realtime else "lockstep",
        safe_action="hold" if config & 8 else "zero",
        max_msg_bytes=300 if config & 16 else MAX_MSG_BYTES,
        seed=0,
    )
    core = ServerCore(plant, cfg, clock=clock)
    plant.attach(core)
    inner.core = core
    if fault == "nan_action":
        _leaky_limiter(core)
    refuse_multipart: Callable[[bytes], None] | None = getattr(core, "refuse_multipart", None)
    audit = plant.counts
    state_checked = False  # the first state of each input is decoded, the rest alike

    def check(where: str) -> None:
        for kind in AUDIT_KINDS:
            if audit[kind]:
                raise _violation(kind, f"{where}: {plant.bad[-1] if plant.bad else kind}")
        if inner.violations:
            raise _violation("invalid_applied", f"{where}: {inner.violations[0]}")
        nonlocal state_checked
        for ident, out in core.outbox:
            if out.startswith(_STATE_HEAD, 4):  # states: the plant's readings, one encoder
                if state_checked:
                    continue
                state_checked = True
            try:
                decode(out)
            except ProtocolError as exc:
                raise _violation("bad_reply", f"{where}: the core sent {ident!r} a frame the "
                                              f"protocol refuses: {exc}") from exc
        core.outbox.clear()

    def tick() -> None:
        try:
            if realtime:
                core.tick()
            else:
                core.housekeeping(clock.now_ns())
        except Exception as exc:
            raise _raised("ServerCore.tick", exc) from exc
        check("tick")

    try:
        core.start()
    except Exception as exc:
        raise _raised("ServerCore.start", exc) from exc
    check("start")
    for rec in records:
        if rec.payload is None:
            for _ in range(rec.repeat):
                clock.advance_ns(rec.advance_ns)
                tick()
            continue
        stats["frames"] += 1
        clock.advance_ns(rec.advance_ns)
        ident = rec.ident
        inner.sender, inner.payload = ident, rec.payload
        try:
            if rec.multipart and refuse_multipart is not None:
                refuse_multipart(ident)
            else:
                core.handle(ident, rec.payload)
        except Exception as exc:
            raise _raised("ServerCore.handle", exc) from exc
        finally:
            inner.sender = None
        if fault == "replay":  # the seq check is lost: replays are handed to the plant
            for peer in core.peers.values():
                peer.last_seq = -1
        check("handle")
        if rec.tick_after:
            tick()
    counters = core.counters
    for k in SERVER_COUNTS:
        stats[k] += counters[k]
    stats["plan_rows_fed"] += audit["planned"]
    stats["takeovers"] += sum(e.kind == "takeover" for e in core.events)


# --- client -------------------------------------------------------------------------------------


class OfflineSession(Session):
    """A `Session` without a socket: what it sends is dropped (counted in `sent_msgs`), and
    `open` only starts the handshake again (as a fresh socket would)."""

    def __init__(self, clock: FakeClock, counts: Counter[str], *, role: str,
                 auto_resume: bool) -> None:
        super().__init__(
            "inproc://rtdiff-fuzz", counts=counts, clock=clock, role=role,
            auto_resume=auto_resume,
        )
        self.sent_msgs = 0

    def open(self) -> None:
        self.connected = False
        self.send_hello()

    def _send(self, msg: dict[str, Any]) -> bool:
        self.sent_msgs += 1
        return True


def _welcome(spec: PlantSpec, *, mode: str, version: int, session: int, t_ns: int) -> bytes:
    return encode(
        message(
            "welcome", 0, t_ns, v=version, version=version, session=session, role="control",
            mode=mode, spec=spec_to_wire(spec),
            limits={"watchdog_ms": 100.0, "lease_ms": 1000.0, "heartbeat_ms": 100.0,
                    "peer_timeout_ms": 30000.0, "max_msg_bytes": MAX_MSG_BYTES},
            echo_t_ns=T0_NS, rx_t_ns=t_ns,
        )
    )


def _client_layout(config: int) -> PlantSpec:
    return wide_spec() if config & 2 else motor_spec()


@dataclass
class _Taken:
    seq: int
    states: int  # the receiver's `states` count when it was handed out
    state: bytes
    goal: bytes


def _take(receiver: StateReceiver, session: Session, last: _Taken | None,
          stats: Counter[str]) -> _Taken | None:
    if receiver.latest is None:
        try:
            receiver.take()
        except BridgeError:
            return last
        except Exception as exc:
            raise _raised("StateReceiver.take (no state yet)", exc) from exc
        raise _violation("bad_state", "take handed out a state before any arrived")
    try:
        obs = receiver.take()
    except Exception as exc:
        raise _raised("StateReceiver.take", exc) from exc
    stats["taken"] += 1
    spec = session.spec
    if spec is None:
        raise _violation("bad_state", "a state handed out without a handshake")
    st, gl = obs.state, obs.goal
    for name, arr, n in (("state", st, spec.state_dim), ("goal", gl, spec.goal_dim)):
        if not (type(arr) is np.ndarray and arr.dtype == np.float64 and arr.shape == (n,)):
            raise _violation("bad_state", f"{name} {getattr(arr, 'shape', type(arr))} handed "
                                          f"out, the session's layout says ({n},) float64")
    if not (type(obs.seq) is int and type(obs.t_ns) is int and type(obs.reward) is float):
        raise _violation("bad_state", "seq, t_ns or reward of the wrong type")
    if not (np.isfinite(st).all() and np.isfinite(gl).all()):
        stats["nonfinite_states"] += 1
    states = receiver.counts["states"]
    if obs.stale:
        stats["stale_taken"] += 1
        if last is not None and last.states == states and last.seq == obs.seq and not (
            st.tobytes() == last.state and gl.tobytes() == last.goal
        ):
            raise _violation("bad_state", "a stale repeat differs from the state handed out")
    taken = _Taken(obs.seq, states, st.tobytes(), gl.tobytes())
    if st.flags.writeable:
        st.fill(12345.0)  # the caller's writes must not reach a later stale copy
    if gl.flags.writeable:
        gl.fill(-12345.0)
    return taken


def run_client(data: bytes, stats: Counter[str]) -> None:
    config, records = parse(data)
    clock = FakeClock(start_ns=T0_NS)
    counts: Counter[str] = Counter({k: 0 for k in CLIENT_COUNTERS})
    session = OfflineSession(
        clock, counts, role="observe" if config & 4 else "control", auto_resume=not config & 8
    )
    receiver = StateReceiver(session, counts)
    last: _Taken | None = None

    def frame(payload: bytes) -> None:
        stats["frames"] += 1
        try:
            receiver.on_frame(payload)
        except Exception as exc:
            raise _raised("StateReceiver.on_frame", exc) from exc

    def housekeeping() -> None:
        try:
            session.housekeeping()
        except Exception as exc:
            raise _raised("Session.housekeeping", exc) from exc

    try:
        session.open()
        if config & 1:
            mode = "lockstep" if config & 2 else "realtime"
            frame(_welcome(_client_layout(config), mode=mode, version=2, session=1,
                           t_ns=T0_NS + 1_000))
        for rec in records:
            if rec.payload is None:
                for _ in range(rec.repeat):
                    clock.advance_ns(rec.advance_ns)
                    housekeeping()
                    last = _take(receiver, session, last, stats)
                continue
            clock.advance_ns(rec.advance_ns)
            frame(rec.payload)
            if rec.tick_after:
                last = _take(receiver, session, last, stats)
    finally:
        session.abort()
    stats["states"] += counts["states"]
    stats["errors"] += counts["errors"]
    stats["reconnects"] += counts["reconnects"]
    stats["fatal"] += session.fatal is not None


# --- seeds --------------------------------------------------------------------------------------


class Script:
    """Builds a valid input step by step, keeping the fake clock's time (`t`) so that
    deadlines and plan times are where a real client would put them."""

    def __init__(self, config: int) -> None:
        self.config = config
        self.records: list[Record] = []
        self.t = T0_NS

    def send(self, ident: int, msg: dict[str, Any] | bytes, *, adv: int = 0,
             tick_after: bool = False) -> Script:
        self.t += FRAME_ADVANCE_NS[adv]
        payload = msg if isinstance(msg, bytes) else encode(msg)
        self.records.append(Record((ident & 3) | (adv << 2) | (0x20 * tick_after), payload))
        return self

    def tick(self, adv: int = 2, repeat: int = 1) -> Script:
        self.t += TICK_ADVANCE_NS[adv] * repeat
        self.records.append(Record(0x80 | adv | ((repeat - 1) << 4)))
        return self

    def build(self) -> bytes:
        return serialize(self.config, self.records)


def _hello(seq: int, *, role: str = "control", versions: tuple[int, ...] = (1,),
           name: str = "fuzz", **kw: Any) -> dict[str, Any]:
    return message("hello", seq, 0, versions=list(versions), role=role, name=name, **kw)


def _cmd(s: Script, seq: int, action: list[float] | FloatArray, *, v: int = 1, stream: int = 7,
         deadline_ms: float | None = 20.0, plan: FloatArray | None = None,
         plan_dt_ms: float = 5.0, **kw: Any) -> dict[str, Any]:
    deadline = None if deadline_ms is None else s.t + round(deadline_ms * 1e6)
    m = message("command", seq, s.t, v=v, stream=stream, tick=seq, obs_seq=seq - 1,
                action=encode_array(np.asarray(action, dtype=np.float64)),
                deadline_ns=deadline, fallback="", **kw)
    if plan is not None:
        m["plan"] = encode_array(plan)
        m["plan_t0_ns"] = (deadline or s.t) + round(plan_dt_ms * 1e6)
        m["plan_dt_ns"] = round(plan_dt_ms * 1e6)
        m["plan_obs_t_ns"] = s.t
    return m


def server_seeds() -> list[bytes]:
    nan = float("nan")
    out: list[bytes] = []
    # realtime motor, v1: commands, clamping, NaN, heartbeat, reset, watchdog trip, new stream
    s = Script(0x01)
    s.send(0, _hello(1)).tick()
    s.send(0, _cmd(s, 2, [0.3])).tick()
    s.send(0, _cmd(s, 3, [2.0])).send(0, message("heartbeat", 4, s.t)).tick()
    s.send(0, _cmd(s, 5, [nan])).send(0, message("reset", 6, s.t, seed=3))
    s.send(0, _cmd(s, 7, [-0.5]), tick_after=True).tick(8)
    s.send(0, _cmd(s, 8, [0.1])).send(0, _cmd(s, 9, [0.1], stream=8)).tick()
    s.send(0, _cmd(s, 9, [0.2], stream=8)).send(0, _cmd(s, 10, [0.2], stream=8, deadline_ms=-1))
    s.send(0, message("goodbye", 11, s.t, reason="done")).tick()
    out.append(s.build())
    # realtime motor, v2: plans fed by the core, malformed plans, a v1 header in a v2 session
    s = Script(0x01)
    s.send(0, _hello(1, versions=(1, 2))).tick()
    s.send(0, _cmd(s, 2, [0.1], v=2, plan=np.linspace(0.1, 0.4, 4)[:, None]))
    s.tick(2, repeat=6)
    s.send(0, _cmd(s, 3, [0.1], v=2, plan=np.zeros((3, 2))))
    bad_t0 = _cmd(s, 4, [0.1], v=2, plan=np.zeros((2, 1)))
    bad_t0["plan_t0_ns"] = bad_t0["deadline_ns"]
    s.send(0, bad_t0)
    s.send(0, _cmd(s, 5, [0.1], v=2, plan=np.zeros((MAX_PLAN_TICKS + 1, 1))))
    s.send(0, _cmd(s, 6, [0.1], v=2, plan=np.full((2, 1), 5.0)), tick_after=True)
    s.send(0, _cmd(s, 7, [0.1], v=1)).tick(2, repeat=3).tick(8)
    out.append(s.build())
    # realtime wide plant that executes plans itself, v2
    s = Script(0x01 | 0x02 | 0x04)
    s.send(0, _hello(1, versions=(2,))).tick(3)
    s.send(0, _cmd(s, 2, np.full(WIDE_DA, 0.2), v=2, plan=np.full((8, WIDE_DA), 0.3),
                   plan_dt_ms=10.0)).tick(3, repeat=3)
    s.send(0, _cmd(s, 3, np.full(WIDE_DA, 9.0), v=2)).send(0, _cmd(s, 4, np.zeros(3), v=2))
    s.tick(3).tick(8)
    out.append(s.build())
    # realtime wide plant with half its actions rate-unbounded
    s = Script(0x01 | 0x02 | 0x20)
    s.send(0, _hello(1)).send(0, _cmd(s, 2, np.full(WIDE_DA, -0.2))).tick(3)
    s.send(0, _cmd(s, 3, np.full(WIDE_DA, 0.2))).tick(3).tick(7)
    out.append(s.build())
    # lockstep motor: a run of commands, a reset, an observer that may not command
    s = Script(0x00)
    s.send(0, _hello(1))
    for q in range(2, 7):
        s.send(0, _cmd(s, q, [0.2 * (q - 4)], deadline_ms=None))
    s.send(0, message("reset", 7, s.t, seed=None)).send(0, _cmd(s, 8, [0.5], deadline_ms=None))
    s.send(0, message("heartbeat", 9, s.t)).tick(11)
    s.send(1, _hello(1, role="observe")).send(1, _cmd(s, 2, [0.1], deadline_ms=None))
    s.send(1, message("reset", 3, s.t, seed=1)).send(1, message("heartbeat", 4, s.t))
    out.append(s.build())
    # takeovers, busy, an observer, a lapsed lease, a goodbye, a forgotten session
    s = Script(0x01)
    s.send(0, _hello(1, name="a")).send(0, _cmd(s, 2, [0.1])).tick()
    s.send(1, _hello(1, name="b")).send(2, _hello(1, role="observe", name="c"))
    s.send(1, _hello(2, name="b", takeover=True)).send(0, _cmd(s, 3, [0.1]))
    s.send(1, _cmd(s, 3, [-0.1], stream=8), tick_after=True)
    s.send(2, message("heartbeat", 2, s.t)).send(2, _cmd(s, 3, [0.1]))
    s.send(0, _hello(4, name="a")).tick(11)
    s.send(0, _hello(5, name="a")).send(0, _cmd(s, 6, [0.3], stream=9)).tick()
    s.send(1, message("goodbye", 4, s.t)).send(0, message("goodbye", 7, s.t)).tick(14)
    out.append(s.build())
    # handshake refusals and frames a client never sends
    s = Script(0x01)
    s.send(0, _cmd(s, 1, [0.1])).send(0, _hello(2, versions=(3,)))
    s.send(0, _hello(3, expect={"name": "something-else", "state_dim": 2}))
    s.send(0, _hello(4, expect={"name": "first-order-motor", "state_dim": 2, "action_dim": 1,
                                "rate_hz": 200.0}))
    s.send(0, message("state", 5, s.t, obs={}, ack_seq=1, reset_seq=1, safe=False))
    s.send(0, message("welcome", 6, s.t)).send(0, b"\x93\x01\x02\x03")
    s.send(0, _cmd(s, 4, [0.1])).send(0, _cmd(s, 7, [0.1], v=2)).send(3, _hello(1, v=2))
    s.tick()
    out.append(s.build())
    # a 300-byte frame limit: a plan too large for it
    s = Script(0x01 | 0x10)
    s.send(0, _hello(1, versions=(1, 2))).send(0, _cmd(s, 2, [0.1], v=2))
    s.send(0, _cmd(s, 3, [0.1], v=2, plan=np.zeros((30, 1)))).tick()
    out.append(s.build())
    # lockstep wide plant, hold as the safe action, a flaky plant
    s = Script(0x02 | 0x08 | 0x40)
    s.send(0, _hello(1))
    for q in range(2, 10):
        s.send(0, _cmd(s, q, np.linspace(-3, 3, WIDE_DA) * (q % 3), deadline_ms=None))
    s.send(0, message("reset", 10, s.t, seed=2)).send(0, _cmd(s, 11, np.zeros(WIDE_DA)))
    out.append(s.build())
    # realtime wide plant without a safe_action of its own: hold, then the watchdog trips
    s = Script(0x01 | 0x02 | 0x08)
    s.send(0, _hello(1, versions=(1, 2))).send(0, _cmd(s, 2, np.full(WIDE_DA, 0.2), v=2))
    s.tick(3).tick(8).send(0, _cmd(s, 3, np.full(WIDE_DA, 0.2), v=2, stream=9)).tick(3)
    s.send(0, message("goodbye", 4, s.t, v=2, reason="bye")).tick(3)
    out.append(s.build())
    return out


def _state_msg(seq: int, t_ns: int, state: FloatArray, goal: FloatArray, *, v: int = 1,
               ack: int = -1, reset: int = -1, safe: bool = False, stale: bool = False,
               info: dict[str, Any] | None = None) -> dict[str, Any]:
    obs = obs_to_wire(seq, t_ns, state, goal, -0.5, False, False, info or {}, stale)
    return message("state", seq, t_ns, v=v, obs=obs, ack_seq=ack, ack_lag_ns=1_500_000,
                   reset_seq=reset, safe=safe)


def _error(code: str, t_ns: int, *, ref: int | None = None, fatal: bool = False,
           **kw: Any) -> dict[str, Any]:
    return message("error", 0, t_ns, code=code, message=f"{code} here", ref_seq=ref,
                   fatal=fatal, **kw)


def client_seeds() -> list[bytes]:
    motor, wide = motor_spec(), wide_spec()
    z2, z0, g2 = np.zeros(2), np.zeros(0), np.array([0.5, -0.5])
    out: list[bytes] = []
    s = Script(0x00)
    s.send(0, _welcome(motor, mode="realtime", version=1, session=11, t_ns=T0_NS + 2_000))
    s.send(0, _state_msg(1, s.t, z2, z0), tick_after=True)
    s.send(0, _state_msg(2, s.t, np.array([0.1, 0.2]), z0, ack=2), adv=4)
    s.send(0, _state_msg(3, s.t, np.array([0.2, 0.3]), z0, ack=3, reset=1), tick_after=True)
    s.send(0, message("heartbeat", 0, s.t, echo_seq=2, echo_t_ns=T0_NS, rx_t_ns=s.t,
                      counters={"applied": 3}, safe=False))
    s.send(0, _error("late", s.t, ref=5, lag_ns=2_000_000)).send(0, _error("rejected", s.t, ref=6))
    s.send(0, _error("stream_tripped", s.t, ref=7)).send(0, _error("not_controller", s.t, ref=8))
    s.tick()
    s.send(0, _state_msg(4, s.t, z2, z0, safe=True, info={"success": True,
                                                          "arr": encode_array(np.ones(3))}))
    s.tick().tick().send(0, message("goodbye", 0, s.t, reason="server stopping"))
    s.send(0, _welcome(motor, mode="realtime", version=1, session=11, t_ns=s.t))
    s.send(0, _welcome(motor, mode="realtime", version=1, session=12, t_ns=s.t))
    s.send(0, _state_msg(1, s.t, z2, z0), tick_after=True).tick(13)
    out.append(s.build())
    s = Script(0x00)
    s.send(0, _welcome(wide, mode="lockstep", version=2, session=5, t_ns=T0_NS))
    st32 = _state_msg(1, s.t, np.zeros(3), g2, v=2)
    st32["obs"]["state"] = {"dtype": "<f4", "shape": [3], "data": np.zeros(3, "<f4").tobytes()}
    s.send(0, st32, tick_after=True).send(0, _state_msg(2, s.t, np.ones(3), g2, v=2, stale=True))
    s.tick().send(0, _error("busy", s.t)).send(0, _error("mismatch", s.t, ref=1, fatal=True))
    s.tick()
    out.append(s.build())
    s = Script(0x01)
    s.send(0, _state_msg(1, s.t, np.array([np.nan, 1.0]), z0, v=2), tick_after=True)
    s.send(0, _state_msg(2, s.t, z2, z0, v=2)).tick().tick()
    s.send(0, _state_msg(1, s.t, z2, z0, v=2)).send(0, _error("unknown_peer", s.t)).tick(12)
    out.append(s.build())
    s = Script(0x01 | 0x02 | 0x04)
    s.send(0, _state_msg(1, s.t, np.zeros(3), g2, v=2), tick_after=True)
    s.send(0, _welcome(wide, mode="lockstep", version=2, session=77, t_ns=s.t)).tick()
    s.send(0, _state_msg(1, s.t, np.ones(3), g2, v=2), tick_after=True).tick()
    out.append(s.build())
    return out


def codec_seeds() -> list[bytes]:
    """Every frame of the server and client seeds, a few to an input, plus the rest of the
    message types with their optional fields."""
    frames = [r.payload for data in server_seeds() + client_seeds() for r in parse(data)[1]
              if r.payload is not None]
    frames += [
        encode(_hello(1, versions=(1, 2), takeover=False,
                      expect={"name": "x", "state_dim": 2, "action_dim": 1, "rate_hz": 50.0})),
        encode(message("heartbeat", 3, 5, echo_seq=2, echo_t_ns=1, rx_t_ns=4,
                       counters={"applied": 1, "late": 0}, safe=True)),
        encode(message("reset", 9, 0, seed=2**63 - 1)),
        encode(message("error", 0, 0, code="late", message="x", ref_seq=None, fatal=False,
                       lag_ns=-5)),
        encode(_state_msg(5, 0, np.zeros(3), np.ones(2), v=2, info={"k": [1, {"z": b"x"}]})),
    ]
    return [serialize(0, [Record(0, f) for f in frames[i : i + 3]])
            for i in range(0, len(frames), 3)]


def seeds(target: str) -> list[bytes]:
    return {"codec": codec_seeds, "server": server_seeds, "client": client_seeds}[target]()


# --- the mutator --------------------------------------------------------------------------------

_NAMES = sorted(
    {"v", "type", "seq", "t_ns", "dtype", "shape", "data", "state", "goal", "reward",
     "terminated", "truncated", "info", "stale", "name", "state_dim", "action_dim",
     "goal_dim", "rate_hz", "action_low", "action_high", "max_action_rate_per_s",
     "episode_ticks", "state_names", "action_names", "heartbeat_ms", "watchdog_ms"}
    | {f for fields in SCHEMA.values() for f in fields}
)
_TYPES = ("hello", "welcome", "state", "command", "heartbeat", "reset", "error", "goodbye", "x")
_INTS = (0, 1, -1, 2, 3, 7, 64, 255, 256, 4096, 4097, 65_535, 2**31 - 1, 2**32 - 1, 2**32,
         2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**31), -(2**63), T0_NS, 10**9, 10**18)
_FLOATS = (0.0, -0.0, 0.5, 1.0, -1.0, 1.5, -2.5, 3.0000001, 1e-300, 5e-324, 1e300, -1e300,
           1.7976931348623157e308, math.inf, -math.inf, math.nan, 2.0**63, 200.0)
_OTHER: tuple[Any, ...] = (
    True, False, None, "", "x" * 1000, "x" * 1024, "x" * 1025, "\u00e9" * 512, "\u00e9" * 513,
    "<f8", "<f4", ">f8", "<i8", "control", "observe",
    "realtime", "lockstep", "late", "busy", "\u00e9\u4e2d", b"",
    b"\x00" * 8, b"\xff" * 16, [], {}, [1, 2], [[[[[]]]]], {"a": {"b": {"c": {}}}},
    msgpack.ExtType(5, b"abc"), msgpack.ExtType(127, b""), msgpack.Timestamp(1, 2),
)
_ARRAY_DTYPES = ("<f8", "<f8", "<f8", "<f4", ">f8", "<i8", "|u1", "float64", "", b"<f8")
_SPECIAL_F = (math.nan, math.inf, -math.inf, 1e308, -1e308, 5e-324, -0.0, 1.0000001, -1.0000001,
              0.2500001, 3.0000001, -2.0000001, 1e9)


def _unpack_loose(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False, strict_map_key=False, use_list=True)


def _pack(obj: Any, rng: random.Random) -> bytes | None:
    try:
        out: bytes = msgpack.packb(
            obj, use_bin_type=rng.random() > 0.05, use_single_float=rng.random() < 0.03
        )
    except Exception:
        return None
    return out


def _slots(obj: Any, out: list[tuple[Any, Any]], depth: int = 0) -> None:
    if depth > 8 or len(out) > 400:
        return
    if isinstance(obj, dict):
        for k in list(obj):
            out.append((obj, k))
            _slots(obj[k], out, depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((obj, i))
            _slots(v, out, depth + 1)


def _special(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.4:
        return rng.choice(_INTS)
    if r < 0.7:
        return rng.choice(_FLOATS)
    return rng.choice(_OTHER)


def _array_map(rng: random.Random, shape: list[int], dtype: Any = "<f8") -> dict[str, Any]:
    n = 1
    for d in shape:
        n *= d
    n = min(n, 4_200)
    vals = [rng.uniform(-4.0, 4.0) if rng.random() < 0.7 else rng.choice(_SPECIAL_F)
            for _ in range(min(n, 64))]
    vals = (vals * (n // max(len(vals), 1) + 1))[:n]
    np_dtype = "<f4" if dtype == "<f4" else "<f8"
    return {"dtype": dtype, "shape": shape, "data": np.array(vals, np_dtype).tobytes()}


def _array_shape(rng: random.Random) -> list[int]:
    r = rng.random()
    if r < 0.35:
        return [rng.choice((1, 1, 2, 3, 18, 18, 17, 0, 19))]
    if r < 0.75:
        return [rng.choice((1, 2, 4, 8, 17, 64, 65, 0)), rng.choice((1, 1, 18, 18, 2, 0))]
    if r < 0.9:
        return [rng.choice((1, 2, 3)) for _ in range(rng.randint(0, 5))]
    return [rng.choice((10**6, 2**31, 2**40, 2**62)), 1]


def _tweak(value: Any, rng: random.Random) -> Any:
    if type(value) is bool:
        return rng.choice((not value, int(value), None))
    if type(value) is int:
        return rng.choice((
            value + 1, value - 1, value + rng.randint(2, 1000), -value, value * 2, value // 2,
            value ^ (1 << rng.randint(0, 63)), float(value), str(value), rng.choice(_INTS),
        ))
    if type(value) is float:
        return rng.choice((rng.choice(_FLOATS), -value, value * 1e300, value + 1e-9,
                           int(value) if math.isfinite(value) else 0))
    if isinstance(value, str):
        return rng.choice((value.encode(), value * 2, value[:-1], value + "\x00",
                           rng.choice(_NAMES), rng.choice(_TYPES), value.upper()))
    if isinstance(value, bytes):
        return rng.choice((value[:-1], value + b"\x00", value[: len(value) // 2], value * 2,
                           bytes(rng.getrandbits(8) for _ in range(len(value))),
                           value.decode("latin-1")))
    if isinstance(value, list):
        return rng.choice((value + value[-1:], value[1:], [value], tuple(value)))
    if isinstance(value, dict):
        return rng.choice(([value], {**value, "extra": value}, dict(list(value.items())[1:])))
    return _special(rng)


def mutate_value(obj: Any, rng: random.Random) -> Any:
    """One structural change to an unpacked message (in place where it can); returns the
    (possibly new) root."""
    slots: list[tuple[Any, Any]] = []
    _slots(obj, slots)
    if not slots or rng.random() < 0.03:
        return rng.choice((_special(rng), [obj], {"v": 1, "type": "command", "x": obj}))
    parent, key = rng.choice(slots)
    value = parent[key]
    r = rng.random()
    if isinstance(parent, dict) and key in ("dtype", "shape", "data") and r < 0.35:
        if key == "shape":
            shape = _array_shape(rng)
            parent.update(_array_map(rng, shape, parent.get("dtype", "<f8")))
            if rng.random() < 0.2:
                parent["shape"] = _special(rng) if rng.random() < 0.5 else [*shape, 1]
        elif key == "dtype":
            parent["dtype"] = rng.choice(_ARRAY_DTYPES)
        else:
            shp = parent.get("shape")
            if isinstance(shp, list) and all(type(d) is int and 0 <= d < 5000 for d in shp):
                parent.update(_array_map(rng, shp, parent.get("dtype", "<f8")))
            else:
                parent["data"] = _tweak(value, rng)
        return obj
    if isinstance(value, dict) and {"dtype", "shape", "data"} <= set(value) and r < 0.5:
        parent[key] = _array_map(rng, _array_shape(rng))
        return obj
    if r < 0.25:
        parent[key] = _special(rng)
    elif r < 0.55:
        parent[key] = _tweak(value, rng)
    elif r < 0.65:
        if isinstance(parent, dict):
            del parent[key]
        else:
            parent.pop(key)
    elif r < 0.75 and isinstance(parent, dict):
        new_key: Any = rng.choice((rng.choice(_NAMES), rng.choice(_NAMES).encode(),
                                   rng.randint(-5, 5), "", "x" * 300))
        other = rng.choice(slots)
        try:
            parent[new_key] = rng.choice((_special(rng), other[0][other[1]]))
        except TypeError:
            pass
    elif r < 0.82:
        depth = rng.choice((1, 2, 30, 200))
        for _ in range(depth):
            value = [value] if rng.random() < 0.5 else {"x": value}
        parent[key] = value
    elif r < 0.9:
        other = rng.choice(slots)
        parent[key] = other[0][other[1]]
    elif r < 0.95 and isinstance(parent, dict):
        parent[key] = _array_map(rng, _array_shape(rng))
    else:
        parent[key] = rng.choice(_TYPES) if key == "type" else rng.choice(_INTS)
    return obj


class Mutator:
    """The structure-aware mutator (module docstring); `mutate` and `crossover` have the
    signatures atheris's `custom_mutator` and `custom_crossover` take. `byte_mutate` is
    libFuzzer's own (`atheris.Mutate`), or None outside atheris."""

    def __init__(self, target: str,
                 byte_mutate: Callable[[bytes, int], bytes] | None = None) -> None:
        self.target = target
        self.byte_mutate = byte_mutate
        self.seed_inputs = seeds(target)
        self.library = [r.payload for d in self.seed_inputs for r in parse(d)[1]
                        if r.payload is not None]

    def _bytes(self, data: bytes, max_size: int, rng: random.Random) -> bytes:
        if self.byte_mutate is not None:
            return self.byte_mutate(data, max_size)
        b = bytearray(data or b"\x00")
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] = rng.getrandbits(8)
        return bytes(b[:max_size])

    def _frame(self, payload: bytes, rng: random.Random) -> bytes:
        if rng.random() < 0.3 or not payload:
            return self._bytes(payload, max(64, 2 * len(payload)), rng)
        try:
            obj = _unpack_loose(payload)
        except Exception:
            return self._bytes(payload, max(64, 2 * len(payload)), rng)
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            obj = mutate_value(obj, rng)
        packed = _pack(obj, rng)
        return packed if packed is not None else self._bytes(payload, 2 * len(payload), rng)

    def mutate(self, data: bytes, max_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        config, records = parse(data)
        frames = [i for i, r in enumerate(records) if r.payload is not None]
        r = rng.random()
        if not records or r < 0.02:
            out = rng.choice(self.seed_inputs)
        elif r < 0.45 and frames:
            i = rng.choice(frames)
            records[i].payload = self._frame(records[i].payload or b"", rng)
            out = serialize(config, records)
        elif r < 0.55:
            op = rng.randrange(4) | (rng.randrange(8) << 2) | rng.choice((0, 0x20))
            records.insert(rng.randint(0, len(records)), Record(op, rng.choice(self.library)))
            out = serialize(config, records)
        elif r < 0.62 and frames:  # a replay: a frame again, later
            i = rng.choice(frames)
            records.insert(rng.randint(i + 1, len(records)), Record(records[i].op,
                                                                    records[i].payload))
            out = serialize(config, records)
        elif r < 0.68:
            del records[rng.randrange(len(records))]
            out = serialize(config, records)
        elif r < 0.72 and len(records) > 1:
            i, j = rng.randrange(len(records)), rng.randrange(len(records))
            records[i], records[j] = records[j], records[i]
            out = serialize(config, records)
        elif r < 0.8:
            i = rng.randrange(len(records))
            rec = records[i]
            if rng.random() < 0.3:
                records.insert(i, Record(0x80 | rng.randrange(128)))
            elif rec.payload is None:
                rec.op = 0x80 | rng.randrange(128)
            else:
                rec.op = rec.op ^ (1 << rng.randrange(7))
            out = serialize(config, records)
        elif r < 0.83:
            out = serialize(config ^ (1 << rng.randrange(7)), records)
        elif r < 0.88:
            out = serialize(config, renumber(records, rng))
        elif r < 0.92:
            out = serialize(config, retime(records, rng))
        else:
            out = self._bytes(data, max_size, rng)
        if len(out) > max_size:
            out = out[:max_size]
        return out

    def crossover(self, data1: bytes, data2: bytes, max_out_size: int, seed: int) -> bytes:
        rng = random.Random(seed)
        c1, r1 = parse(data1)
        _, r2 = parse(data2)
        i, j = rng.randint(0, len(r1)), rng.randint(0, len(r2))
        return serialize(c1, r1[:i] + r2[j:])[:max_out_size]


def _rewrite(records: list[Record], fn: Callable[[int, Record, dict[str, Any]], None]) -> list[
    Record
]:
    for i, rec in enumerate(records):
        if rec.payload is None:
            continue
        try:
            obj = _unpack_loose(rec.payload)
        except Exception:
            continue
        if type(obj) is not dict:
            continue
        fn(i, rec, obj)
        try:
            rec.payload = msgpack.packb(obj, use_bin_type=True)
        except Exception:
            continue
    return records


def renumber(records: list[Record], rng: random.Random) -> list[Record]:
    """Give each identity's frames increasing `seq`s (a hello may start afresh)."""
    nxt: dict[int, int] = {}

    def fn(i: int, rec: Record, obj: dict[str, Any]) -> None:
        who = rec.op & 3
        if obj.get("type") == "hello" and rng.random() < 0.5:
            nxt[who] = rng.choice((1, 2, 100))
        n = nxt.get(who, rng.choice((1, 1, 5)))
        obj["seq"] = n
        nxt[who] = n + 1

    return _rewrite(records, fn)


def retime(records: list[Record], rng: random.Random) -> list[Record]:
    """Put deadlines and plan times where a client would: just ahead of the fake clock."""
    times: list[int] = []
    t = T0_NS
    for rec in records:
        t += rec.advance_ns * rec.repeat
        times.append(t)
    period = rng.choice((5_000_000, 10_000_000))

    def fn(i: int, rec: Record, obj: dict[str, Any]) -> None:
        now = times[i]
        obj["t_ns"] = now
        if obj.get("type") == "command":
            dl = now + rng.choice((-1_000_000, 0, 1_000_000, 20_000_000, 200_000_000))
            obj["deadline_ns"] = dl
            if "plan" in obj:
                obj["plan_t0_ns"] = dl + period
                obj["plan_dt_ns"] = period
                obj["plan_obs_t_ns"] = now

    return _rewrite(records, fn)


# --- running ------------------------------------------------------------------------------------


class Runner:
    """One target's `TestOneInput`: runs an input, keeps counts (written to `stats_path` about
    every second, at the last of `runs` inputs, and at a violation), and announces a violation
    on stderr (`VIOLATION_MARK kind: detail`) before it propagates."""

    def __init__(self, target: str, *, fault: str | None = None, stats_path: str | None = None,
                 runs: int = 0) -> None:
        if target not in TARGETS:
            raise ValueError(f"{target=} is not one of {TARGETS}")
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"{fault=} is not one of {FAULTS}")
        self.target = target
        self.fault = fault
        self.stats_path = stats_path
        self.runs = runs
        self.stats: Counter[str] = Counter()
        self.violation: FuzzViolation | None = None
        self._next_write = 0.0

    def run(self, data: bytes) -> None:
        """One input; raises FuzzViolation (or whatever the harness itself got wrong)."""
        if self.target == "codec":
            run_codec(data, self.stats)
        elif self.target == "server":
            run_server(data, self.stats, fault=self.fault)
        else:
            run_client(data, self.stats)

    def __call__(self, data: bytes) -> None:
        self.stats["inputs"] += 1
        try:
            self.run(data)
        except FuzzViolation as exc:
            self.violation = exc
            self.stats[f"violation_{exc.kind}"] += 1
            self.write_stats()
            sys.stderr.write(f"\n{VIOLATION_MARK} {exc.kind}: {exc.detail}\n")
            sys.stderr.flush()
            raise
        now = time.monotonic()
        if now >= self._next_write or self.stats["inputs"] == self.runs:
            self._next_write = now + 1.0
            self.write_stats()

    def write_stats(self) -> None:
        if self.stats_path is None:
            return
        tmp = f"{self.stats_path}.tmp"
        with open(tmp, "w") as f:
            json.dump(dict(self.stats), f)
        os.replace(tmp, self.stats_path)


def run_input(target: str, data: bytes, *, fault: str | None = None) -> Counter[str]:
    """Run one input outside libFuzzer (tests, `--replay`); raises FuzzViolation. Returns
    the counts it gathered."""
    runner = Runner(target, fault=fault)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # numpy on the NaN and inf the inputs are made of
        runner.run(data)
    return runner.stats


def describe(data: bytes) -> str:
    """An input, one line per step, with each frame unpacked where it unpacks: for reading a
    crash input (`--show`)."""
    config, records = parse(data)
    lines = [f"config 0x{config:02x}"]
    t = T0_NS
    for rec in records:
        t += rec.advance_ns * rec.repeat
        at = f"t0+{(t - T0_NS) / 1e6:.3f} ms"
        if rec.payload is None:
            lines.append(f"{at}  tick x{rec.repeat} (+{rec.advance_ns / 1e6:g} ms each)")
            continue
        try:
            shown = repr(_unpack_loose(rec.payload))
        except Exception as exc:
            shown = f"{rec.payload[:80]!r} ({type(exc).__name__})"
        flags = (" multipart" if rec.multipart else "") + (" +tick" if rec.tick_after else "")
        lines.append(f"{at}  {rec.ident!r}{flags}: {shown[:400]}")
    return "\n".join(lines)


def instrument(atheris: Any) -> int:
    """Coverage instrumentation for every function of the `INSTRUMENTED` modules (already
    imported: this module imports them, so `instrument_imports` would come too late). Returns
    how many functions were instrumented."""
    names = set(INSTRUMENTED)
    funcs = [o for o in gc.get_objects()
             if isinstance(o, types.FunctionType) and getattr(o, "__module__", None) in names]
    for f in funcs:
        atheris.instrument_func(f)
    return len(funcs)


def _quiet() -> None:
    # the bridge logs refusals and numpy warns about inf arithmetic: millions of lines here
    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv if argv is None else argv)
    usage = (f"usage: python -m hw_bridge.fuzzing {{{','.join(TARGETS)}}} [libFuzzer flags] "
             "[corpus dirs | crash file] | TARGET --replay FILE | TARGET --show FILE")
    if len(argv) < 2 or argv[1] not in TARGETS:
        sys.stderr.write(usage + "\n")
        raise SystemExit(2)
    target = argv.pop(1)
    fault = os.environ.get("RTDIFF_FUZZ_FAULT") or None
    if fault is not None and fault not in FAULTS:
        sys.stderr.write(f"rtdiff-fuzz: error: RTDIFF_FUZZ_FAULT={fault!r}, known: {FAULTS}\n")
        raise SystemExit(2)
    _quiet()
    if len(argv) == 3 and argv[1] == "--show":
        print(describe(Path(argv[2]).read_bytes()))
        return
    if len(argv) == 3 and argv[1] == "--replay":
        try:
            stats = run_input(target, Path(argv[2]).read_bytes(), fault=fault)
        except OSError as exc:
            sys.stderr.write(f"rtdiff-fuzz: error: {exc}\n")
            raise SystemExit(2) from None
        sys.stderr.write(f"rtdiff-fuzz: no violation ({dict(stats)})\n")
        return
    try:
        import atheris
    except ImportError:
        sys.stderr.write("rtdiff-fuzz: error: the atheris package is not installed "
                         "(pip install 'atheris>=2.3'; a dev dependency)\n")
        raise SystemExit(2) from None
    runs = 0
    for a in argv[1:]:
        if a.startswith("-runs="):
            runs = int(a[len("-runs="):])
    sys.stderr.write(f"rtdiff-fuzz: {target}: instrumented {instrument(atheris)} functions\n")
    runner = Runner(target, fault=fault, stats_path=os.environ.get("RTDIFF_FUZZ_STATS"),
                    runs=runs)
    # looked up at each call: atheris binds its libFuzzer-backed Mutate only once Fuzz() runs
    mutator = Mutator(target, lambda data, max_size: atheris.Mutate(data, max_size))
    atheris.Setup(argv, runner, custom_mutator=mutator.mutate,
                  custom_crossover=mutator.crossover)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
