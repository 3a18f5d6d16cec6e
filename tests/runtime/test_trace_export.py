"""`rtdiff trace export --mcap`: channels, schemas, values, log times and metadata read back
with the mcap reader; crashed and damaged traces; one-line errors and an atomic output."""

from __future__ import annotations

import errno
import json
import math
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mcap.reader import make_reader

import runtime.cli.trace_export as trace_export
from runtime.cli import main
from runtime.fallback import FALLBACK_NAMES
from runtime.protocols import Observation
from runtime.sidecar import EVENT_PUSH, Sidecar, load_sidecar
from runtime.trace import TICK_DTYPE, TraceRing, read_trace

TICK, STATE, EVENTS = "/rtdiff/tick", "/rtdiff/state", "/rtdiff/events"
NOISE = "/rtdiff/plan_noise"


class Mcap:
    """An exported file read back: schemas and channels, messages per topic, metadata."""

    def __init__(self, path: Path) -> None:
        with open(path, "rb") as f:
            reader = make_reader(f)
            summary = reader.get_summary()
            assert summary is not None
            self.channels = {c.topic: c for c in summary.channels.values()}
            self.schemas = {c.topic: summary.schemas[c.schema_id]
                            for c in summary.channels.values()}
            assert summary.statistics is not None
            self.counts = {summary.channels[i].topic: n
                           for i, n in summary.statistics.channel_message_counts.items()}
            self.in_file_order: list[tuple[str, int, dict[str, Any]]] = [
                (ch.topic, msg.log_time, json.loads(msg.data))
                for _, ch, msg in reader.iter_messages(log_time_order=False)
            ]
            self.metadata = {m.name: dict(m.metadata) for m in reader.iter_metadata()}

    def messages(self, topic: str) -> list[tuple[int, dict[str, Any]]]:
        return [(t, m) for top, t, m in self.in_file_order if top == topic]

    def schema(self, topic: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.schemas[topic].data)
        return out


def conforms(msg: dict[str, Any], schema: dict[str, Any]) -> bool:
    """A message against one of the exporter's flat object schemas (types and array lengths)."""
    kinds = {"integer": int, "number": float, "boolean": bool, "string": str, "null": type(None),
             "array": list}

    def ok(value: Any, s: dict[str, Any]) -> bool:
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if isinstance(value, bool) and "boolean" not in types:
            return False
        if not any(isinstance(value, kinds[t]) for t in types):
            return isinstance(value, int) and "number" in types
        if isinstance(value, list):
            n = len(value)
            return (s.get("minItems", 0) <= n <= s.get("maxItems", n)
                    and all(ok(v, s["items"]) for v in value))
        return True

    props = schema["properties"]
    return set(msg) == set(props) and all(ok(v, props[k]) for k, v in msg.items())


def export(trace: Path, out: Path, *extra: str) -> int:
    return main(["trace", "export", str(trace), "--mcap", str(out), *extra])


@pytest.fixture(scope="module")
def real_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lockstep run of the double pendulum's expert: 300 ticks in chunks of 64, pushes."""
    trace = tmp_path_factory.mktemp("run") / "trace"
    rc = main(["run", "--policy", "expert", "--plant", "sim:double-pendulum", "--seconds", "3",
               "--trace", str(trace), "--trace-chunk", "64"])
    assert rc == 0
    return trace


def test_a_real_run_exports_every_tick_with_the_trace_values(
    real_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run.mcap"
    assert export(real_trace, out) == 0
    assert capsys.readouterr().err == ""
    data = read_trace(real_trace)
    rec, side = data.records, load_sidecar(real_trace)
    assert side is not None and len(rec) == 300
    m = Mcap(out)

    assert set(m.channels) == {TICK, STATE, EVENTS}  # the expert reports no noise levels
    for topic in m.channels:
        assert m.channels[topic].message_encoding == "json"
        assert m.schemas[topic].encoding == "jsonschema"
    assert m.counts[TICK] == len(rec) == len(m.messages(TICK))
    assert m.counts[STATE] == len(rec)

    schema = m.schema(TICK)
    assert set(TICK_DTYPE(1).names or ()) <= set(trace_export.TICK_FIELDS)  # each described
    assert set(TICK_DTYPE(1).names or ()) <= set(schema["properties"])
    assert all(p["description"] for p in schema["properties"].values())
    assert "ns" in schema["properties"]["lateness_ns"]["description"]
    ticks = m.messages(TICK)
    assert all(conforms(msg, schema) for _, msg in ticks)
    for i in (0, 1, 77, 150, len(rec) - 1):
        t, msg = ticks[i]
        r = rec[i]
        assert t == r["start_ns"] == msg["start_ns"]
        assert msg["tick"] == r["tick"] and msg["lateness_ns"] == r["lateness_ns"]
        assert msg["compute_ns"] == r["emit_ns"] - r["start_ns"]
        assert np.array_equal(np.asarray(msg["action"], dtype=np.float32), r["action"])
        assert msg["fallback"] == r["fallback"]
        assert msg["fallback_name"] == FALLBACK_NAMES[int(r["fallback"])]
        assert msg["missed"] is bool(r["missed"])
    states = m.messages(STATE)
    assert all(conforms(msg, m.schema(STATE)) for _, msg in states)
    assert np.array_equal(np.asarray([s["state"] for _, s in states], dtype=np.float32),
                          side["state"])

    times = [t for _, t, _ in m.in_file_order]
    assert times == sorted(times)
    pushed = {int(k) for k in rec["tick"][(side["events"] & EVENT_PUSH) != 0]}
    assert pushed  # the double pendulum is pushed within three seconds
    events = {msg["tick"]: msg["events"] for _, msg in m.messages(EVENTS)}
    assert {k for k, names in events.items() if "push" in names} == pushed
    assert events[0][0] == "reset"

    meta = json.loads((real_trace / "meta.json").read_text())
    assert m.metadata["rtdiff.trace"]["task"] == "double-pendulum"
    assert json.loads(m.metadata["rtdiff.trace"]["records"]) == meta["records"] == 300
    assert m.metadata["rtdiff.export"]["complete"] == "true"


def _handmade(path: Path) -> None:
    """Ten records in chunks of 4, two episodes, a skip, fallbacks, a NaN surprise, a push and
    a goal switch, and a planner's noise levels in the sidecar."""
    ring = TraceRing(2, chunk_ticks=4, path=path, meta={"task": "handmade", "rate_hz": 100.0})
    car = Sidecar(capacity=10, state_dim=3, levels_dim=4)
    tick = 0
    for i in range(10):
        tick += 1 + 2 * (i == 7) if i else 0
        c, j = ring.cols, ring.next_slot()
        c.tick[j] = tick
        c.scheduled_ns[j] = 10_000_000 * tick
        c.start_ns[j] = 10_000_000 * tick + 100 * i
        c.observe_ns[j] = c.refine_end_ns[j] = c.start_ns[j] + 50
        c.emit_ns[j] = c.start_ns[j] + 1_000 * i
        c.deadline_ns[j] = c.scheduled_ns[j] + 10_000_000
        c.refine_ns[j] = 0
        c.lateness_ns[j] = 100 * i
        c.action[j] = (0.1 * i, -0.55)
        c.surprise[j] = math.nan if i == 3 else 0.25 * i
        c.steps[j] = i % 3
        c.skipped[j] = 2 if i == 7 else 0
        c.episode[j] = 0 if i < 6 else 1
        c.fallback[j] = {4: 1, 5: 4}.get(i, 0)
        c.missed[j] = i == 4
        ring.commit()
        infos: dict[int, dict[str, Any]] = {2: {"push": [1.0]}, 8: {"goal_switch": 1}}
        info = infos.get(i, {})
        obs = Observation(seq=i, t_ns=0, state=np.full(3, float(i)), info=info)
        car.record(obs, levels=np.linspace(0, 1, 4, dtype=np.float32) * i / 10,
                   reset=i in (0, 6))
    ring.close()
    car.save(path)


def test_plan_noise_events_and_nulls_of_a_handmade_trace(tmp_path: Path) -> None:
    trace, out = tmp_path / "trace", tmp_path / "t.mcap"
    _handmade(trace)
    assert export(trace, out) == 0
    m = Mcap(out)
    assert set(m.channels) == {TICK, STATE, NOISE, EVENTS}
    assert m.counts == {TICK: 10, STATE: 10, NOISE: 10, EVENTS: 7}
    ticks = [msg for _, msg in m.messages(TICK)]
    # log time: the tick's actual start, not its schedule
    assert [t for t, _ in m.messages(TICK)] == [msg["start_ns"] for msg in ticks]
    assert ticks[5]["start_ns"] == ticks[5]["scheduled_ns"] + 500
    assert ticks[3]["surprise"] is None  # NaN has no JSON; the schema allows null
    assert ticks[2]["surprise"] == 0.5 and ticks[9]["action"] == [0.9, -0.55]
    assert ticks[7]["tick"] == 9 and ticks[7]["skipped"] == 2
    noise = [msg for _, msg in m.messages(NOISE)]
    assert all(conforms(msg, m.schema(NOISE)) for msg in noise)
    assert np.allclose(noise[5]["levels"], np.linspace(0, 1, 4) * 0.5)
    events = {msg["tick"]: msg["events"] for _, msg in m.messages(EVENTS)}
    assert events == {
        0: ["reset"], 2: ["push"], 4: ["miss", "fallback:hold"], 5: ["fallback:nonfinite"],
        6: ["reset"], 9: ["skipped"], 10: ["goal_switch"],
    }


def _one_line(err: str) -> str:
    assert err.endswith("\n") and err.count("\n") == 1, err
    return err


def test_missing_chunk_exports_the_rest_with_sidecar_rows_paired(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace, out = tmp_path / "trace", tmp_path / "t.mcap"
    _handmade(trace)
    (trace / "chunk_000001.npz").unlink()  # records 4..7
    assert export(trace, out) == 0
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("rtdiff trace export: warning: incomplete trace, exported the 6 ")
    assert "chunk(s) 1..1 missing" in err
    m = Mcap(out)
    assert [msg["tick"] for _, msg in m.messages(TICK)] == [0, 1, 2, 3, 10, 11]
    assert [msg["state"] for _, msg in m.messages(STATE)][4] == [8.0, 8.0, 8.0]  # record 8's
    # no reset invented across the gap: the episode changed somewhere in the missing chunk
    assert {msg["tick"] for _, msg in m.messages(EVENTS)} == {0, 2, 10}
    assert m.metadata["rtdiff.export"]["complete"] == "false"


def test_a_crashed_run_exports_what_reached_disk_and_says_so(
    real_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace, out = tmp_path / "trace", tmp_path / "crashed.mcap"
    shutil.copytree(real_trace, trace)
    (trace / "chunk_000004.npz").unlink()  # the last chunk died in its write
    (trace / ".tmp-dead.part").write_bytes(b"PK\x03\x04")
    meta = json.loads((trace / "meta.json").read_text())
    (trace / "meta.json").write_text(json.dumps({**meta, "clean_close": False, "records": 0}))
    assert export(trace, out) == 0
    err = _one_line(capsys.readouterr().err)
    assert "warning" in err and "exported the 256 records" in err
    assert "chunk_000004.npz was being written" in err  # read_trace's own account
    m = Mcap(out)
    assert m.counts[TICK] == 256 and m.counts[STATE] == 256
    assert m.metadata["rtdiff.export"]["clean_close"] == "false"


@pytest.mark.parametrize("case", ["missing", "empty", "not-a-trace", "exists", "out-is-dir",
                                  "no-parent"])
def test_bad_input_is_one_line_and_writes_nothing(
    case: str, real_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace, out = real_trace, tmp_path / "out.mcap"
    if case == "missing":
        trace = tmp_path / "nowhere"
    elif case in ("empty", "not-a-trace"):
        trace = tmp_path / "dir"
        trace.mkdir()
        if case == "not-a-trace":
            (trace / "meta.json").write_text('{"format": "something else"}')
    elif case == "exists":
        out.write_bytes(b"keep me")
    elif case == "out-is-dir":
        out.mkdir()
    elif case == "no-parent":
        out = tmp_path / "no" / "such" / "out.mcap"
    assert export(trace, out) == 2
    assert _one_line(capsys.readouterr().err).startswith("rtdiff trace: error: ")
    if case == "exists":
        assert out.read_bytes() == b"keep me"
    elif case != "out-is-dir":
        assert not out.exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_failed_export_leaves_the_old_file_and_no_temp_file(
    real_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out.mcap"
    out.write_bytes(b"old")
    run = trace_export.Exporter.run

    def run_then_fill_the_disk(self: trace_export.Exporter) -> None:
        run(self)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trace_export.Exporter, "run", run_then_fill_the_disk)
    assert export(real_trace, out, "--force") == 2
    assert "No space left on device" in _one_line(capsys.readouterr().err)
    assert out.read_bytes() == b"old" and not list(tmp_path.glob(".tmp-*"))

    monkeypatch.setattr(trace_export.Exporter, "run", run)
    assert export(real_trace, out, "--force") == 0
    assert Mcap(out).counts[TICK] == 300


def test_progress_shows_on_a_terminal_only(
    real_trace: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trace_export, "PROGRESS_EVERY_S", 0.0)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert export(real_trace, tmp_path / "a.mcap") == 0
    err = capsys.readouterr().err
    assert "ticks written 64 of 300" in err and "ticks written 300 of 300" in err
    assert err.endswith("\n")


def test_an_unreadable_sidecar_exports_the_ticks_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace, out = tmp_path / "trace", tmp_path / "t.mcap"
    _handmade(trace)
    (trace / "sidecar.npz").write_bytes(b"not a zip")
    assert export(trace, out) == 0
    assert "sidecar.npz unreadable" in _one_line(capsys.readouterr().err)
    m = Mcap(out)
    assert set(m.channels) == {TICK, EVENTS} and m.counts[TICK] == 10
