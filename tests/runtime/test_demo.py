"""`rtdiff demo`'s side-by-side table."""

from runtime.cli.demo import table


def _out(rate: float, replans: float, episodes: int, success: float) -> dict:
    return {"rate_hz": rate, "ticks": 2000, "misses": 3, "plant_misses": 4, "miss_rate": 0.0015,
            "lateness_ms": {"p99": 0.01}, "compute_ms": {"p99": 7.7},
            "steps_per_tick": {"mean": 7.99}, "replans_per_s": replans, "episodes": episodes,
            "success_rate": success}


def test_demo_table_has_one_row_per_run_with_rate_replans_and_success() -> None:
    text = table({"rolling": _out(100, 100.0, 2, 1.0), "rolling-500hz": _out(500, 480.0, 0, 0.0)})
    lines = text.splitlines()
    assert "replans" in lines[0] and "rate" in lines[0]
    rolling = lines[2].split()
    assert rolling[:5] == ["rolling", "100", "2000", "3", "4"]
    assert rolling[-5:] == ["100", "2", "100.0", "-", "-"]  # no plant counts, no steal known
    fast = lines[3].split()
    assert fast[1] == "500" and fast[-5:-2] == ["480", "0", "-"]  # no finished episode: no rate


def test_demo_table_says_what_the_plant_applied_and_the_host_steal_of_each_run() -> None:
    out = {**_out(100, 100.0, 2, 1.0),
           "plant": {"fresh": 1900, "plan_fed": 80, "fallback": 20, "safe": 0, "dry": 0},
           "steal_s": 0.42}
    lines = table({"rolling-stop50ms-on": out}).splitlines()
    assert "plan/hold" in lines[0] and "steal" in lines[0]
    assert lines[2].split()[-2:] == ["80/20", "0.42"]
