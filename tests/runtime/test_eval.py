"""rtdiff eval: the episode store (torn last line, one writer), resuming, one-line errors, and on
a local Ray instance (started once for the module, 2 CPUs) the same rows as the plain loop and
a killed worker's episodes run again and stored once."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.cli import CliError, main
from runtime.cli import evalsweep as sweep
from runtime.cli.evalsweep import Episode, Setting, rows, run_sweep
from runtime.evalstore import EpisodeStore, StoreError, read_records

DP = "double-pendulum"


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------------- the store


def test_a_torn_last_line_is_ignored_and_cut_off_before_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    with EpisodeStore(path) as store:
        assert store.append([{"key": "a", "v": 1}, {"key": "b", "v": 2}]) == 2
        assert store.append([{"key": "a", "v": 9}]) == 0  # a key is stored once
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"key": "c", "v"')  # a crash in the middle of a write
    assert [r["key"] for r in read_records(path)] == ["a", "b"]
    with EpisodeStore(path) as store:
        assert set(store.done) == {"a", "b"} and store.truncated == len(b'{"key": "c", "v"')
        store.append([{"key": "c", "v": 3}])
    assert [r["key"] for r in _lines(path)] == ["a", "b", "c"]  # every line whole again
    # a last line cut inside but ending in a newline is torn too; a bad line before it is not
    path.write_bytes(whole + b'{"key": "c"\n')
    assert [r["key"] for r in read_records(path)] == ["a", "b"]
    path.write_bytes(b'{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(StoreError, match="line 2 is not an episode record"):
        read_records(path)


def test_a_store_has_one_writer_at_a_time(tmp_path: Path) -> None:
    with EpisodeStore(tmp_path / "s.jsonl"):
        with pytest.raises(StoreError, match="in use"):
            EpisodeStore(tmp_path / "s.jsonl").open()
    EpisodeStore(tmp_path / "s.jsonl").open()  # free again once closed


# ------------------------------------------------------------------ the plain loop, the CLI


def _expert_episodes(n: int, seed: int = 0) -> list[Episode]:
    return [Episode(DP, "expert", Setting(disturbances="pushes"), seed + i) for i in range(n)]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The keys of the episodes this process runs."""
    ran: list[str] = []
    real = sweep.run_episode

    def run_episode(ep: Episode) -> dict[str, Any]:
        ran.append(ep.key)
        return real(ep)

    monkeypatch.setattr(sweep, "run_episode", run_episode)
    return ran


def test_a_rerun_skips_the_episodes_in_the_store_and_runs_the_rest(
    tmp_path: Path, counted: list[str]
) -> None:
    store = tmp_path / "s.jsonl"
    first = run_sweep(_expert_episodes(3), store)
    assert (first.ran, first.skipped, len(counted)) == (3, 0, 3)
    lines = store.read_text().splitlines()
    store.write_text("\n".join(lines[:2]) + "\n" + lines[2][:25])  # the third torn off
    counted.clear()
    again = run_sweep(_expert_episodes(5), store)  # two more asked for
    assert (again.ran, again.skipped) == (3, 2)
    assert counted == [e.key for e in _expert_episodes(5)[2:]]  # only the missing ones ran
    recs = _lines(store)
    assert sorted(r["key"] for r in recs) == sorted(e.key for e in _expert_episodes(5))
    # the episode run again gives the record it gave the first time
    before = json.loads(lines[1])
    assert next(r for r in recs if r["key"] == before["key"])["return"] == before["return"]


def test_the_cli_says_how_many_it_skips_and_aggregates_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def argv(episodes: int) -> list[str]:
        return ["eval", "--tasks", DP, "--planners", "expert", "--episodes", str(episodes),
                "--store", str(tmp_path / "s.jsonl"), "--json"]

    assert main(argv(2)) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["ran"], out["skipped"]) == (2, 0)
    assert main(argv(3)) == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert (again["ran"], again["skipped"]) == (1, 2)
    assert "2 of 3 episodes already in" in captured.err
    (row,) = again["rows"]
    assert row["task"] == DP and row["planner"] == "expert" and row["episodes"] == 3
    assert row["variant"] == "renoise" and row["disturbances"] == "default"
    returns = [r["return"] for r in _lines(tmp_path / "s.jsonl")]
    assert row["mean_return"] == pytest.approx(sum(returns) / 3)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--tasks", "nope"], "unknown task 'nope'"),
        (["--planners", "oracle"], "unknown policy kind 'oracle'"),
        (["--planners", "rolling:bimodal"], "was trained for state/action/goal dims"),
        (["--variants", "sometimes"], "unknown variant 'sometimes'"),
        (["--disturbances", "wind"], "unknown disturbance setting 'wind'"),
        (["--push-force", "5"], "--push-force must be LOW,HIGH"),
        (["--set", "no_such=1"], "unknown planner setting"),
        (["--steps-per-tick", "0"], "--steps-per-tick must be"),
        (["--ray", "127.0.0.1:1"], "no Ray cluster at 127.0.0.1:1"),
        (["--ray", "nowhere"], "--ray takes nothing"),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    if args[0] == "--ray":
        pytest.importorskip("ray")
    assert main(["eval", *args, "--episodes", "1", "--store", str(tmp_path / "s.jsonl")]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1
    assert not (tmp_path / "s.jsonl").exists()  # refused before anything ran


def test_ray_not_installed_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # `import ray` fails
    assert main(["eval", "--planners", "expert", "--episodes", "1", "--ray",
                 "--store", str(tmp_path / "s.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "needs ray, which is not installed" in err and err.count("\n") == 1


def test_a_failing_episode_is_one_line_and_keeps_what_finished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = sweep.run_episode

    def fails_on_seed_2(ep: Episode) -> dict[str, Any]:
        if ep.seed == 2:
            raise ValueError("the plant refused")
        return real(ep)

    monkeypatch.setattr(sweep, "run_episode", fails_on_seed_2)
    with pytest.raises(CliError, match="seed=2: the plant refused"):
        run_sweep(_expert_episodes(3), tmp_path / "s.jsonl")
    assert len(_lines(tmp_path / "s.jsonl")) == 2


# ------------------------------------------------------------------------------------ Ray


@pytest.fixture(scope="module")
def ray() -> Iterator[Any]:
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray
    finally:
        ray.shutdown()


def _mixed() -> list[Episode]:
    """The expert and a learned planner (re-noising and not) on the double-pendulum with its
    pushes; the rolling planner and the expert, which draws its side, on bimodal."""
    out = [Episode(DP, p, Setting(variant=v), s) for s in (0, 1)
           for p, v in (("expert", "renoise"), ("mlp:double-pendulum", "renoise"))]
    out += [Episode("bimodal", p, Setting(variant=v), s) for s in (0, 1, 2)
            for p, v in (("expert", "renoise"), ("rolling:bimodal", "renoise"),
                         ("rolling:bimodal", "none"))]
    return out


@pytest.mark.ray
def test_ray_rows_equal_the_plain_loops(tmp_path: Path, ray: Any) -> None:
    eps = _mixed()
    plain = run_sweep(eps, tmp_path / "plain.jsonl")
    on_ray = run_sweep(eps, tmp_path / "ray.jsonl", ray=ray, batch=2)
    assert on_ray.ran == plain.ran == len(eps)
    assert rows(eps, on_ray.records) == rows(eps, plain.records)  # exactly, every figure
    assert {r["pid"] for r in on_ray.records.values()} != {os.getpid()}  # ran on workers


@pytest.mark.ray
def test_the_cli_with_ray_prints_the_plain_rows(
    tmp_path: Path, ray: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["eval", "--tasks", "bimodal", "--planners", "rolling,expert", "--variants",
            "renoise,blank", "--episodes", "2", "--json"]
    assert main([*argv, "--store", str(tmp_path / "a.jsonl")]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main([*argv, "--store", str(tmp_path / "b.jsonl"), "--ray"]) == 0
    on_ray = json.loads(capsys.readouterr().out)
    assert on_ray["rows"] == plain["rows"] and on_ray["vs_renoise"] == plain["vs_renoise"]
    assert [r["planner"] for r in plain["rows"]] == ["expert", "rolling:bimodal",
                                                     "rolling:bimodal"]


def _running_task_pid(name: str, timeout_s: float) -> int | None:
    """The pid of a Ray worker executing remote function `name` (its process title)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(f"ray::{name}".encode()):
                return int(entry)
        time.sleep(0.02)
    return None


@pytest.mark.ray
def test_a_killed_workers_episode_runs_again_and_is_stored_once(
    tmp_path: Path, ray: Any
) -> None:
    # rolling on the double-pendulum: about half a second an episode, long enough to hit
    eps = [Episode(DP, "rolling:double-pendulum", Setting(), s) for s in (0, 1, 2)]
    store = tmp_path / "ray.jsonl"
    outcome: dict[str, Any] = {}

    def drive() -> None:
        try:
            outcome["result"] = run_sweep(eps, store, ray=ray, max_retries=3)
        except BaseException as exc:  # handed to the test thread
            outcome["error"] = exc

    driver = threading.Thread(target=drive)
    driver.start()
    pid = _running_task_pid("run_batch", timeout_s=30.0)
    assert pid is not None, "no Ray worker ran an episode"
    os.kill(pid, signal.SIGKILL)
    driver.join(timeout=120)
    assert not driver.is_alive() and "error" not in outcome, outcome.get("error")
    recs = _lines(store)
    assert sorted(r["key"] for r in recs) == sorted(e.key for e in eps)  # each exactly once
    assert pid not in {r["pid"] for r in recs}  # the killed worker's episode ran elsewhere
    plain = run_sweep(eps, tmp_path / "plain.jsonl")
    assert rows(eps, outcome["result"].records) == rows(eps, plain.records)


@pytest.mark.ray
def test_bench_deadline_on_ray_runs_realtime_cells_one_at_a_time_on_two_cpus(
    tmp_path: Path, ray: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    # each cell (a served plant + the controller) holds 2 CPUs: on this 2-CPU instance no two
    # cells overlap; each says where it ran and the host steal there
    assert main(["bench", "deadline", "--ray", "--tasks", DP, "--rates", "100", "--planners",
                 "expert,mlp", "--seeds", "1", "--seconds", "0.5", "--out", str(tmp_path),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert {c["planner"] for c in summary["cells"]} == {"expert", "mlp"}
    assert all("error" not in c and c["ticks"] > 0 for c in summary["cells"])
    runs = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*.json"))]
    assert len(runs) == 2
    for r in runs:
        assert r["node"]["hostname"] and r["node"]["node_id"] and "cell_steal_s" in r
    first, second = sorted(r["cell_monotonic_ns"] for r in runs)
    assert first[0] < first[1] <= second[0] < second[1]  # one after the other


def test_the_benchmarks_page_has_an_eval_section(tmp_path: Path) -> None:
    from runtime.cli.benchpage import render_page
    from runtime.files import record_result

    modes = {m: {"seconds": [s], "episodes_per_s": [10 / s], "steal_s": [0.0]}
             for m, s in (("plain", 2.0), ("ray1", 2.1), ("ray2", 1.1))}
    record_result(tmp_path, "eval", {
        "task": DP, "planner": "rolling:double-pendulum", "episodes": 10, "rounds": 1,
        "batch": 1, "cpus": 2, "modes": modes, "episode_ms": 200.0, "speedup_2_workers": 1.82,
        "ray_overhead_ms_per_episode": 10.0, "same_results": True, "steal_s": 0.25},
        argv=["bench", "eval", "--episodes", "10"])
    page = render_page(tmp_path)
    assert "## Evaluation on Ray workers" in page
    row = next(line for line in page.splitlines() if line.startswith("| 1 | rolling:"))
    assert "| 5.00 | 4.76 | 9.09 | 1.82 | 10.0 | 200.0 | yes | 0.25 |" in row
