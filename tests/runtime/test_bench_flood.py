"""`rtdiff bench flood`: a short run end to end (the JSON, frames sent and counted, no
flooder left behind), the flooders' clean-up on an error, the /proc figures, the refusals."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runtime.cli import main
from runtime.cli.bench_flood import cpu_pct, default_procs, flooders, rss_mb
from runtime.cli.bench_soak import Sample
from runtime.cli.benchpage import render_flood

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


def _alive_flooder(pid: int) -> bool:
    try:
        return b"hw_bridge.flood" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_a_short_flood_is_measured_against_a_baseline_and_leaves_no_flooder(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kinds = "hello,garbage,slow,identities,commands"
    assert main(["bench", "flood", "--peers", "5", "--kinds", kinds, "--seconds", "2",
                 "--peer-rate", "2000", "--out", str(tmp_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    base, flood = result["cells"]
    assert (base["cell"], flood["cell"]) == ("baseline", "flood")
    for cell in (base, flood):
        assert cell["rate_hz"] == 100.0 and cell["controller_ticks"] > 150
        assert 0 <= cell["controller_miss_rate"] <= 1 and cell["controller_misses"] >= 0
        rss, cpu = cell["server_rss_mb"], cell["server_cpu_pct"]
        assert 0 < rss["start"] <= rss["max"] and rss["end"] <= rss["max"]
        assert cpu["mean"] is not None and 0 < cpu["mean"] <= cpu["max"]
        assert cell["server_counters"]["applied"] > 0 and "steal_s" in cell
    assert base["peers"] == 0 and base["frames_sent_total"] == 0
    assert base["server_counters"]["bad_message"] == 0
    assert flood["peers"] == 5 and flood["kinds"] == kinds.split(",")
    assert set(flood["frames_sent"]) == set(kinds.split(","))
    assert all(n > 0 for n in flood["frames_sent"].values())
    counted = flood["server_counters"]
    assert counted["received"] > base["server_counters"]["received"]
    assert counted["bad_message"] > 0  # garbage and identities
    assert counted["unauthorized"] > 0 and counted["out_of_order"] > 0  # commands
    assert set(result["checks"]) == {"misses", "memory", "cpu"}
    assert json.loads((tmp_path / "summary.json").read_text())["cells"] == result["cells"]
    reports = json.loads((tmp_path / "runs" / "flood.json").read_text())["flooders"]
    assert len(reports) == flood["procs"] == 2
    assert not any(_alive_flooder(r["pid"]) for r in reports)
    row = render_flood([result])[-1]  # the benchmarks page's row for this run
    assert row.startswith("| 1 | expert | 5 | hello,garbage")
    assert str(flood["frames_sent_total"]) in row


def test_flooders_are_stopped_when_the_bench_fails_before_the_flood() -> None:
    pids: list[int] = []
    with pytest.raises(RuntimeError), flooders(
            "tcp://127.0.0.1:9", [["garbage"], ["hello"]], seed=0, peer_rate=0.0,
            seconds=60.0) as procs:
        pids = [p.pid for p in procs]
        raise RuntimeError("the controller did not start")
    assert len(pids) == 2 and not any(_alive_flooder(pid) for pid in pids)


def test_server_figures_from_proc_samples() -> None:
    def s(t_s: float, kb: int, cpu: float) -> Sample:
        return Sample(round(t_s * 1e9), {"server": kb}, {"server": cpu}, None)
    samples = [s(0, 1024, 1.0), s(1, 4096, 1.5), s(2, 2048, 1.6)]
    assert rss_mb(samples, "server") == {"start": 1.0, "end": 2.0, "max": 4.0,
                                         "late_growth": -2.0}  # from the reading at 1 s
    assert cpu_pct(samples, "server") == {"mean": 30.0, "max": 50.0}
    assert cpu_pct(samples[:1], "server") == {"mean": None, "max": None}
    assert [default_procs(n) for n in (1, 3, 50, 100, 1000)] == [1, 2, 2, 4, 4]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kinds", "hello,nope"], "unknown peer kind"),
        (["--planner", "nope"], "unknown planner"),
        (["--peers", "3", "--procs", "4"], "more than --peers"),
        (["--peers", "0"], "--peers"),
    ],
)
def test_bad_arguments_are_one_line_errors(argv: list[str], message: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["bench", "flood", "--out", str(tmp_path), *argv])
    except SystemExit as exc:  # argparse's own refusals
        code = int(exc.code or 0)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert os.listdir(tmp_path) == []  # refused before anything ran
