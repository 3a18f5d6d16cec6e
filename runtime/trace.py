"""Tick traces: a preallocated ring of `TickRecord`s, flushed to disk in chunks off the loop.

Why it looks like this:

- The loop must not allocate or block per tick, so records live in one preallocated numpy
  structured array of `n_chunks * chunk_ticks` rows. `next_slot()` hands out a row index and
  `commit()` counts it; the loop writes the fields in place through precomputed column views
  (`ring.cols.tick[i] = k`, ~40 ns a field). Field assignment through a `np.void` record view
  is about 10x slower (~400 ns a field), which is why the hot path deals in indices.
- When a chunk fills, its number goes on a `queue.SimpleQueue` to a writer thread that copies
  the rows and writes `chunk_{n:06d}.npz` atomically (temp name in the same directory, fsync,
  `os.replace`), so a reader never sees a half-written chunk under its final name. On a
  2-core VM (Da=7, 1024-row chunks) `next_slot()+commit()` costs ~130 ns; the commit that ends
  a chunk ~5-10 us (waking the writer is a futex syscall); the writer spends ~1.4 ms wall per
  chunk, ~0.2 ms of it in Python holding the GIL (`np.savez`), the rest in fsync with the GIL
  released. That GIL time is the writer's real cost to the loop's jitter:
  larger chunks make it rarer, `path=None` removes it.
- No record is lost on wrap. Before the loop starts overwriting a ring chunk it checks, under
  a lock the writer holds only for a few bytecodes (never during a copy or I/O), whether the
  writer has taken its copy yet; if not, the loop copies the chunk aside itself (the one
  allocation on the loop's path, only when the writer has fallen a whole ring behind) and
  counts an overflow. The writer prefers the aside copy whenever the loop may have overwritten
  the rows during its own copy.
- Readable after a crash: `meta.json` is written at start with `clean_close: false` and
  rewritten by `close()`. A killed run leaves every chunk that reached disk; `read_trace` says
  how much may be missing (`lost_max`) and which chunk was being written (`writing`: the
  atomic writer's temp file, left behind when the process died mid-write). Chunks are plain
  uncompressed npz (`records` holds the structured array), readable with `np.load` alone, no
  pickle.

Layout on disk (a directory):
    meta.json             action_dim, chunk_ticks, n_chunks, dtype fields, records, clean_close,
                          overflows, plus the user's meta (rate, task, planner, ...)
    chunk_000000.npz      records (chunk_ticks,) TICK_DTYPE(action_dim); the last may be shorter
    chunk_000001.npz ...
"""

from __future__ import annotations

import json
import queue
import re
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from runtime.files import atomic_write

__all__ = [
    "TICK_DTYPE",
    "TickColumns",
    "TraceData",
    "TraceRing",
    "read_trace",
]

FORMAT = "rtdiff-trace"
FORMAT_VERSION = 1

# Field order is the memory layout: 8-byte fields first, then 4-byte, then 1-byte, so every
# field is naturally aligned without padding (packed and aligned layouts coincide).
_I64_FIELDS = (
    "tick",
    "scheduled_ns",
    "start_ns",
    "observe_ns",
    "refine_end_ns",
    "emit_ns",
    "deadline_ns",
    "refine_ns",
    "lateness_ns",
)


def TICK_DTYPE(action_dim: int) -> np.dtype[np.void]:
    """The numpy structured dtype of one `TickRecord` for an action of size Da=`action_dim`.

    All `*_ns` fields are int64 nanoseconds on the controller's clock (`Clock.now_ns`).

    | field | dtype | meaning |
    |---|---|---|
    | tick | int64 | tick index k of the run (scheduled start = t0 + k*T) |
    | scheduled_ns | int64 | scheduled start t0 + k*T |
    | start_ns | int64 | actual start of the tick |
    | observe_ns | int64 | observation received |
    | refine_end_ns | int64 | refinement finished (== observe_ns when no step ran) |
    | emit_ns | int64 | command handed to the plant |
    | deadline_ns | int64 | when the plant applies the command of this tick |
    | refine_ns | int64 | time inside planner.refine before the command, summed (duration, ns) |
    | lateness_ns | int64 | start_ns - scheduled_ns (duration, ns) |
    | action | float32 (Da,) | the action emitted, in the plant's units |
    | surprise | float32 | planner surprise at observe (planner-defined, unitless) |
    | steps | int32 | refinement steps done this tick (with early emit, after the command too) |
    | skipped | int32 | ticks skipped just before this one by the overrun policy |
    | episode | int32 | episode index |
    | fallback | int8 | 0 none, 1 hold, 2 decay, 3 safe, 4 nonfinite, 5 zero (`runtime.fallback`) |
    | missed | bool | emit_ns > deadline_ns: the command came too late |
    """
    if not isinstance(action_dim, int | np.integer) or action_dim < 1:
        raise ValueError(f"{action_dim=} must be an int >= 1")
    fields: list[tuple[Any, ...]] = [(name, np.int64) for name in _I64_FIELDS]
    fields += [
        ("action", np.float32, (int(action_dim),)),
        ("surprise", np.float32),
        ("steps", np.int32),
        ("skipped", np.int32),
        ("episode", np.int32),
        ("fallback", np.int8),
        ("missed", np.bool_),
    ]
    return np.dtype(fields)


@dataclass(frozen=True, slots=True)
class TickColumns:
    """Per-field views into the ring's buffer: the cheap way for the loop to fill a slot.

    Each attribute is a strided view of shape (capacity,) (`action`: (capacity, Da)) into
    `TraceRing.buffer`; writing `cols.tick[i] = k` writes record i in place (~40 ns).
    """

    tick: npt.NDArray[np.int64]
    scheduled_ns: npt.NDArray[np.int64]
    start_ns: npt.NDArray[np.int64]
    observe_ns: npt.NDArray[np.int64]
    refine_end_ns: npt.NDArray[np.int64]
    emit_ns: npt.NDArray[np.int64]
    deadline_ns: npt.NDArray[np.int64]
    refine_ns: npt.NDArray[np.int64]
    lateness_ns: npt.NDArray[np.int64]
    action: npt.NDArray[np.float32]
    surprise: npt.NDArray[np.float32]
    steps: npt.NDArray[np.int32]
    skipped: npt.NDArray[np.int32]
    episode: npt.NDArray[np.int32]
    fallback: npt.NDArray[np.int8]
    missed: npt.NDArray[np.bool_]


_CHUNK_RE = re.compile(r"^chunk_(\d{6,})\.npz$")
# `runtime.files.atomic_write`'s temp files: one left behind is a write the process died in
_TEMP_RE = re.compile(r"^\.tmp-.*\.part$")


def _chunk_name(n: int) -> str:
    return f"chunk_{n:06d}.npz"





class TraceRing:
    """Preallocated ring of `TickRecord`s with an optional background chunk writer.

    Contract: the loop calls `i = ring.next_slot()`, fills every field of row i through
    `ring.cols` (or `ring.buffer[i] = (...)`), then `ring.commit()`. Calling `next_slot()` again
    before `commit()` returns the same row. Only one thread (the loop) may call
    `next_slot`/`commit`/`close`. Rows are reused as they are, not cleared (clearing 1024 rows
    costs the loop ~6 us at a chunk boundary): the loop must write every field of every record,
    or a field it skips keeps a previous lap's value. With `path`, every committed record
    reaches disk by `close()` (none is lost on wrap; see `overflows`). The ring keeps the last
    `capacity` records in memory either way (`records()`).

    Example:
        ring = TraceRing(action_dim=2, path="runs/r1/trace", meta={"rate_hz": 1000})
        c = ring.cols
        i = ring.next_slot()
        c.tick[i] = 0; c.start_ns[i] = clock.now_ns(); c.action[i] = action  # ...
        ring.commit()
        ring.close()
        data = read_trace("runs/r1/trace")   # data.records: (N,) TICK_DTYPE(2)
    """

    def __init__(
        self,
        action_dim: int,
        *,
        chunk_ticks: int = 1024,
        n_chunks: int = 8,
        path: str | Path | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if chunk_ticks < 1:
            raise ValueError(f"{chunk_ticks=} must be >= 1")
        if n_chunks < 2:
            raise ValueError(f"{n_chunks=} must be >= 2 (one being filled, one being written)")
        self.dtype = TICK_DTYPE(action_dim)
        self.action_dim = int(action_dim)
        self.chunk_ticks = int(chunk_ticks)
        self.n_chunks = int(n_chunks)
        self.capacity = self.chunk_ticks * self.n_chunks
        self.buffer: npt.NDArray[np.void] = np.zeros(self.capacity, dtype=self.dtype)
        """(capacity,) TICK_DTYPE(Da): the ring itself; row i is slot i."""
        # The same memory as bytes, (capacity * itemsize,): copying or zeroing structured rows
        # through numpy goes field by field (~50 us per 1024 rows); as bytes it is a memcpy
        # or memset (~1-3 us).
        self._raw: npt.NDArray[np.uint8] = self.buffer.view(np.uint8)
        self.cols = TickColumns(**{name: self.buffer[name] for name in self.dtype.names or ()})
        self.user_meta: dict[str, Any] = dict(meta or {})
        self.path = None if path is None else Path(path)

        self._i = 0  # ring row of the next record
        self._chunk_end = self.chunk_ticks  # ring row at which the current chunk is full
        self._total = 0  # records committed
        self._chunk_seq = 0  # global number of the chunk being filled
        self._closed = False
        self.overflows = 0  # chunks the loop copied aside because the writer was a ring behind

        # Shared with the writer thread; every read-modify of these is under _lock.
        self._lock = threading.Lock()
        self._aside: dict[int, npt.NDArray[np.void]] = {}
        self._copied = -1  # highest chunk number the writer has finished copying
        self._entered = 0  # chunk the loop fills; it may overwrite the rows of chunk n - n_chunks
        self._written = 0  # chunks written to disk
        self._handed = 0  # chunks handed to the writer
        self._cond = threading.Condition(self._lock)
        self.errors: list[str] = []  # writer failures, one line each; close() raises if any

        self._queue: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        if self.path is not None:
            self._open_dir(self.path)
            self._write_meta(clean_close=False)
            self._writer = threading.Thread(
                target=self._writer_main, name="rtdiff-trace-writer", daemon=True
            )
            self._writer.start()

    # ---- the loop's path ------------------------------------------------------------------

    def next_slot(self) -> int:
        """Ring row (0 <= i < capacity) the loop fills for the next record. O(1), no allocation."""
        return self._i

    def commit(self) -> None:
        """Count the row from `next_slot()` as a record. Once per chunk_ticks: hand-off (cold)."""
        self._total += 1
        i = self._i + 1
        if i == self._chunk_end:
            self._end_chunk(i)
        else:
            self._i = i

    # ---- cold paths -----------------------------------------------------------------------

    def _end_chunk(self, i: int) -> None:
        """The current chunk is full: hand it to the writer and prepare the next ring chunk."""
        n = self._chunk_seq
        m = n + 1
        self._chunk_seq = m
        i = 0 if i == self.capacity else i
        self._i = i
        self._chunk_end = i + self.chunk_ticks
        if self._writer is None:
            return  # in-memory mode: the ring simply wraps
        old = m - self.n_chunks  # the chunk whose rows are about to be overwritten
        with self._lock:
            self._handed += 1
            if old >= 0:
                if self._copied < old:
                    # The writer is a whole ring behind: save the rows before overwriting them.
                    rows = self._byte_rows(i, self.chunk_ticks)
                    self._aside[old] = self._raw[rows].copy().view(self.dtype)
                    self.overflows += 1
                self._entered = m
        self._queue.put((n, self.chunk_ticks))

    def _byte_rows(self, first: int, count: int) -> slice:
        size = self.dtype.itemsize
        return slice(first * size, (first + count) * size)

    def _open_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if (path / "meta.json").exists() or any(_CHUNK_RE.match(p.name) for p in path.iterdir()):
            raise FileExistsError(
                f"trace directory {str(path)!r} already holds a trace; use a fresh directory"
            )

    def _write_meta(self, *, clean_close: bool) -> None:
        if self.path is None:
            return
        meta: dict[str, Any] = dict(self.user_meta)
        meta.update(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            action_dim=self.action_dim,
            chunk_ticks=self.chunk_ticks,
            n_chunks=self.n_chunks,
            fields=list(self.dtype.names or ()),
            records=self._total,
            chunks=-(-self._total // self.chunk_ticks),
            overflows=self.overflows,
            write_errors=list(self.errors),
            clean_close=clean_close,
        )
        text = json.dumps(meta, indent=2, sort_keys=True, default=str) + "\n"
        atomic_write(self.path / "meta.json", lambda f: f.write(text.encode()))

    def _writer_main(self) -> None:
        if self.path is None:  # pragma: no cover - the thread only exists with a path
            return
        while True:
            item = self._queue.get()
            if item is None:
                return
            n, count = item
            data = self._take_chunk(n, count)
            try:
                self._write_chunk(n, data)
            except Exception as e:  # keep writing later chunks; close() reports the failure
                msg = f"{_chunk_name(n)}: {type(e).__name__}: {e}"
                with self._lock:
                    self.errors.append(msg)
            with self._cond:
                self._written += 1
                self._cond.notify_all()

    def _take_chunk(self, n: int, count: int) -> npt.NDArray[np.void]:
        """Writer side: a private copy of chunk n, either the loop's aside copy or our own."""
        with self._lock:
            data = self._aside.pop(n, None)
        if data is None:
            rows = self._byte_rows((n % self.n_chunks) * self.chunk_ticks, count)
            data = self._raw[rows].copy().view(self.dtype)
            with self._lock:
                if self._entered >= n + self.n_chunks:
                    # The loop reached these rows during our copy, so it saved them first.
                    data = self._aside.pop(n)
                self._copied = n
        else:
            with self._lock:
                self._copied = n
        return data

    def _write_chunk(self, n: int, data: npt.NDArray[np.void]) -> None:
        """Write chunk n atomically. Tests override this to inject a slow or failing disk."""
        if self.path is None:  # pragma: no cover
            return
        atomic_write(
            self.path / _chunk_name(n), lambda f: np.savez(f, records=data, allow_pickle=False)
        )

    # ---- public helpers (not for the hot path) ---------------------------------------------

    @property
    def total(self) -> int:
        """Records committed so far."""
        return self._total

    def sync(self, timeout_s: float | None = None) -> bool:
        """Block until every chunk handed to the writer so far is written; False on timeout.

        For tests and between episodes, never per tick. The partial chunk being filled is not
        handed over until it fills or `close()` runs.
        """
        with self._cond:
            return self._cond.wait_for(lambda: self._written >= self._handed, timeout=timeout_s)

    def records(self) -> npt.NDArray[np.void]:
        """The last min(total, capacity) committed records in commit order, (N,) TICK_DTYPE(Da).

        A copy, for the end of a run or between episodes (not per tick). With a path, the whole
        run is on disk: read it back with `read_trace`.
        """
        i = self._i
        retained = min(self._total, self.capacity)
        rotated = np.concatenate([self.buffer[i:], self.buffer[:i]])  # oldest .. newest
        return rotated[self.capacity - retained :]

    def close(self) -> None:
        """Flush the partial last chunk, stop the writer, write final `meta.json`. Idempotent.

        Raises `RuntimeError` naming the chunks that failed to write, after writing meta.json.
        """
        if self._closed:
            return
        self._closed = True
        if self._writer is None:
            return
        partial = self._total % self.chunk_ticks
        if partial:
            with self._lock:
                self._handed += 1
            self._queue.put((self._chunk_seq, partial))
        self._queue.put(None)
        self._writer.join()
        self._write_meta(clean_close=True)
        if self.errors:
            raise RuntimeError(
                f"trace writer failed on {len(self.errors)} chunk(s): " + "; ".join(self.errors)
            )

    def __enter__(self) -> TraceRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class TraceData:
    """A trace read back: `records` (N,) TICK_DTYPE(Da) in commit order, `meta` from meta.json,
    `complete` (closed cleanly, no chunk missing or unreadable, record count as promised) and
    `warning` (one line per problem joined by '; ', None when complete).

    `lost_max`: how many records may be missing. After a clean close it is exact (meta.json's
    count minus the records read). After a kill it is a bound: the chunk being filled (up to
    chunk_ticks - 1 records) and one full chunk handed to the writer but not on disk yet, plus
    every missing or unreadable chunk; more only if the writer had fallen further behind (its
    queue is not on disk). `writing`: the chunk that was being written when the run stopped
    (its temp file is still there), or None."""

    records: npt.NDArray[np.void]
    meta: dict[str, Any]
    complete: bool
    warning: str | None
    lost_max: int = 0
    writing: str | None = None


def read_trace(path: str | Path) -> TraceData:
    """Read a trace directory written by `TraceRing`, tolerating a crashed or killed run.

    Unreadable chunks are skipped and named in the warning; a run that was not closed cleanly
    returns what reached disk with `complete=False`. Raises `ValueError` if `path` is not a trace.
    """
    p = Path(path)
    meta_path = p / "meta.json"
    if not p.is_dir() or not meta_path.is_file():
        raise ValueError(f"{str(p)!r} is not an rtdiff trace: expected a directory with meta.json")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{str(meta_path)!r} is not an rtdiff trace meta file: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{str(meta_path)!r} is not an rtdiff trace meta file: format != {FORMAT}")
    try:
        action_dim = int(meta["action_dim"])
        chunk_ticks = int(meta["chunk_ticks"])
        dtype = TICK_DTYPE(action_dim)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{str(meta_path)!r}: bad trace layout: {e}") from e

    problems: list[str] = []
    files = list(p.iterdir())
    numbered = sorted((int(m.group(1)), f) for f in files if (m := _CHUNK_RE.match(f.name)))
    parts: list[npt.NDArray[np.void]] = []
    expected_n = 0
    chunks_lost = 0  # chunks missing or unreadable before the last one on disk
    for n, f in numbered:
        if n != expected_n:
            problems.append(f"chunk(s) {expected_n}..{n - 1} missing")
            chunks_lost += n - expected_n
        expected_n = n + 1
        try:
            with np.load(f, allow_pickle=False) as z:
                arr = z["records"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            problems.append(f"skipped unreadable {f.name} ({type(e).__name__}: {e})")
            chunks_lost += 1
            continue
        if arr.dtype != dtype or arr.ndim != 1:
            problems.append(f"skipped {f.name}: dtype/shape {arr.dtype}{arr.shape} != trace layout")
            chunks_lost += 1
            continue
        parts.append(arr)
    records = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    clean = bool(meta.get("clean_close", False))
    writing: str | None = None
    if not clean:
        last = int(records["tick"][-1]) if len(records) else None
        # the writer writes chunks in order, so a chunk's temp file left behind is the next one
        temps = [f for f in files if _TEMP_RE.match(f.name) and not _is_meta_temp(f)]
        lost_max = chunks_lost * chunk_ticks + 2 * chunk_ticks - 1
        if temps:
            writing = _chunk_name(expected_n)
            sizes = ", ".join(f"{f.name} {_size(f)} bytes" for f in temps)
            where = (f"{writing} was being written (temp file {sizes} left behind): that chunk "
                     f"and the one being filled, up to {lost_max} records, are missing")
        else:
            where = (f"at most the last unflushed chunk (up to {chunk_ticks} records) is missing, "
                     f"or up to {lost_max} records if a full chunk had just been handed to the "
                     "writer")
        problems.append(
            "run was not closed cleanly (killed mid-run?): "
            f"read {len(records)} records (last tick {last}); {where}; more only if the writer "
            "had fallen behind"
        )
    else:
        promised = int(meta.get("records", len(records)))
        lost_max = max(0, promised - len(records))
        if promised != len(records):
            problems.append(f"meta.json promises {promised} records, read {len(records)}")
        if meta.get("write_errors"):
            problems.append("writer errors: " + "; ".join(map(str, meta["write_errors"])))

    # Ticks advance by 1 + skipped; a reset is allowed where a new episode starts.
    if len(records) > 1:
        tick = records["tick"]
        step_ok = np.diff(tick) == 1 + records["skipped"][1:].astype(np.int64)
        new_episode = np.diff(records["episode"]) != 0
        bad = np.flatnonzero(~(step_ok | new_episode))
        if len(bad):
            j = int(bad[0])
            problems.append(
                f"tick sequence not contiguous at {len(bad)} place(s), first after tick "
                f"{int(tick[j])} -> {int(tick[j + 1])}"
            )
    return TraceData(
        records=records,
        meta=meta,
        complete=not problems,
        warning="; ".join(problems) if problems else None,
        lost_max=lost_max,
        writing=writing,
    )


def _is_meta_temp(f: Path) -> bool:
    """A temp file of meta.json (JSON text) rather than of a chunk (a zip, or still empty)."""
    try:
        with open(f, "rb") as fh:
            return fh.read(1) == b"{"
    except OSError:
        return False


def _size(f: Path) -> int:
    try:
        return f.stat().st_size
    except OSError:
        return -1
