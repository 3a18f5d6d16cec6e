"""`rtdiff bench tick --json` runs the real loop on the real clock and prints the contract keys.

Timing itself is not asserted here (benchmarks measure speed; see docs/benchmarks.md): this
checks that the harness runs end to end and reports what it promises.
"""

import json
import subprocess
import sys


def test_bench_tick_json_has_the_contract_keys() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "runtime.cli", "bench", "tick", "--rate", "500", "--seconds",
         "0.2", "--heap-objects", "1000", "--json"],
        capture_output=True, text=True, check=True, timeout=60,
    )
    report = json.loads(out.stdout)
    for key in ("ticks", "misses", "miss_rate", "lateness_ms", "compute_ms", "overhead_us",
                "steps_per_tick", "variants", "full_gc_ms"):
        assert key in report, key
    assert set(report["variants"]) == {"sleep+gc", "sleep+frozen", "spin+gc", "spin+frozen"}
    for v in report["variants"].values():
        assert v["ticks"] >= 100 - 5  # 0.2 s at 500 Hz, give or take skipped ticks counted in
        assert set(v["lateness_ms"]) == {"p50", "p99", "p999", "max"}
        assert v["steps_per_tick"]["max"] >= 1  # the synthetic planner really refined
