"""`rtdiff bench fuzz`: a short libFuzzer run of every target (the JSON, coverage, what the
inputs reached), a deliberate defect reported as a crash that names a reproducible input, the
parsing of libFuzzer's output, and one-line errors on bad arguments.

The libFuzzer runs need atheris (a dev dependency) and are skipped without it. A crash in the
short run fails the test unless it is one of the open findings listed in
tests/hw_bridge/test_atheris_fuzz.py (each has its own regression test there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hw_bridge.fuzzing import TARGETS, FuzzViolation, run_input
from runtime.cli import main
from runtime.cli.bench_fuzz import _Parse, fuzz_argv, inherited_rss_mb
from tests.hw_bridge.test_atheris_fuzz import is_known_finding

TARGET_KEYS = {
    "messages", "frames", "crashes", "invalid_applied", "crash", "edges", "features",
    "corpus_units", "new_units", "seconds", "execs_per_s", "libfuzzer_execs_per_s",
    "peak_rss_mb", "steal_s", "reached",
}


def _needs_atheris() -> None:
    pytest.importorskip("atheris", reason="atheris (a dev dependency) is not installed")


def _reproduces(target: str, crash: dict[str, Any], **kw: Any) -> None:
    data = Path(crash["file"]).read_bytes()
    with pytest.raises(FuzzViolation) as info:
        run_input(target, data, **kw)
    assert info.value.kind == crash["kind"]


def test_a_short_run_of_every_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _needs_atheris()
    n = 1500
    rc = main(["bench", "fuzz", "--messages", str(n), "--seed", "1", "--out", str(tmp_path),
               "--json"])
    out, err = capsys.readouterr()
    res = json.loads(out)
    assert set(res["targets"]) == set(TARGETS)
    assert res["seed"] == 1 and res["messages_per_target"] == n and res["fault"] is None
    assert res["messages"] == sum(t["messages"] for t in res["targets"].values())
    assert res["crashes"] == sum(t["crashes"] for t in res["targets"].values())
    assert res["coverage"]["per_target"] == {k: t["edges"] for k, t in res["targets"].items()}
    assert res["coverage"]["edges"] == sum(res["coverage"]["per_target"].values())
    assert rc == (1 if res["crashes"] else 0)
    assert json.loads((tmp_path / "summary.json").read_text()) == res
    for name, t in res["targets"].items():
        assert set(t) == TARGET_KEYS, name
        assert (tmp_path / f"log-{name}.txt").stat().st_size > 0
        if t["crash"] is None:
            assert t["messages"] == n and t["crashes"] == 0
            assert t["edges"] > 100 and t["features"] > t["edges"]
            assert t["new_units"] > 0  # the mutator found new coverage
            assert t["frames"] > n  # inputs are sequences of frames
        else:  # an open finding, reproducible from the input kept
            c = t["crash"]
            assert is_known_finding(name, c["kind"], c["detail"]), c
            assert c["file"] in err and Path(c["file"]).parent == tmp_path / "crashes"
            _reproduces(name, c)
    server = res["targets"]["server"]
    if server["crash"] is None:
        reached = server["reached"]
        for k in ("applied", "rejected", "takeovers", "watchdog_trips", "resets",
                  "out_of_order", "late"):
            assert reached[k] > 0, k


def test_a_deliberate_defect_is_a_crash_that_names_a_reproducible_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _needs_atheris()
    monkeypatch.setenv("RTDIFF_FUZZ_FAULT", "nan_action")  # the limiter lets NaN through
    rc = main(["bench", "fuzz", "--messages", "2000", "--target", "server", "--out",
               str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    res = json.loads(out)
    assert rc == 1
    assert res["crashes"] == 1 and res["invalid_applied"] == 1 and res["fault"] == "nan_action"
    crash = res["targets"]["server"]["crash"]
    assert crash["kind"] == "invalid_applied" and "not finite" in crash["detail"]
    assert "rtdiff bench fuzz: server: invalid_applied" in err and crash["file"] in err
    assert crash["reproduce"] == f"python -m hw_bridge.fuzzing server {crash['file']}"
    _reproduces("server", crash, fault="nan_action")


def test_the_parser_reads_libfuzzer_and_the_harness() -> None:
    p = _Parse()
    for line in [
        "INFO: Seed: 2",
        "#10\tINITED cov: 585 ft: 1519 corp: 9/15845b exec/s: 0 rss: 67Mb",
        "#4096\tpulse  cov: 626 ft: 2908 corp: 243/507Kb lim: 16384 exec/s: 819 rss: 75Mb",
        "#4100\tNEW    cov: 627 ft: 2910 corp: 244/508Kb lim: 16384 exec/s: 820 rss: 75Mb L: 1",
        "rtdiff-fuzz: violation invalid_applied: handle: invalid: action not finite (src_seq 5)",
        "==123== ERROR: libFuzzer: fuzz target exited",
        "artifact_prefix='o/crashes/server-'; Test unit written to o/crashes/server-crash-ab12",
        "stat::number_of_executed_units: 4101",
        "stat::average_exec_per_sec:     820",
        "stat::new_units_added:          235",
        "stat::peak_rss_mb:              75",
    ]:
        p.line(line)
    assert (p.execs, p.edges, p.features, p.corpus, p.rate) == (4100, 627, 2910, 244, 820)
    assert p.kind == "invalid_applied" and (p.detail or "").startswith("handle: invalid")
    assert p.error == "fuzz target exited" and p.files == ["o/crashes/server-crash-ab12"]
    assert p.stats["number_of_executed_units"] == 4101 and p.stats["new_units_added"] == 235


def test_the_child_command_line() -> None:
    argv = fuzz_argv("client", messages=500, seed=0, out=Path("o"), max_seconds=2.4)
    assert argv[1:4] == ["-m", "hw_bridge.fuzzing", "client"]
    assert "-runs=500" in argv and "-seed=1" in argv  # libFuzzer's seed 0 means random
    assert "-max_total_time=2" in argv and "-artifact_prefix=o/crashes/client-" in argv
    assert argv[-1] == "o/corpus/client"
    assert "-rss_limit_mb=2048" in argv


def test_the_memory_limit_counts_from_what_the_child_inherits() -> None:
    """A child reports its parent's peak RSS as its own (Linux): the limit sits above it."""
    argv = fuzz_argv("server", messages=5, seed=0, out=Path("o"), max_seconds=None,
                     inherited_mb=1900)
    assert "-rss_limit_mb=3948" in argv
    assert inherited_rss_mb() > 10  # this test process: tens of MB at least


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--target", "codec,nope"], "unknown target"),
        (["--target", "server,server"], "twice"),
        (["--target", ","], "unknown target"),
        (["--messages", "0"], "--messages"),
        (["--messages", "x"], "--messages"),
        (["--max-seconds", "-1"], "--max-seconds"),
        (["--seed", "-2"], "--seed"),
    ],
)
def test_bad_arguments_fail_with_one_line(
    args: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        rc = main(["bench", "fuzz", "--out", str(tmp_path), *args])
    except SystemExit as exc:  # argparse's own refusals
        rc = int(exc.code or 0)
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and says in err
    assert not (tmp_path / "summary.json").exists()


def test_without_atheris_the_bench_names_the_missing_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "atheris" else real(name, *a))
    rc = main(["bench", "fuzz", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "atheris" in err
