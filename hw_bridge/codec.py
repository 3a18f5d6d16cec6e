"""Protocol v1 on the wire: msgpack maps, numpy arrays as raw bytes + dtype + shape, never pickle.

Every message is one ZeroMQ frame holding one msgpack map with at least `v` (protocol version),
`type`, `seq` and `t_ns`. `decode` is the single gate between untrusted bytes and the rest of the
bridge: it either returns a map whose every field has the type `docs/protocol.md` promises, or
raises `ProtocolError` with a machine-readable `code`. It never raises anything else, whatever
the input (the fuzz tests hold it to that), and it never allocates more than the message's own
size: the unpacker is bounded by `MAX_MSG_BYTES` and arrays by `MAX_ARRAY_ELEMS`.

Validation is hand-written rather than a schema library because it sits on the hot path: a
command is decoded and checked in a few microseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgpack
import numpy as np

from runtime.protocols import FloatArray, PlantSpec

PROTOCOL_VERSION = 2  # the newest version this build speaks
SUPPORTED_VERSIONS: tuple[int, ...] = (1, 2)  # v2 adds a command's plan (docs/protocol.md)
MAX_MSG_BYTES = 65_536  # larger payloads are rejected before unpacking
MAX_ARRAY_ELEMS = 4_096  # per array; a state or action is far smaller
MAX_DEPTH = 1_024  # msgpack values nest at most this deep (the unpacker's own stack)
ALLOWED_DTYPES = ("<f8", "<f4")  # little-endian IEEE floats only
_F8 = np.dtype("<f8")  # numpy's float64 on little-endian hosts: `a.dtype is _F8` is a cheap test

MESSAGE_TYPES = ("hello", "welcome", "state", "command", "heartbeat", "reset", "error", "goodbye")
ROLES = ("control", "observe")
MODES = ("lockstep", "realtime")


class ProtocolError(ValueError):
    """A message that breaks protocol v1. `code` is one of the error codes in docs/protocol.md."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# --- arrays -------------------------------------------------------------------------------------


def encode_array(a: np.ndarray[Any, Any]) -> dict[str, Any]:
    """(any shape) float array -> {"dtype": "<f8", "shape": [...], "data": bytes}."""
    # `tobytes` writes C order whatever the layout, so a float64 ndarray needs no conversion
    arr = a if type(a) is np.ndarray and a.dtype is _F8 else np.ascontiguousarray(a, dtype="<f8")
    return {"dtype": "<f8", "shape": list(arr.shape), "data": arr.tobytes()}


def decode_array(obj: Any, *, field: str, shape: tuple[int, ...] | None = None) -> FloatArray:
    """Encoded array -> float64 ndarray (a copy), checking dtype, shape and byte length."""
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", f"{field}: expected an array map, got {_tname(obj)}")
    dtype, shp, data = obj.get("dtype"), obj.get("shape"), obj.get("data")
    if (  # the common case, checked in a few cheap steps: a 1-D float64 of the expected length
        shape is not None
        and len(shape) == 1
        and dtype == "<f8"
        and type(shp) is list
        and len(shp) == 1
        and type(shp[0]) is int  # not a bool or a float that compares equal
        and shp[0] == shape[0]
        and type(data) is bytes
        and len(data) == 8 * shape[0]
    ):
        return _frombuffer(data, _float64).copy()
    if dtype not in ALLOWED_DTYPES:
        raise ProtocolError("bad_message", f"{field}.dtype: expected one of {ALLOWED_DTYPES}")
    if not isinstance(shp, list) or not all(_is_int(d) and 0 <= d for d in shp) or len(shp) > 4:
        raise ProtocolError("bad_message", f"{field}.shape: expected a list of <= 4 ints >= 0")
    if not isinstance(data, bytes):
        raise ProtocolError("bad_message", f"{field}.data: expected bin, got {_tname(data)}")
    n = 1
    for d in shp:
        n *= d
        if n > MAX_ARRAY_ELEMS:
            raise ProtocolError("bad_message", f"{field}: more than {MAX_ARRAY_ELEMS} elements")
    itemsize = 8 if dtype == "<f8" else 4
    if len(data) != n * itemsize:
        raise ProtocolError(
            "bad_message", f"{field}: {len(data)} data bytes for shape {shp} of {dtype}"
        )
    if shape is not None and tuple(shp) != shape:
        raise ProtocolError("bad_shape", f"{field}: expected shape {list(shape)}, got {shp}")
    return np.frombuffer(data, dtype=dtype).astype(np.float64).reshape(shp)


_frombuffer, _float64 = np.frombuffer, np.float64


def _vec_data(obj: Any, n: int) -> Any:
    """The `data` bytes of an array map that is exactly a (n,) `<f8` array, else None (the
    caller then runs `decode_array`, which says what is wrong)."""
    if type(obj) is dict:
        shp, data = obj.get("shape"), obj.get("data")
        if (
            obj.get("dtype") == "<f8"
            and type(shp) is list
            and len(shp) == 1
            and type(shp[0]) is int
            and shp[0] == n
            and type(data) is bytes
            and len(data) == 8 * n
        ):
            return data
    return None


# --- field checks -------------------------------------------------------------------------------


def _tname(x: Any) -> str:
    return type(x).__name__


# The unpacker makes exact ints, floats and bools, so `type(x) is int` is both the fast test
# and the one that keeps a bool from passing as an int.
_I64_MIN, _I64_END, _U32_END = -(2**63), 2**63, 2**32


def _is_int(x: Any) -> bool:
    return type(x) is int


def _is_num(x: Any) -> bool:
    return type(x) is float or type(x) is int


def _k_int(x: Any) -> bool:
    return type(x) is int and _I64_MIN <= x < _I64_END


def _k_uint(x: Any) -> bool:
    return type(x) is int and 0 <= x < _I64_END


def _k_u32(x: Any) -> bool:
    return type(x) is int and 0 <= x < _U32_END


def _k_bool(x: Any) -> bool:
    return x is True or x is False


MAX_STR_BYTES = 1024  # a str field's UTF-8 length


def _str_ok(x: str) -> bool:
    """At most MAX_STR_BYTES bytes of UTF-8 (not characters: a peer in another language counts
    bytes). An ASCII string's length is its byte count; only others need encoding to measure."""
    return len(x) <= MAX_STR_BYTES and (x.isascii() or len(x.encode()) <= MAX_STR_BYTES)


def _k_str(x: Any) -> bool:
    return type(x) is str and _str_ok(x)


def _k_map(x: Any) -> bool:
    return isinstance(x, dict)


def _k_arr(x: Any) -> bool:
    return isinstance(x, dict)  # checked in depth by decode_array where it is used


def _k_versions(x: Any) -> bool:
    return isinstance(x, list) and 0 < len(x) <= 16 and all(_k_uint(v) for v in x)


def _k_counters(x: Any) -> bool:
    return isinstance(x, dict) and all(isinstance(k, str) and _k_int(v) for k, v in x.items())


_Check = Any  # Callable[[Any], bool]; kept loose so the table below stays readable

# type -> {field: (check, required, nullable)}; `v`, `type`, `seq`, `t_ns` are common to all.
SCHEMA: dict[str, dict[str, tuple[_Check, bool, bool]]] = {
    "hello": {
        "versions": (_k_versions, True, False),
        "role": (lambda x: x in ROLES, True, False),
        "takeover": (_k_bool, False, False),
        "name": (_k_str, False, False),
        "expect": (_k_map, False, True),
    },
    "welcome": {
        "version": (_k_uint, True, False),
        "session": (_k_uint, True, False),
        "role": (lambda x: x in ROLES, True, False),
        "mode": (lambda x: x in MODES, True, False),
        "spec": (_k_map, True, False),
        "limits": (_k_map, True, False),
        "echo_t_ns": (_k_int, True, False),
        "rx_t_ns": (_k_int, True, False),
    },
    "state": {
        "obs": (_k_map, True, False),
        "ack_seq": (_k_int, True, False),
        "ack_lag_ns": (_k_int, False, True),
        "reset_seq": (_k_int, True, False),
        "safe": (_k_bool, True, False),
    },
    "command": {
        "stream": (_k_u32, True, False),
        "tick": (_k_int, True, False),
        "obs_seq": (_k_int, True, False),
        "action": (_k_arr, True, False),
        "deadline_ns": (_k_int, True, True),
        "fallback": (_k_str, False, False),
        "plan": (_k_arr, False, True),
        "plan_t0_ns": (_k_int, False, False),
        "plan_dt_ns": (_k_int, False, False),
        "plan_obs_t_ns": (_k_int, False, True),
    },
    "heartbeat": {
        "echo_seq": (_k_int, False, False),
        "echo_t_ns": (_k_int, False, False),
        "rx_t_ns": (_k_int, False, False),
        "counters": (_k_counters, False, False),
        "safe": (_k_bool, False, False),
    },
    "reset": {"seed": (_k_uint, False, True)},
    "error": {
        "code": (_k_str, True, False),
        "message": (_k_str, True, False),
        "ref_seq": (_k_int, False, True),
        "fatal": (_k_bool, False, False),
        "lag_ns": (_k_int, False, True),
    },
    "goodbye": {"reason": (_k_str, False, False)},
}


_unpackb = msgpack.unpackb


def _no_ext(code: int, data: bytes) -> Any:
    raise ProtocolError("bad_message", f"msgpack ext type {code} is not part of the protocol")


_Timestamp = msgpack.Timestamp  # the unpacker decodes ext type -1 itself, past `ext_hook`


def _map_hook(d: dict[Any, Any]) -> dict[Any, Any]:
    """Every map, as the unpacker builds it: keys are str (bin keys are refused, wherever the
    map sits, unknown fields included) and no value is a msgpack timestamp (an ext type)."""
    for k, v in d.items():
        if type(k) is not str:
            raise ProtocolError("bad_message", f"map key of type {_tname(k)}: keys are str")
        if type(v) is _Timestamp:
            raise ProtocolError("bad_message", "msgpack ext type -1 (timestamp) in a map")
    return d


def _list_hook(a: list[Any]) -> list[Any]:
    for v in a:
        if type(v) is _Timestamp:
            raise ProtocolError("bad_message", "msgpack ext type -1 (timestamp) in an array")
    return a


def decode(payload: bytes, *, max_bytes: int = MAX_MSG_BYTES) -> dict[str, Any]:
    """One frame -> a validated message map. Raises only `ProtocolError`.

    Codes: `bad_message` (not msgpack, not a map, a missing or ill-typed field, trailing bytes,
    too large), `bad_version` (`v` is not a version this build speaks).
    """
    return check_message(unpack(payload, max_bytes=max_bytes))


def unpack(payload: bytes, *, max_bytes: int = MAX_MSG_BYTES) -> Any:
    """The first half of `decode`: size and msgpack only (raises `ProtocolError`); the value
    is untrusted until `check_message` (or `fast_state`) accepted it."""
    if len(payload) > max_bytes:
        raise ProtocolError("bad_message", f"{len(payload)} bytes is over the {max_bytes} limit")
    try:
        value = _unpackb(payload, raw=False, strict_map_key=True, ext_hook=_no_ext,
                         use_list=True, object_hook=_map_hook, list_hook=_list_hook)
    except ProtocolError:
        raise
    except msgpack.StackError:
        raise ProtocolError(
            "bad_message", f"values nested more than {MAX_DEPTH} deep"
        ) from None
    except Exception as exc:  # any unpacker failure on untrusted bytes is a bad message
        raise ProtocolError("bad_message", f"not a msgpack message: {type(exc).__name__}") from None
    if type(value) is _Timestamp:
        raise ProtocolError("bad_message", "msgpack ext type -1 (timestamp) is not a message")
    return value


def check_message(msg: Any) -> dict[str, Any]:
    """The second half of `decode`: an unpacked value -> a validated message map."""
    if type(msg) is not dict:  # the unpacker makes plain dicts
        raise ProtocolError("bad_message", f"expected a map, got {_tname(msg)}")
    v = msg.get("v")
    if type(v) is not int:
        raise ProtocolError("bad_message", "field v: expected the protocol version (int)")
    kind = msg.get("type")
    if kind == "hello":
        if v != 1:  # so that every server, old or new, can read it and negotiate
            raise ProtocolError(
                "bad_version", f"a hello carries v: 1, not {v} (offered versions go in `versions`)"
            )
    elif v not in SUPPORTED_VERSIONS:
        raise ProtocolError("bad_version", f"protocol v{v} is not spoken here {SUPPORTED_VERSIONS}")
    if not isinstance(kind, str) or kind not in SCHEMA:
        raise ProtocolError("bad_message", f"field type: expected one of {MESSAGE_TYPES}")
    seq, t_ns = msg.get("seq"), msg.get("t_ns")
    if not (type(seq) is int and 0 <= seq < _I64_END):
        raise ProtocolError("bad_message", "field seq: expected an int >= 0")
    if not (type(t_ns) is int and _I64_MIN <= t_ns < _I64_END):
        raise ProtocolError("bad_message", "field t_ns: expected an int64")
    fast = _FAST.get(kind)
    if fast is not None and fast(msg):
        return msg  # the hot types accepted in one expression; anything else gets the full check
    check_fields(msg, kind)
    return msg


def check_fields(msg: dict[str, Any], kind: str) -> None:
    """The reference field check of one message type, against SCHEMA (raises ProtocolError)."""
    for name, (check, required, nullable) in SCHEMA[kind].items():
        if name not in msg:
            if required:
                raise ProtocolError("bad_message", f"{kind}.{name}: missing")
            continue
        value = msg[name]
        if value is None and nullable:
            continue
        if not check(value):
            raise ProtocolError("bad_message", f"{kind}.{name}: ill-typed ({_tname(value)})")


_MISSING = object()
_EMPTY: dict[str, Any] = {}


def _fast_state(m: dict[str, Any]) -> bool:
    a, r, s = m.get("ack_seq"), m.get("reset_seq"), m.get("safe")
    lag = m.get("ack_lag_ns")
    return (
        (lag is None or (type(lag) is int and _I64_MIN <= lag < _I64_END))
        and type(m.get("obs")) is dict
        and type(a) is int
        and _I64_MIN <= a < _I64_END
        and type(r) is int
        and _I64_MIN <= r < _I64_END
        and (s is True or s is False)
    )


def _fast_command(m: dict[str, Any]) -> bool:
    st, tk, os_ = m.get("stream"), m.get("tick"), m.get("obs_seq")
    dl, fb = m.get("deadline_ns", _MISSING), m.get("fallback", "")
    return (
        type(st) is int
        and 0 <= st < _U32_END
        and type(tk) is int
        and _I64_MIN <= tk < _I64_END
        and type(os_) is int
        and _I64_MIN <= os_ < _I64_END
        and type(m.get("action")) is dict
        and (dl is None or (type(dl) is int and _I64_MIN <= dl < _I64_END))
        and type(fb) is str
        and (not fb or _str_ok(fb))
        and (_NO_PLAN.isdisjoint(m) or _plan_fields(m))
    )


_NO_PLAN = frozenset(("plan", "plan_t0_ns", "plan_dt_ns", "plan_obs_t_ns"))


def _plan_fields(m: dict[str, Any]) -> bool:
    p, t0, dt, ot = m.get("plan"), m.get("plan_t0_ns", 0), m.get("plan_dt_ns", 0), m.get(
        "plan_obs_t_ns"
    )
    return (
        (p is None or type(p) is dict)
        and type(t0) is int
        and _I64_MIN <= t0 < _I64_END
        and type(dt) is int
        and _I64_MIN <= dt < _I64_END
        and (ot is None or (type(ot) is int and _I64_MIN <= ot < _I64_END))
    )


# Fast accept-only checks for the two messages that flow every tick; tests hold them to agree
# with `check_fields` on the fuzz corpus.
_FAST = {"state": _fast_state, "command": _fast_command}


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return encode_array(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot put {type(obj).__name__} on the wire")


def encode(msg: Mapping[str, Any]) -> bytes:
    """A message map -> one frame. numpy arrays become array maps, numpy scalars plain values."""
    out: bytes = msgpack.packb(msg, use_bin_type=True, default=_default)
    return out


def new_encoder() -> Callable[[Mapping[str, Any]], bytes]:
    """`encode` as a reusable packer for one thread's hot path (`packb` builds and frees a
    packer, with its 256 KiB buffer, per call). Not thread-safe: one per sender (the server
    core, each client). Same bytes as `encode`; a packer that raises is reset, not left half
    full."""
    pack: Callable[[Mapping[str, Any]], bytes] = msgpack.Packer(
        use_bin_type=True, default=_default
    ).pack
    return pack


def message(kind: str, seq: int, t_ns: int, *, v: int = 1, **fields: Any) -> dict[str, Any]:
    """Build a message map with the common header (`v`: the session's protocol version;
    1, the version every peer speaks, unless given)."""
    return {"v": v, "type": kind, "seq": seq, "t_ns": t_ns, **fields}


# --- spec and observation payloads ---------------------------------------------------------------


def spec_to_wire(spec: PlantSpec) -> dict[str, Any]:
    rate = spec.max_action_rate_per_s
    return {
        "name": spec.name,
        "state_dim": spec.state_dim,
        "action_dim": spec.action_dim,
        "goal_dim": spec.goal_dim,
        "state_names": list(spec.state_names),
        "action_names": list(spec.action_names),
        "action_low": encode_array(spec.action_low),
        "action_high": encode_array(spec.action_high),
        "max_action_rate_per_s": None if rate is None else encode_array(np.asarray(rate)),
        "rate_hz": float(spec.rate_hz),
        "episode_ticks": spec.episode_ticks,
    }


def spec_from_wire(d: Mapping[str, Any]) -> PlantSpec:
    """Raises ProtocolError on a malformed spec map (including PlantSpec's own checks)."""
    try:
        da = int(d["action_dim"])
        rate = d.get("max_action_rate_per_s")
        return PlantSpec(
            name=str(d["name"]),
            state_dim=int(d["state_dim"]),
            action_dim=da,
            goal_dim=int(d.get("goal_dim", 0)),
            state_names=tuple(str(s) for s in d.get("state_names", [])),
            action_names=tuple(str(s) for s in d.get("action_names", [])),
            action_low=decode_array(d["action_low"], field="spec.action_low", shape=(da,)),
            action_high=decode_array(d["action_high"], field="spec.action_high", shape=(da,)),
            max_action_rate_per_s=None
            if rate is None
            else decode_array(rate, field="spec.max_action_rate_per_s", shape=(da,)),
            rate_hz=float(d["rate_hz"]),
            episode_ticks=int(d.get("episode_ticks", 0)),
        )
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError("bad_message", f"welcome.spec: {exc}") from None


def _info_value(val: Any, depth: int) -> Any:
    if isinstance(val, (bool, int, float, str, bytes, np.generic, np.ndarray)) or val is None:
        return val
    if depth < 4 and isinstance(val, Mapping):
        return {str(k): _info_value(v, depth + 1) for k, v in val.items()}
    if depth < 4 and isinstance(val, (list, tuple)):
        return [_info_value(v, depth + 1) for v in val]
    return repr(val)  # anything else is named, never silently dropped


def _info_to_wire(info: Mapping[str, Any]) -> dict[str, Any]:
    """Task extras: plain values, arrays (as array maps), nested maps and lists travel."""
    if not info:
        return {}
    return {str(k): _info_value(v, 0) for k, v in info.items()}


def obs_to_wire(
    seq: int,
    t_ns: int,
    state: FloatArray,
    goal: FloatArray,
    reward: float,
    terminated: bool,
    truncated: bool,
    info: Mapping[str, Any],
    stale: bool = False,
) -> dict[str, Any]:
    return {
        "seq": seq,
        "t_ns": t_ns,
        "state": encode_array(state),
        "goal": encode_array(goal),
        "reward": float(reward),
        "terminated": bool(terminated),
        "truncated": bool(truncated),
        "info": _info_to_wire(info),
        "stale": bool(stale),
    }


def check_obs(d: Any, *, state_dim: int, goal_dim: int) -> tuple[FloatArray, FloatArray]:
    """Validate a state message's `obs` map; returns (state (Ds,), goal (Dg,))."""
    if type(d) is not dict:
        raise ProtocolError("bad_message", "state.obs: expected a map")
    seq, t, rw, te, tr = (
        d.get("seq"),
        d.get("t_ns"),
        d.get("reward"),
        d.get("terminated"),
        d.get("truncated"),
    )
    if (  # the common case in one expression; the checks below name what is wrong otherwise
        type(seq) is int
        and _I64_MIN <= seq < _I64_END
        and type(t) is int
        and _I64_MIN <= t < _I64_END
        and (type(rw) is float or type(rw) is int)
        and (te is True or te is False)
        and (tr is True or tr is False)
        and type(d.get("info", _EMPTY)) is dict
        and ((st := d.get("stale", False)) is True or st is False)
        and (sd := _vec_data(d.get("state"), state_dim)) is not None
        and (gd := _vec_data(d.get("goal"), goal_dim)) is not None
    ):
        return _frombuffer(sd, _float64).copy(), _frombuffer(gd, _float64).copy()
    if not (_k_int(d.get("seq")) and _k_int(d.get("t_ns"))):
        raise ProtocolError("bad_message", "state.obs.seq/t_ns: expected ints")
    if not (_is_num(d.get("reward")) and _k_bool(d.get("terminated"))):
        raise ProtocolError("bad_message", "state.obs.reward/terminated: ill-typed")
    if not (_k_bool(d.get("truncated")) and isinstance(d.get("info", {}), dict)):
        raise ProtocolError("bad_message", "state.obs.truncated/info: ill-typed")
    if not _k_bool(d.get("stale", False)):
        raise ProtocolError("bad_message", "state.obs.stale: expected a bool")
    state = decode_array(d.get("state"), field="state.obs.state", shape=(state_dim,))
    goal = decode_array(d.get("goal"), field="state.obs.goal", shape=(goal_dim,))
    return state, goal


def fast_state(msg: Any, *, state_dim: int, goal_dim: int) -> tuple[FloatArray, FloatArray] | None:
    """The client's per-tick path: an unpacked value that is a well-formed v1 `state` whose
    `obs` has this layout -> its (state (Ds,), goal (Dg,)) arrays, checked in one pass; None
    for anything else, which then goes through `check_message` and `check_obs` (they accept it
    or say what is wrong). Accepts nothing those two would refuse (tests hold it to that)."""
    if type(msg) is not dict:
        return None
    v, seq, t, o = msg.get("v"), msg.get("seq"), msg.get("t_ns"), msg.get("obs")
    a, r, sf = msg.get("ack_seq"), msg.get("reset_seq"), msg.get("safe")
    lag = msg.get("ack_lag_ns")
    if not (
        msg.get("type") == "state"
        and (lag is None or (type(lag) is int and _I64_MIN <= lag < _I64_END))
        and type(v) is int
        and v in SUPPORTED_VERSIONS
        and type(seq) is int
        and 0 <= seq < _I64_END
        and type(t) is int
        and _I64_MIN <= t < _I64_END
        and type(a) is int
        and _I64_MIN <= a < _I64_END
        and type(r) is int
        and _I64_MIN <= r < _I64_END
        and (sf is True or sf is False)
        and type(o) is dict
    ):
        return None
    oseq, ot, rw, te, tr = (
        o.get("seq"),
        o.get("t_ns"),
        o.get("reward"),
        o.get("terminated"),
        o.get("truncated"),
    )
    if (
        type(oseq) is int
        and _I64_MIN <= oseq < _I64_END
        and type(ot) is int
        and _I64_MIN <= ot < _I64_END
        and (type(rw) is float or type(rw) is int)
        and (te is True or te is False)
        and (tr is True or tr is False)
        and type(o.get("info", _EMPTY)) is dict
        and ((st := o.get("stale", False)) is True or st is False)
        and (sd := _vec_data(o.get("state"), state_dim)) is not None
        and (gd := _vec_data(o.get("goal"), goal_dim)) is not None
    ):
        # fresh, writable arrays, each over its own copy of the bytes: one numpy call apiece
        return _frombuffer(bytearray(sd), _float64), _frombuffer(bytearray(gd), _float64)
    return None
