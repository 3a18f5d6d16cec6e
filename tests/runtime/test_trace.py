"""TraceRing / read_trace: nothing lost on wrap, file round trip, killed runs, corrupt chunks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from runtime.fallback import FALLBACK_NAMES
from runtime.stats import DeadlineStats
from runtime.trace import TICK_DTYPE, TraceRing, read_trace

DA = 3


def fill(ring: TraceRing, k: int, *, skipped: int = 0, episode: int = 0) -> None:
    """Write record number k into the ring's next slot with values derived from k."""
    c = ring.cols
    i = ring.next_slot()
    c.tick[i] = k
    c.scheduled_ns[i] = 1_000_000 * k
    c.start_ns[i] = 1_000_000 * k + 7
    c.observe_ns[i] = 1_000_000 * k + 20
    c.refine_end_ns[i] = 1_000_000 * k + 500
    c.emit_ns[i] = 1_000_000 * k + 520
    c.deadline_ns[i] = 1_000_000 * k + 900_000
    c.refine_ns[i] = 470
    c.lateness_ns[i] = 7
    c.action[i] = (k, -k, 0.5 * k)
    c.surprise[i] = k % 7
    c.steps[i] = k % 5
    c.skipped[i] = skipped
    c.episode[i] = episode
    c.fallback[i] = k % 5
    c.missed[i] = k % 11 == 0
    ring.commit()


def expected(ks: npt.ArrayLike) -> npt.NDArray[np.void]:
    """The records `fill` writes for tick numbers ks, built the slow obvious way."""
    ks = np.asarray(ks, dtype=np.int64)
    out = np.zeros(len(ks), dtype=TICK_DTYPE(DA))
    for j, k in enumerate(ks.tolist()):
        out[j] = (
            k,
            1_000_000 * k,
            1_000_000 * k + 7,
            1_000_000 * k + 20,
            1_000_000 * k + 500,
            1_000_000 * k + 520,
            1_000_000 * k + 900_000,
            470,
            7,
            (k, -k, 0.5 * k),
            k % 7,
            k % 5,
            0,
            0,
            k % 5,
            k % 11 == 0,
        )
    return out


class SlowRing(TraceRing):
    """A ring whose disk blocks until `release` is set."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.release = threading.Event()
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _write_chunk(self, n: int, data: npt.NDArray[np.void]) -> None:
        self.release.wait()
        super()._write_chunk(n, data)


def test_tick_dtype_has_every_field_with_its_type() -> None:
    dt = TICK_DTYPE(4)
    assert dt["tick"] == np.int64 and dt["lateness_ns"] == np.int64
    assert dt["steps"] == np.int32 and dt["skipped"] == np.int32 and dt["episode"] == np.int32
    assert dt["surprise"] == np.float32 and dt["fallback"] == np.int8 and dt["missed"] == np.bool_
    assert dt["action"].shape == (4,) and dt["action"].base == np.float32
    for name in ("scheduled_ns", "start_ns", "observe_ns", "refine_end_ns", "emit_ns"):
        assert dt[name] == np.int64
    with pytest.raises(ValueError, match="action_dim=0 must be an int >= 1"):
        TICK_DTYPE(0)


# The on-disk layout of format version 1, spelled out field by field (not via TICK_DTYPE), so a
# change to the layout or to the meaning of the fallback codes fails here.
_V1_FIELDS = [
    ("tick", "<i8"), ("scheduled_ns", "<i8"), ("start_ns", "<i8"), ("observe_ns", "<i8"),
    ("refine_end_ns", "<i8"), ("emit_ns", "<i8"), ("deadline_ns", "<i8"), ("refine_ns", "<i8"),
    ("lateness_ns", "<i8"), ("action", "<f4", (2,)), ("surprise", "<f4"), ("steps", "<i4"),
    ("skipped", "<i4"), ("episode", "<i4"), ("fallback", "i1"), ("missed", "?"),
]


def test_a_version_1_trace_written_by_hand_reads_back_with_its_fallback_names(
    tmp_path: Path,
) -> None:
    records = np.zeros(6, dtype=_V1_FIELDS)
    records["tick"] = np.arange(6)
    records["scheduled_ns"] = records["start_ns"] = np.arange(6) * 1_000_000
    records["emit_ns"] = records["start_ns"] + 100_000
    records["deadline_ns"] = records["scheduled_ns"] + 1_000_000
    records["fallback"] = [0, 1, 2, 3, 4, 5]  # none, hold, decay, safe, nonfinite, zero
    meta = {
        "format": "rtdiff-trace", "format_version": 1, "action_dim": 2, "chunk_ticks": 8,
        "n_chunks": 2, "fields": [f[0] for f in _V1_FIELDS], "records": 6, "chunks": 1,
        "overflows": 0, "write_errors": [], "clean_close": True, "rate_hz": 1000,
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    np.savez(tmp_path / "chunk_000000.npz", records=records, allow_pickle=False)

    data = read_trace(tmp_path)
    assert data.complete and data.records.dtype == TICK_DTYPE(2)
    np.testing.assert_array_equal(data.records.view(np.uint8), records.view(np.uint8))
    names = [FALLBACK_NAMES[int(c)] for c in data.records["fallback"]]
    assert names == ["", "hold", "decay", "safe", "nonfinite", "zero"]
    stats = DeadlineStats.from_records(data.records, period_ns=1_000_000)
    assert stats.fallbacks == {"hold": 1, "decay": 1, "safe": 1, "nonfinite": 1, "zero": 1}


def test_in_memory_ring_keeps_the_last_capacity_records_in_order() -> None:
    ring = TraceRing(DA, chunk_ticks=4, n_chunks=3)
    for k in range(5):
        fill(ring, k)
    np.testing.assert_array_equal(ring.records(), expected(range(5)))
    for k in range(5, 31):
        fill(ring, k)
    np.testing.assert_array_equal(ring.records(), expected(range(31 - 12, 31)))
    assert ring.total == 31
    ring.close()


def test_next_slot_before_commit_returns_the_same_row() -> None:
    ring = TraceRing(DA, chunk_ticks=4, n_chunks=2)
    assert ring.next_slot() == ring.next_slot() == 0
    ring.commit()
    assert ring.next_slot() == 1


def test_round_trip_through_files(tmp_path: Path) -> None:
    path = tmp_path / "trace"
    n = 3 * 16 + 5  # three full chunks and a partial one
    with TraceRing(DA, chunk_ticks=16, n_chunks=2, path=path, meta={"rate_hz": 500.0}) as ring:
        for k in range(n):
            fill(ring, k)
    data = read_trace(path)
    assert data.complete and data.warning is None
    np.testing.assert_array_equal(data.records, expected(range(n)))
    assert data.meta["rate_hz"] == 500.0
    assert data.meta["clean_close"] is True and data.meta["records"] == n
    assert sorted(p.name for p in path.iterdir()) == [
        "chunk_000000.npz",
        "chunk_000001.npz",
        "chunk_000002.npz",
        "chunk_000003.npz",
        "meta.json",
    ]
    with np.load(path / "chunk_000003.npz", allow_pickle=False) as z:
        assert z["records"].shape == (5,)


def test_ring_loses_nothing_on_wrap_when_the_writer_is_stalled(tmp_path: Path) -> None:
    ring = SlowRing(DA, chunk_ticks=8, n_chunks=4, path=tmp_path / "t")
    n = 10 * ring.capacity
    for k in range(n):
        fill(ring, k)
    # The writer sat on chunk 0 (copied or not yet, depending on thread start-up), so each
    # chunk the loop wrapped onto was saved aside: chunks 1..36, and 0 unless already copied.
    assert n // 8 - ring.n_chunks <= ring.overflows <= n // 8 - ring.n_chunks + 1
    ring.release.set()
    ring.close()
    data = read_trace(tmp_path / "t")
    assert data.complete, data.warning
    np.testing.assert_array_equal(data.records, expected(range(n)))
    assert data.meta["overflows"] == ring.overflows


class MemoryDiskRing(TraceRing):
    """A ring whose "disk" is a dict, so the writer keeps pace with the loop and they race."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.store: dict[int, npt.NDArray[np.void]] = {}
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _write_chunk(self, n: int, data: npt.NDArray[np.void]) -> None:
        self.store[n] = data


def test_ring_loses_nothing_when_loop_and_writer_race(tmp_path: Path) -> None:
    # A tiny GIL switch interval interleaves the two threads at every few bytecodes, so the
    # hand-over happens in every order: writer first, loop saves aside first, and the loop
    # overwriting rows while the writer copies them (the writer then takes the aside copy).
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for rep in range(3):
            ring = MemoryDiskRing(DA, chunk_ticks=16, n_chunks=2, path=tmp_path / f"t{rep}")
            n = 4000
            for k in range(n):
                fill(ring, k)
            ring.close()
            got = np.concatenate([ring.store[j] for j in range(len(ring.store))])
            np.testing.assert_array_equal(got, expected(range(n)))
    finally:
        sys.setswitchinterval(old)


def test_ring_with_a_path_also_keeps_the_last_capacity_records(tmp_path: Path) -> None:
    with TraceRing(DA, chunk_ticks=2, n_chunks=3, path=tmp_path / "t") as ring:
        for k in range(13):
            fill(ring, k)
        np.testing.assert_array_equal(ring.records(), expected(range(7, 13)))


def test_unclosed_run_reads_back_incomplete_with_a_warning(tmp_path: Path) -> None:
    ring = TraceRing(DA, chunk_ticks=8, n_chunks=4, path=tmp_path / "t", meta={"task": "x"})
    for k in range(2 * 8 + 3):
        fill(ring, k)
    assert ring.sync(timeout_s=10.0)
    data = read_trace(tmp_path / "t")  # as another process would see it after a kill
    assert not data.complete
    assert data.warning is not None
    assert "not closed cleanly" in data.warning
    assert "at most the last unflushed chunk (up to 8 records) is missing" in data.warning
    np.testing.assert_array_equal(data.records, expected(range(16)))
    assert data.meta["task"] == "x" and data.meta["clean_close"] is False
    ring.close()
    assert read_trace(tmp_path / "t").complete


def test_an_unclosed_run_bounds_the_records_lost_and_names_the_chunk_being_written(
    tmp_path: Path,
) -> None:
    ring = TraceRing(DA, chunk_ticks=8, n_chunks=4, path=tmp_path / "t")
    for k in range(2 * 8 + 3):
        fill(ring, k)
    assert ring.sync(timeout_s=10.0)
    data = read_trace(tmp_path / "t")
    # 3 records are in the chunk being filled; a full chunk may have been handed over too
    assert data.lost_max == 2 * 8 - 1 and data.writing is None
    (tmp_path / "t" / ".tmp-meta.part").write_text('{"format": ')  # meta.json mid-write: not it
    assert read_trace(tmp_path / "t").writing is None
    (tmp_path / "t" / ".tmp-abc123.part").write_bytes(b"PK\x03\x04" + bytes(100))  # a torn zip
    data = read_trace(tmp_path / "t")
    assert data.writing == "chunk_000002.npz" and data.lost_max == 15
    assert data.warning is not None
    assert "chunk_000002.npz was being written (temp file .tmp-abc123.part 104" in data.warning
    assert len(data.records) == 16  # the temp file is never read as records
    ring.close()
    data = read_trace(tmp_path / "t")
    assert data.complete and data.lost_max == 0 and data.writing is None


def test_lost_records_are_exact_after_a_clean_close_and_count_missing_chunks_after_a_kill(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t"
    with TraceRing(DA, chunk_ticks=4, n_chunks=2, path=path) as ring:
        for k in range(14):
            fill(ring, k)
    (path / "chunk_000001.npz").unlink()
    assert read_trace(path).lost_max == 4  # meta.json promises 14, 10 read
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "clean_close": False}))
    assert read_trace(path).lost_max == 4 + 2 * 4 - 1  # the gap, plus what a kill may lose


_KILLED_WRITER = """
import sys
from runtime.trace import TraceRing
ring = TraceRing(2, chunk_ticks=64, n_chunks=4, path=sys.argv[1])
k = 0
while True:
    i = ring.next_slot()
    ring.cols.tick[i] = k
    ring.cols.action[i] = (k, 2 * k)
    ring.commit()
    k += 1
    if k == 3 * 64 + 10:
        ring.sync()
        print("ready", flush=True)
"""


def test_sigkilled_run_reads_back_every_flushed_chunk(tmp_path: Path) -> None:
    path = tmp_path / "t"
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, str(path)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    data = read_trace(path)
    assert not data.complete
    assert data.warning is not None and "not closed cleanly" in data.warning
    n = len(data.records)
    assert n >= 3 * 64 and n % 64 == 0  # whole chunks only, the temp files are ignored
    np.testing.assert_array_equal(data.records["tick"], np.arange(n))
    np.testing.assert_array_equal(data.records["action"][:, 1], 2.0 * np.arange(n))


def test_corrupt_chunk_is_skipped_and_named(tmp_path: Path) -> None:
    path = tmp_path / "t"
    with TraceRing(DA, chunk_ticks=8, n_chunks=2, path=path) as ring:
        for k in range(4 * 8):
            fill(ring, k)
    bad = path / "chunk_000001.npz"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated as by a crash mid-copy
    data = read_trace(path)
    assert not data.complete
    assert data.warning is not None and "chunk_000001.npz" in data.warning
    assert "not contiguous" in data.warning
    np.testing.assert_array_equal(data.records, expected([*range(8), *range(16, 32)]))


def test_missing_chunk_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "t"
    with TraceRing(DA, chunk_ticks=4, n_chunks=2, path=path) as ring:
        for k in range(12):
            fill(ring, k)
    (path / "chunk_000001.npz").unlink()
    data = read_trace(path)
    assert not data.complete
    assert data.warning is not None
    assert "chunk(s) 1..1 missing" in data.warning and "promises 12 records, read 8" in data.warning


def test_skipped_ticks_and_episode_resets_count_as_contiguous(tmp_path: Path) -> None:
    path = tmp_path / "t"
    with TraceRing(DA, chunk_ticks=4, n_chunks=2, path=path) as ring:
        fill(ring, 0)
        fill(ring, 1)
        fill(ring, 4, skipped=2)  # ticks 2 and 3 skipped by the overrun policy
        fill(ring, 0, episode=1)  # a new episode restarts the tick count
        fill(ring, 1, episode=1)
    data = read_trace(path)
    assert data.complete, data.warning
    np.testing.assert_array_equal(data.records["tick"], [0, 1, 4, 0, 1])


def test_read_trace_refuses_what_is_not_a_trace(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not an rtdiff trace: expected a directory"):
        read_trace(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="is not an rtdiff trace meta file"):
        read_trace(tmp_path)
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not an rtdiff trace meta file"):
        read_trace(tmp_path)


def test_refuses_to_write_over_an_existing_trace(tmp_path: Path) -> None:
    TraceRing(DA, path=tmp_path / "t").close()
    with pytest.raises(FileExistsError, match="already holds a trace"):
        TraceRing(DA, path=tmp_path / "t")


def test_writer_failure_is_reported_by_close(tmp_path: Path) -> None:
    class FailingRing(TraceRing):
        def _write_chunk(self, n: int, data: npt.NDArray[np.void]) -> None:
            if n == 1:
                raise OSError("disk full")
            super()._write_chunk(n, data)

    ring = FailingRing(DA, chunk_ticks=4, n_chunks=2, path=tmp_path / "t")
    for k in range(12):
        fill(ring, k)
    with pytest.raises(RuntimeError, match=r"chunk_000001\.npz: OSError: disk full"):
        ring.close()
    data = read_trace(tmp_path / "t")
    assert not data.complete and data.warning is not None and "disk full" in data.warning
    np.testing.assert_array_equal(data.records, expected([*range(4), *range(8, 12)]))


def test_config_errors_name_the_value() -> None:
    with pytest.raises(ValueError, match="chunk_ticks=0 must be >= 1"):
        TraceRing(DA, chunk_ticks=0)
    with pytest.raises(ValueError, match="n_chunks=1 must be >= 2"):
        TraceRing(DA, n_chunks=1)
