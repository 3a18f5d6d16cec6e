"""`rtdiff trace export RUN_DIR --mcap OUT.mcap`: a tick trace as MCAP, for Foxglove Studio.

RUN_DIR is a trace directory (`rtdiff run --trace DIR`: `meta.json`, `chunk_NNNNNN.npz`, and
`sidecar.npz` when the run recorded one). OUT is one MCAP file whose messages are JSON, each
channel described by a JSON Schema (`jsonschema` encoding) whose field names are the trace's
and whose descriptions carry the units:

    /rtdiff/tick        one message per record: every `TICK_DTYPE` field (the action as an
                        array), plus `compute_ns` (emit_ns - start_ns) and `fallback_name`
    /rtdiff/state       the observed state per record (sidecar; its first ten minutes)
    /rtdiff/plan_noise  the plan's per-token noise levels per record (sidecar, when the
                        planner reports them)
    /rtdiff/events      one message per record where something happened, as names: reset,
                        push, goal_switch (sidecar), miss, skipped, fallback:NAME (trace)

and two metadata records: `rtdiff.trace` (meta.json, each value a string, JSON for non-strings)
and `rtdiff.export` (records exported, records meta.json promises, whether the run closed cleanly
and whether the export holds all of it).

Contract:
- Every message's log time (and publish time) is the record's `start_ns`: the tick's actual
  start on the controller's monotonic clock, so log times never decrease within a run.
- The chunks are streamed: one trace chunk is read, written as messages and dropped before the
  next, so memory stays flat however long the run was (the sidecar's arrays are loaded whole;
  they hold at most ten minutes).
- A trace from a crashed run exports the records that reached disk and says on stderr what
  `read_trace` says may be missing. The sidecar row i belongs to the run's record i, so rows
  stay paired with their ticks even when chunks are missing; an unreadable sidecar is said on
  stderr and the ticks export without it.
- Bad input (not a trace, OUT exists without --force, OUT unwritable) is one line through
  `CliError`. OUT is written through `runtime.files.atomic_write` (temp file beside it, fsync,
  `os.replace`): a failed export leaves no file, or the old one, never a torn one.
- `mcap` is imported inside `cli_trace_export` only: `runtime` imports without it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from runtime.cli import CliError
from runtime.fallback import FALLBACK_NAMES
from runtime.files import atomic_write
from runtime.sidecar import EVENT_GOAL, EVENT_PUSH, EVENT_RESET, load_sidecar
from runtime.trace import FORMAT, TICK_DTYPE, read_trace

TOPIC_TICK = "/rtdiff/tick"
TOPIC_STATE = "/rtdiff/state"
TOPIC_PLAN_NOISE = "/rtdiff/plan_noise"
TOPIC_EVENTS = "/rtdiff/events"

# the trace directory's layout (runtime/trace.py): chunk n holds the run's records
# n*chunk_ticks .. n*chunk_ticks + len - 1
_CHUNK_RE = re.compile(r"^chunk_(\d{6,})\.npz$")

_CLOCK = "ns on the controller's monotonic clock"
_FALLBACKS = ", ".join(f"{code} {name or 'none'}" for code, name in FALLBACK_NAMES.items())

# One description per field of the tick channel: `TICK_DTYPE`'s fields and the two derived ones.
TICK_FIELDS: dict[str, str] = {
    "tick": "tick index k of the run (scheduled start = t0 + k*T)",
    "scheduled_ns": f"scheduled start t0 + k*T, {_CLOCK}",
    "start_ns": f"actual start of the tick, {_CLOCK} (the message's log time)",
    "observe_ns": f"observation received, {_CLOCK}",
    "refine_end_ns": f"refinement finished (== observe_ns when no step ran), {_CLOCK}",
    "emit_ns": f"command handed to the plant, {_CLOCK}",
    "deadline_ns": f"when the plant applies this tick's command, {_CLOCK}",
    "refine_ns": "time inside planner.refine before the command, summed; duration in ns",
    "lateness_ns": "start_ns - scheduled_ns: how late the tick started; duration in ns",
    "compute_ns": "emit_ns - start_ns: tick start to command sent; duration in ns (derived)",
    "action": "the action emitted, in the plant's units (one value per actuator)",
    "surprise": "planner surprise at observe: RMS of observed minus planned state, in "
                "normalized units (0 when the planner reports none; null if not finite)",
    "steps": "refinement steps done this tick (with early emit, after the command too); count",
    "skipped": "ticks skipped just before this one by the overrun policy; count",
    "episode": "episode index",
    "fallback": f"fallback code: {_FALLBACKS}",
    "fallback_name": "the fallback code's name ('' when the planner's own action went out)",
    "missed": "a miss: the command left after deadline_ns less the link's transport margin",
}

_EVENT_BITS = {EVENT_RESET: "reset", EVENT_PUSH: "push", EVENT_GOAL: "goal_switch"}
EVENT_NAMES = ("reset", "push", "goal_switch", "miss", "skipped", "fallback:NAME")

PROGRESS_EVERY_S = 0.5

Json = dict[str, Any]


# ---- schemas ------------------------------------------------------------------------------


def _json_type(dtype: np.dtype[Any]) -> Json:
    if dtype.kind == "b":
        return {"type": "boolean"}
    if dtype.kind in "iu":
        return {"type": "integer"}
    return {"type": ["number", "null"]}  # a non-finite float is written as null


def _vector(desc: str, item: Json, length: int | None = None) -> Json:
    out: Json = {"type": "array", "description": desc, "items": item}
    if length is not None:
        out.update(minItems=length, maxItems=length)
    return out


def _object(title: str, desc: str, props: dict[str, Json]) -> bytes:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": title,
        "description": desc,
        "type": "object",
        "properties": props,
        "required": list(props),
    }
    return json.dumps(schema, indent=2).encode()


def _int_field(name: str) -> Json:
    return {"type": "integer", "description": TICK_FIELDS[name]}


def tick_schema(action_dim: int) -> bytes:
    """The JSON Schema of a /rtdiff/tick message: `TICK_DTYPE(action_dim)` + derived fields."""
    dtype = TICK_DTYPE(action_dim)
    fields: Any = dtype.fields
    props: dict[str, Json] = {}
    for name in _tick_keys(dtype):
        doc = TICK_FIELDS.get(name, "a TickRecord field (runtime.trace.TICK_DTYPE)")
        if name == "compute_ns":
            props[name] = {"type": "integer", "description": doc}
        elif name == "fallback_name":
            props[name] = {"type": "string", "description": doc}
        elif (ftype := fields[name][0]).subdtype is not None:  # the action: (Da,) float32
            props[name] = _vector(doc, _json_type(ftype.base), ftype.shape[0])
        else:
            props[name] = {**_json_type(ftype), "description": doc}
    return _object("rtdiff.Tick", "one control tick's record (runtime.trace.TICK_DTYPE)", props)


def state_schema(state_dim: int) -> bytes:
    return _object("rtdiff.State", "the state the controller observed at the tick", {
        "tick": _int_field("tick"), "episode": _int_field("episode"),
        "state": _vector("observed plant state, in the task's units (Ds values)",
                         {"type": ["number", "null"]}, state_dim),
    })


def plan_noise_schema(levels_dim: int) -> bytes:
    return _object("rtdiff.PlanNoise", "the plan's per-token noise levels after the tick", {
        "tick": _int_field("tick"), "episode": _int_field("episode"),
        "levels": _vector("noise level tau_j of plan token j: 0 clean .. 1 pure noise "
                          "(unitless, H values)", {"type": ["number", "null"]}, levels_dim),
    })


def events_schema() -> bytes:
    return _object("rtdiff.Events", "what happened at the tick, as names", {
        "tick": _int_field("tick"), "episode": _int_field("episode"),
        "events": _vector(
            "reset (an episode started), push, goal_switch (from the sidecar), miss, skipped "
            "(ticks skipped before this one), fallback:NAME (a fallback replaced the action)",
            {"type": "string"}),
    })


def _tick_keys(dtype: np.dtype[Any]) -> list[str]:
    """The tick message's keys in order: the trace's fields, derived ones beside their source."""
    keys: list[str] = []
    for name in dtype.names or ():
        keys.append(name)
        if name == "lateness_ns":
            keys.append("compute_ns")
        elif name == "fallback":
            keys.append("fallback_name")
    return keys


# ---- reading the trace --------------------------------------------------------------------


def read_meta(trace_dir: Path) -> Json:
    """meta.json of a trace directory; `CliError` if `trace_dir` is not a trace."""
    meta_path = trace_dir / "meta.json"
    if not trace_dir.is_dir():
        raise CliError(f"{str(trace_dir)!r} is not a directory (expected an rtdiff trace)")
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise CliError(f"{str(trace_dir)!r} is not an rtdiff trace: no meta.json") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CliError(f"{str(meta_path)!r} is unreadable: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CliError(f"{str(meta_path)!r} is not an rtdiff trace meta file")
    try:
        int(meta["chunk_ticks"])
        TICK_DTYPE(int(meta["action_dim"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CliError(f"{str(meta_path)!r}: bad trace layout: {e}") from None
    return meta


def iter_chunks(
    trace_dir: Path, meta: Json, problems: list[str]
) -> Iterator[tuple[int, npt.NDArray[np.void]]]:
    """(index of the chunk's first record in the run, its records), one chunk at a time.

    Missing, unreadable or mislaid chunks are skipped and named in `problems`.
    """
    chunk_ticks = int(meta["chunk_ticks"])
    dtype = TICK_DTYPE(int(meta["action_dim"]))
    numbered = sorted(
        (int(m.group(1)), f) for f in trace_dir.iterdir() if (m := _CHUNK_RE.match(f.name))
    )
    expected = 0
    for n, f in numbered:
        if n != expected:
            problems.append(f"chunk(s) {expected}..{n - 1} missing")
        expected = n + 1
        try:
            with np.load(f, allow_pickle=False) as z:
                records = z["records"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            problems.append(f"unreadable {f.name} ({type(e).__name__})")
            continue
        if records.dtype != dtype or records.ndim != 1:
            problems.append(f"{f.name} does not match the trace layout")
            continue
        yield n * chunk_ticks, records


# ---- messages -----------------------------------------------------------------------------


def _finite_list(a: npt.NDArray[Any]) -> list[Any]:
    """`a.tolist()` for JSON: floats as their shortest round-trip decimal (a float32 0.55 stays
    0.55, not 0.550000011920929), null (None) where one is NaN or infinite (JSON has neither)."""
    if a.dtype.kind != "f":
        values: list[Any] = a.tolist()
        return values
    text: list[Any] = a.astype(str).tolist()
    if a.ndim == 1:
        return [_number(v) for v in text]
    return [[_number(v) for v in row] for row in text]


def _number(text: str) -> float | None:
    v = float(text)
    return v if math.isfinite(v) else None


def _dumps(msg: Json) -> bytes:
    return json.dumps(msg, separators=(",", ":"), allow_nan=False).encode()


def _events(
    records: npt.NDArray[np.void], bits: npt.NDArray[np.int8], reset: npt.NDArray[np.bool_]
) -> Iterator[tuple[int, list[str]]]:
    """(row, event names) for each row of a chunk where something happened."""
    missed, skipped, fallback = records["missed"], records["skipped"], records["fallback"]
    rows = np.flatnonzero((bits != 0) | reset | missed | (skipped > 0) | (fallback != 0))
    for j in rows.tolist():
        names = [name for bit, name in _EVENT_BITS.items() if bits[j] & bit]
        if reset[j] and "reset" not in names:
            names.insert(0, "reset")
        other = int(bits[j]) & 0xFF & ~_ALL_BITS  # a bit this exporter does not know yet
        names += [f"event_bit_{1 << b}" for b in range(8) if other & (1 << b)]
        if missed[j]:
            names.append("miss")
        if skipped[j] > 0:
            names.append("skipped")
        if fallback[j]:
            names.append(f"fallback:{FALLBACK_NAMES.get(int(fallback[j]), int(fallback[j]))}")
        yield j, names


_ALL_BITS = EVENT_RESET | EVENT_PUSH | EVENT_GOAL


class Exporter:
    """Writes one trace into an open MCAP `writer` (an `mcap.writer.Writer`, started)."""

    def __init__(self, writer: Any, trace_dir: Path, meta: Json,
                 side: dict[str, npt.NDArray[Any]] | None,
                 progress: Callable[[int], None] | None = None) -> None:
        self.writer = writer
        self.trace_dir = trace_dir
        self.meta = meta
        self.side = side  # `load_sidecar`'s arrays, or None
        self.progress = progress
        self.problems: list[str] = []
        self.records = 0
        self.messages: dict[str, int] = {}
        self._seq: dict[int, int] = {}
        self._prev: tuple[int, int] | None = None  # (run index, episode) of the last record

    def _channel(self, topic: str, name: str, schema: bytes) -> int:
        sid = self.writer.register_schema(name=name, encoding="jsonschema", data=schema)
        cid: int = self.writer.register_channel(topic=topic, message_encoding="json",
                                                schema_id=sid)
        self.messages[topic] = 0
        self._seq[cid] = 0
        return cid

    def _put(self, cid: int, topic: str, t_ns: int, msg: Json) -> None:
        seq = self._seq[cid]
        self._seq[cid] = seq + 1
        self.messages[topic] += 1
        self.writer.add_message(channel_id=cid, log_time=t_ns, publish_time=t_ns,
                                data=_dumps(msg), sequence=seq)

    def run(self) -> None:
        meta = self.meta
        self.writer.add_metadata("rtdiff.trace", {
            k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in meta.items()
        })
        action_dim = int(meta["action_dim"])
        tick = self._channel(TOPIC_TICK, "rtdiff.Tick", tick_schema(action_dim))
        events = self._channel(TOPIC_EVENTS, "rtdiff.Events", events_schema())
        # the sidecar's channels: (channel, topic, key, its (N, width) array)
        side = self.side
        side_n = 0 if side is None else len(side["events"])
        per_row: list[tuple[int, str, str, npt.NDArray[Any]]] = []
        if side is not None:
            width = side["state"].shape[1]
            per_row.append((self._channel(TOPIC_STATE, "rtdiff.State", state_schema(width)),
                            TOPIC_STATE, "state", side["state"]))
            if width := side["levels"].shape[1]:
                cid = self._channel(TOPIC_PLAN_NOISE, "rtdiff.PlanNoise", plan_noise_schema(width))
                per_row.append((cid, TOPIC_PLAN_NOISE, "levels", side["levels"]))
        keys = _tick_keys(TICK_DTYPE(action_dim))
        for first, records in iter_chunks(self.trace_dir, meta, self.problems):
            n = len(records)
            cols: dict[str, list[Any]] = {
                name: _finite_list(records[name]) for name in records.dtype.names or ()
            }
            cols["compute_ns"] = (records["emit_ns"] - records["start_ns"]).tolist()
            cols["fallback_name"] = [FALLBACK_NAMES.get(c, str(c)) for c in cols["fallback"]]
            ticks, episodes, t_ns = cols["tick"], cols["episode"], cols["start_ns"]
            # the sidecar's rows for this chunk: row i is the run's record i
            m = max(0, min(n, side_n - first))
            bits = np.zeros(n, dtype=np.int8)
            if side is not None and m:
                bits[:m] = side["events"][first:first + m]
            rows = [(cid, topic, key, _finite_list(a[first:first + m]))
                    for cid, topic, key, a in per_row]
            ev = dict(_events(records, bits, self._resets(first, records["episode"])))
            for j in range(n):
                t = t_ns[j]
                self._put(tick, TOPIC_TICK, t, {key: cols[key][j] for key in keys})
                if j < m:
                    for cid, topic, key, values in rows:
                        self._put(cid, topic, t,
                                  {"tick": ticks[j], "episode": episodes[j], key: values[j]})
                if j in ev:
                    self._put(events, TOPIC_EVENTS, t,
                              {"tick": ticks[j], "episode": episodes[j], "events": ev[j]})
            self.records += n
            self._prev = (first + n - 1, episodes[-1]) if n else self._prev
            if self.progress is not None:
                self.progress(self.records)

    def _resets(self, first: int, episode: npt.NDArray[np.int32]) -> npt.NDArray[np.bool_]:
        """Rows where an episode starts: the run's first record, and every change of episode
        (across chunks only when the previous chunk is the one just before)."""
        reset = np.zeros(len(episode), dtype=np.bool_)
        if len(episode):
            reset[1:] = episode[1:] != episode[:-1]
            if first == 0:
                reset[0] = True
            elif self._prev is not None and self._prev[0] == first - 1:
                reset[0] = episode[0] != self._prev[1]
        return reset

    def summary(self) -> Json:
        """Whether the export holds the whole run: records exported against meta.json's."""
        promised = _int(self.meta.get("records"))
        clean = bool(self.meta.get("clean_close", False))
        complete = clean and not self.problems and promised == self.records and not self.meta.get(
            "write_errors")
        return {"records": self.records, "promised": promised, "clean_close": clean,
                "complete": complete}


# ---- the command --------------------------------------------------------------------------


class _Progress:
    """'ticks written' on stderr, about twice a second, only when stderr is a terminal."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._last = 0.0
        self.shown = False

    def __call__(self, written: int) -> None:
        now = time.monotonic()
        if now - self._last < PROGRESS_EVERY_S:
            return
        self._last = now
        of = f" of {self.total}" if self.total > 0 else ""
        sys.stderr.write(f"\r  ticks written {written}{of}   ")
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")


def _int(value: Any) -> int:
    """meta.json's count, or -1 where it holds none."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _sidecar(trace_dir: Path) -> dict[str, npt.NDArray[Any]] | None:
    """The trace's sidecar, or None (absent, or unreadable: said on stderr)."""
    try:
        side = load_sidecar(trace_dir)
        if side is not None:
            n, state, levels = len(side["events"]), side["state"], side["levels"]
            if state.ndim != 2 or levels.ndim != 2 or len(state) != n or len(levels) != n:
                raise ValueError("state, levels and events differ in length")
        return side
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        sys.stderr.write(f"rtdiff trace export: warning: sidecar.npz unreadable ({e}); "
                         f"exporting without {TOPIC_STATE} and {TOPIC_PLAN_NOISE}\n")
        return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_out(out: Path, force: bool) -> None:
    if out.is_dir():
        raise CliError(f"--mcap {str(out)!r} is a directory")
    if out.exists() and not force:
        raise CliError(f"--mcap {str(out)!r} exists; use --force to replace it")
    if not out.parent.is_dir():
        raise CliError(f"cannot write {str(out)!r}: no directory {str(out.parent)!r}")


def cli_trace_export(args: argparse.Namespace) -> int:
    try:
        from mcap.writer import CompressionType, Writer
    except ImportError:
        raise CliError("exporting MCAP needs the mcap package (pip install mcap)") from None

    trace_dir = Path(args.run_dir)
    out = Path(args.mcap)
    meta = read_meta(trace_dir)
    _check_out(out, args.force)
    side = _sidecar(trace_dir)
    progress = _Progress(_int(meta.get("records"))) if sys.stderr.isatty() else None
    exporter: Exporter | None = None

    def write(f: IO[bytes]) -> None:
        nonlocal exporter
        os.fchmod(f.fileno(), 0o666 & ~_umask())  # as an ordinary file, not the temp file's 0600
        writer: Any = Writer(f, compression=CompressionType.ZSTD)  # partly unannotated
        writer.start(profile="", library="rtdiff trace export")
        exporter = Exporter(writer, trace_dir, meta, side, progress)
        exporter.run()
        s = exporter.summary()
        writer.add_metadata("rtdiff.export", {k: json.dumps(v) for k, v in s.items()})
        writer.finish()

    try:
        atomic_write(out, write)
    except OSError as e:
        raise CliError(f"cannot write {str(out)!r}: {e.strerror or e}") from None
    finally:
        if progress is not None:
            progress.done()
    assert exporter is not None
    s = exporter.summary()
    if not s["complete"]:
        # read_trace is the one judge of what a crashed or damaged trace may be missing
        why = read_trace(trace_dir).warning or "; ".join(exporter.problems)
        sys.stderr.write(
            f"rtdiff trace export: warning: incomplete trace, exported the {s['records']} "
            f"records that reached disk: {why}\n"
        )
    counts = ", ".join(f"{topic} {n}" for topic, n in exporter.messages.items())
    print(f"wrote {out}: {s['records']} ticks ({counts})")
    return 0
