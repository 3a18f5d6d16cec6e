"""`rtdiff bench stalls`' pieces: the stopper, the cgroup probe, the cell summary, the CLI's
refusals (the end-to-end run is tests/e2e/test_plan_ahead_stall.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.cli import main
from runtime.cli.bench_stalls import Stopper, cpu_cgroup, summarize


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_the_stopper_stops_on_schedule_and_never_leaves_the_process_stopped() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        stopper = Stopper(child.pid, 0.02, 0.06, jitter_s=0.01, seed=3)
        stopper.start()
        saw_stopped = False
        t_end = time.monotonic() + 0.5
        while time.monotonic() < t_end:
            saw_stopped = saw_stopped or _state(child.pid) == "T"
            time.sleep(0.002)
        stopper.stop()
        assert saw_stopped
        assert 5 <= stopper.stalls <= 8  # one every 60-70 ms over 0.5 s
        assert stopper.stopped_s == pytest.approx(0.02 * stopper.stalls, abs=0.01 * stopper.stalls)
        time.sleep(0.01)
        assert _state(child.pid) != "T"
    finally:
        child.kill()
        child.wait()


def test_a_cell_sums_the_plants_counts_and_counts_falls_over_its_seeds() -> None:
    def run(success: float, episodes: int, fed: int) -> dict:
        return {"episodes": episodes, "success_rate": success, "ticks": 1000, "misses": 50,
                "plant": {"fresh": 900, "plan_fed": fed, "fallback": 100 - fed, "safe": 0,
                          "dry": 0},
                "plant_counters": {"age_le_10ms": 900, "age_le_80ms": 100,
                                   "watchdog_trips": 1},
                "plan_ahead": fed > 0, "stalls_injected": 4, "steal_s_cell": 0.5}
    cell = summarize("rolling", True, 80.0, 0.25, [run(1.0, 2, 90), run(0.5, 2, 80)])
    assert cell["episodes"] == 4 and cell["falls"] == 1 and cell["success_rate"] == 0.75
    assert cell["plant"]["plan_fed"] == 170 and cell["plant"]["fallback"] == 30
    assert cell["miss_rate"] == 0.05 and cell["watchdog_trips"] == 2
    assert cell["steal_s"] == 1.0 and cell["stalls_injected"] == 8
    assert 60.0 < cell["action_age_ms"]["p99"] <= 80.0  # the top 1 % is in the (60, 80] bin


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--planners", "nope"], "unknown planner"),
        (["--stall-ms", "80,x"], "--stall-ms must be numbers"),
        (["--stall-ms", "300", "--every-s", "0.25"], "shorter than --every-s"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "stalls", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_the_cgroup_probe_names_a_version_or_none() -> None:
    found = cpu_cgroup()
    assert found is None or (found[0] in ("v1", "v2") and found[1].is_dir())
