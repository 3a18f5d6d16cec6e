"""The CLI face: bad arguments get one line on stderr and a non-zero exit; --help everywhere."""

import subprocess
import sys

import pytest

from runtime.cli import build_parser, main

RUN = ["run", "--policy", "expert", "--plant", "sim:x"]
SUBCOMMANDS = [
    ["tasks"], ["collect"], ["train"], ["serve"], ["keys"], ["run"],
    ["bench"], ["bench", "tick"], ["bench", "bridge"], ["bench", "deadline"], ["report"], ["demo"],
]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([*RUN, "--rate", "0"], "--rate: must be a positive"),
        ([*RUN, "--rate", "-5"], "--rate: must be a positive"),
        ([*RUN, "--seconds", "-1"], "--seconds: must be"),
        ([*RUN, "--rate", "nan"], "--rate: must be"),
        (["bench", "tick", "--rate", "0"], "--rate: must be a positive"),
        (["bench", "tick", "--seconds", "-2"], "--seconds: must be"),
        (["collect", "--task", "x", "--episodes", "0", "--out", "d"], "--episodes: must be"),
        ([*RUN, "--rt-priority", "0"], "--rt-priority: must be a positive"),
        (["serve", "--task", "x", "--rt-priority", "-1"], "--rt-priority: must be a positive"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["bench", "nope"], "invalid choice: 'nope'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(
    argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert needle in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("argv", SUBCOMMANDS, ids=" ".join)
def test_help_works_on_every_subcommand(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*argv, "--help"])
    assert exc.value.code == 0


def test_bench_tick_rejects_an_unknown_variant(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "tick", "--seconds", "0.01", "--variants", "spin+warp"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "rtdiff bench: error: unknown variant 'spin+warp'; "
        "expected {sleep,spin}+{gc,frozen}[+async]"
    )


def test_help_imports_nothing_heavy() -> None:
    code = (
        "import sys; from runtime.cli import build_parser; build_parser().format_help();"
        "heavy = {'torch', 'mujoco', 'gymnasium', 'zmq'} & set(sys.modules); print(sorted(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_run_reports_what_the_rt_priority_request_got() -> None:
    """A child process (SCHED_FIFO must not stay on the test runner): granted or refused, the
    run goes on and says which in its JSON."""
    pytest.importorskip("sims")
    code = (
        "import json, sys; from runtime.cli.run import execute; from runtime.cli import "
        "build_parser; a = build_parser().parse_args(['run', '--policy', 'expert', '--plant', "
        "'sim:double-pendulum', '--episodes', '1', '--rt-priority', '1', '--json']); "
        "_, out = execute(a); print(json.dumps(out['rt']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    lines = __import__("json").loads(proc.stdout.strip().splitlines()[-1])
    assert len(lines) == 1 and "SCHED_FIFO" in lines[0]


def test_run_emits_early_only_for_anytime_planners_unless_told() -> None:
    base = ["run", "--policy", "expert", "--plant", "sim:double-pendulum"]
    assert build_parser().parse_args(base).emit_after is None  # chosen by the planner
    assert build_parser().parse_args([*base, "--emit-after", "0"]).emit_after == 0
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--emit-after", "-1"])
    pytest.importorskip("sims")
    from runtime.cli.run import execute

    _, out = execute(build_parser().parse_args([*base, "--episodes", "1", "--json"]))
    assert out["emit_after_steps"] == 0  # the expert is no anytime planner


def test_bench_bridge_mitigation_flags_reach_the_benchmark() -> None:
    args = build_parser().parse_args(["bench", "bridge", "--mlock", "--pin"])
    assert args.mlock is True and args.pin is True
    plain = build_parser().parse_args(["bench", "bridge"])
    assert plain.mlock is False and plain.pin is False


def test_run_spin_window_defaults_to_200_us_and_is_validated() -> None:
    base = ["run", "--policy", "expert", "--plant", "sim:double-pendulum"]
    assert build_parser().parse_args(base).spin_us == 200.0
    assert build_parser().parse_args([*base, "--spin-us", "5000"]).spin_us == 5000.0
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--spin-us", "-1"])


def test_run_summary_says_when_the_command_leaves_before_the_refinement_ends() -> None:
    from runtime.cli.run import summary_table

    q = {"p50": 0.1, "p99": 0.2, "p999": 0.3, "max": 0.4}
    out = {"policy": "rolling:double-pendulum", "plant_spec": "sim:double-pendulum",
           "mode": "realtime", "rate_hz": 100.0, "ticks": 10, "misses": 0, "miss_rate": 0.0,
           "lateness_ms": q, "compute_ms": q, "episodes": 0, "success_rate": 0.0,
           "mean_return": 0.0, "fallbacks": {}, "emit_after_steps": 1,
           "steps_per_tick": {"mean": 8.0, "min": 8, "max": 8}}
    assert "command sent after 1 step, refined on after it" in summary_table(out)
    assert "command sent after" not in summary_table({**out, "emit_after_steps": 0})


def test_run_summary_shows_what_the_plant_applied_and_the_host_steal() -> None:
    from runtime.cli.run import summary_table

    q = {"p50": 0.1, "p99": 0.2, "p999": 0.3, "max": 0.4}
    out = {"policy": "rolling:double-pendulum", "plant_spec": "tcp://127.0.0.1:5555",
           "mode": "realtime", "rate_hz": 100.0, "ticks": 10, "misses": 2, "miss_rate": 0.2,
           "lateness_ms": q, "compute_ms": q, "episodes": 0, "success_rate": 0.0,
           "mean_return": 0.0, "fallbacks": {}, "emit_after_steps": 1,
           "steps_per_tick": {"mean": 8.0, "min": 8, "max": 8},
           "plant": {"fresh": 8, "plan_fed": 2, "fallback": 0, "safe": 0, "dry": 0},
           "action_age_ms": {"p50": 10.0, "p99": 24.5}, "plan_ahead": True, "steal_s": 1.25}
    text = summary_table(out)
    assert "fresh 8  plan_fed 2  fallback 0  safe 0  dry 0" in text
    assert "p99 24.5" in text and "(plan-ahead on)" in text
    assert "host steal during the run 1.25 s" in text


def test_bench_deadline_help_names_every_planner_it_knows() -> None:
    from runtime.cli.bench_deadline import PLANNERS

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["bench"]  # type: ignore[union-attr]
    deadline = next(a for a in sub._actions if a.dest == "bench").choices["deadline"]  # type: ignore[union-attr]
    help_text = next(a.help for a in deadline._actions if a.dest == "planners")
    assert help_text is not None
    listed = help_text.split(":", 1)[1].split(", or any policy spec")[0]
    named = {w.strip(" ,") for w in listed.split(",")}
    assert {n.split(" ")[0] for n in named} == set(PLANNERS)


def test_lockstep_runs_keep_refine_then_send_for_the_rolling_planner() -> None:
    pytest.importorskip("sims")
    from runtime.cli.run import execute

    args = build_parser().parse_args(["run", "--policy", "rolling:double-pendulum", "--plant",
                                      "sim:double-pendulum", "--mode", "lockstep",
                                      "--seconds", "0.2", "--json"])
    _, out = execute(args)
    assert out["emit_after_steps"] == 0
