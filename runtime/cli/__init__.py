"""`rtdiff`: one console script, one subcommand per job.

The parser is built here from plain argparse so that `rtdiff --help` imports nothing heavy.
Each subcommand's work lives in the package that owns it and is imported lazily, only when that
subcommand runs (`sims.collect`, `hw_bridge.server`, `policies.train`, ...). A target is named
as "module:function"; the function takes the parsed `argparse.Namespace` and returns an exit
code.

Bad arguments exit non-zero with a one-line reason on stderr (argparse's usage block is kept
off: one line is what a script or a person scanning a log needs).
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def fraction(text: str) -> float:
    value = positive_float(text)
    if value > 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text!r}")
    return value


def _target(sub: argparse.ArgumentParser, target: str) -> None:
    sub.set_defaults(_target=target)


def _add_tasks(sp: argparse._SubParsersAction[_Parser]) -> None:
    p = sp.add_parser("tasks", help="list the simulated tasks")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--export-mjcf", default=None, metavar="DIR",
                   help="write each task's model as DIR/TASK.xml, runnable as mjcf:DIR/TASK.xml")
    _target(p, "sims.registry:cli_tasks")


def _add_collect(sp: argparse._SubParsersAction[_Parser]) -> None:
    p = sp.add_parser("collect", help="record a plant driven by a policy as a Minari dataset")
    p.add_argument("--task", default=None,
                   help="a built-in task, recorded with its expert (see `rtdiff tasks`)")
    _add_plant_spec(p, served=False, required=False)
    _add_policy_spec(p, required=False)
    p.add_argument("--episodes", type=positive_int, required=True, help="episodes to record")
    p.add_argument("--out", required=True, help="dataset directory to create")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="base seed")
    p.add_argument(
        "--dart-prob",
        type=float,
        default=None,
        help="probability of executing a perturbed action (default: the task's setting with "
             "--task, 0 with --plant)",
    )
    p.add_argument("--workers", type=positive_int, default=1,
                   help="with --task: processes, each recording a contiguous run of seeds")
    _target(p, "runtime.cli.collect:cli_collect")


def _add_results(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--results", default=None, metavar="DIR",
        help="also record this run in DIR for the benchmarks page (benchmarks/results; "
             "`rtdiff report --benchmarks` regenerates docs/benchmarks.md from it)",
    )


DEFAULT_RT_PRIORITY = 20  # `rtdiff run` in realtime; a served plant takes one level above


def _add_rt_priority(p: argparse.ArgumentParser, who: str, default: int | None = None) -> None:
    p.add_argument(
        "--rt-priority", type=positive_int, default=default, metavar="P",
        help=f"run {who} under SCHED_FIFO at priority P (1-99) where the OS allows it (Linux "
        "with CAP_SYS_NICE or an rtprio limit); reports what it got",
    )


def _add_train(sp: argparse._SubParsersAction[_Parser]) -> None:
    p = sp.add_parser("train", help="train a policy on a dataset")
    p.add_argument(
        "--task", default=None,
        help="the task the dataset must hold (default: whatever plant the dataset holds)",
    )
    p.add_argument(
        "--policy", required=True, choices=["rolling", "chunked", "pertick", "mlp", "dllm", "ar"],
        help="kind",
    )
    p.add_argument("--data", required=True, help="dataset directory from `rtdiff collect`")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--steps", type=positive_int, default=None, help="optimizer steps")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument(
        "--eval-every", type=nonnegative_int, default=0,
        help="lockstep evaluation every N steps (0: only at the end; needs a simulated task)",
    )
    p.add_argument(
        "--eval-episodes", type=nonnegative_int, default=5, help="episodes per evaluation (0: none)"
    )
    p.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
        help="a model, training or planner setting, e.g. n_embd=128, model.n_past=0, "
        "train.p_ramp=0.3, planner.clean_ticks=4 (repeatable; recorded in the checkpoint)",
    )
    p.add_argument(
        "--nproc", type=positive_int, default=1, metavar="N",
        help="train on N processes of this node under torchrun (DistributedDataParallel: gloo "
        "on CPU, nccl on CUDA); batch_size stays the global batch, split evenly",
    )
    p.add_argument(
        "--nnodes", type=positive_int, default=None, metavar="M",
        help="nodes in the job (run the same command on each; needs --rdzv-endpoint when > 1)",
    )
    p.add_argument(
        "--rdzv-endpoint", default=None, metavar="HOST:PORT",
        help="rendezvous address every node reaches (c10d, or a static one with --node-rank)",
    )
    p.add_argument(
        "--node-rank", type=nonnegative_int, default=None, metavar="R",
        help="this node's fixed rank (static rendezvous; node 0 hosts it at --rdzv-endpoint)",
    )
    _target(p, "runtime.cli.train:cli_train")


def _add_serve(sp: argparse._SubParsersAction[_Parser]) -> None:
    p = sp.add_parser("serve", help="serve a plant (simulated or real) behind the ZeroMQ bridge")
    p.add_argument("--task", default=None, help="a built-in task: short for --plant sim:TASK")
    _add_plant_spec(p, served=True, required=False)
    p.add_argument("--realtime", action="store_true", help="run physics on the wall clock")
    p.add_argument("--bind", default="tcp://127.0.0.1:5555", help="ZeroMQ endpoint to bind")
    p.add_argument("--keys", default=None, help="CurveZMQ key directory (turns encryption on)")
    p.add_argument(
        "--rate", type=positive_float, default=None, help="control rate in Hz (default: task's)"
    )
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--seconds", type=positive_float, default=None, help="stop after S seconds")
    p.add_argument(
        "--watchdog-ms",
        type=positive_float,
        default=100.0,
        help="realtime: no valid command this long -> the safe action",
    )
    p.add_argument(
        "--plan-max-age-ms", type=positive_float, default=None,
        help="realtime: never execute a plan computed from an observation older than this "
             "(default: the watchdog's time; a plan also ends with its own horizon)",
    )
    p.add_argument(
        "--audit", default=None, metavar="FILE",
        help="count at the plant every stale, duplicated or invalid command applied "
             "(hw_bridge.audit) and write the audit, the counters and the safety events to "
             "FILE (JSON) when the server stops",
    )
    _add_rt_priority(p, "this process")
    _target(p, "runtime.cli.serve:cli_serve")


def _add_keys(sp: argparse._SubParsersAction[_Parser]) -> None:
    p = sp.add_parser("keys", help="make CurveZMQ key pairs for an authenticated link")
    p.add_argument("--out", required=True, help="directory for the key files")
    p.add_argument("--client", default="client", help="name of the client key pair to add")
    _target(p, "runtime.cli.keys:cli_keys")


PLANT_SPEC_HELP = (
    "sim:TASK | mjcf:PATH.xml | gym:ENV_ID | py:MODULE:ATTR | py:FILE.py:ATTR"
)


def _add_plant_spec(p: argparse.ArgumentParser, *, served: bool, required: bool = True) -> None:
    """`--plant SPEC` and `--plant-arg KEY=VALUE` (docs/byo.md)."""
    p.add_argument(
        "--plant", required=required,
        help=PLANT_SPEC_HELP + ("" if served else " | tcp://HOST:PORT | ipc://PATH"),
    )
    p.add_argument(
        "--plant-arg", action="append", default=[], metavar="KEY=VALUE",
        help="a keyword argument for the plant (repeatable; VALUE is read as JSON when it "
             "parses, e.g. 3, 0.5, true, [1,2], else as text)",
    )


def _add_policy_spec(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    """`--policy SPEC` and `--policy-arg KEY=VALUE` (docs/byo.md)."""
    p.add_argument(
        "--policy", required=required,
        help="expert | KIND:TASK (shipped checkpoint) | checkpoint dir | py:MODULE:ATTR | "
             "py:FILE.py:ATTR (a Planner, a factory, or a callable state -> action)",
    )
    p.add_argument(
        "--policy-arg", action="append", default=[], metavar="KEY=VALUE",
        help="a keyword argument for a py: policy (repeatable; VALUE read as JSON when it parses)",
    )


def _add_check(sp: argparse._SubParsersAction[_Parser]) -> None:
    p = sp.add_parser("check", help="check a plant or a policy against rtdiff's contracts")
    _add_plant_spec(p, served=True)
    _add_policy_spec(p, required=False)
    p.add_argument("--mode", choices=["lockstep", "realtime"], default="lockstep",
                   help="how to drive the plant (a policy is checked in lockstep)")
    p.add_argument("--rate", type=positive_float, default=None, help="control rate in Hz")
    p.add_argument("--ticks", type=positive_int, default=200, help="lockstep ticks to drive")
    p.add_argument("--seconds", type=positive_float, default=1.0, help="realtime: how long")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _target(p, "runtime.cli.check:cli_check")


def _add_ray(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument(
        "--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
        help=f"run on Ray ({what}): alone, a local instance over this machine's CPUs; "
             "`auto` or HOST:PORT / ray://HOST:PORT joins a cluster (docs/scale.md)",
    )


def _add_eval(sp: argparse._SubParsersAction[_Parser]) -> None:
    p = sp.add_parser("eval", help="lockstep evaluation sweeps (tasks x planners x settings x "
                                   "seeds) into a resumable store, here or on Ray")
    p.add_argument("--tasks", default="double-pendulum", help="comma list")
    p.add_argument("--planners", default="rolling",
                   help="comma list of expert, KIND (= KIND:TASK per task), KIND:TASK or a "
                        "checkpoint dir")
    p.add_argument("--episodes", type=positive_int, default=12, help="seeds per cell")
    p.add_argument("--seed", type=nonnegative_int, default=1000,
                   help="episode i runs on seed SEED + i")
    p.add_argument("--variants", default="renoise",
                   help="comma list of re-noising variants of learned planners: renoise (as "
                        "calibrated), none, blank (restart from noise), decay, shift "
                        "(pivot rules, policies.rolling)")
    p.add_argument("--disturbances", default="default",
                   help="comma list of: default (the task's), pushes (pushes only), none")
    p.add_argument("--push-force", default=None, metavar="LOW,HIGH",
                   help="push force range in N instead of the task's")
    p.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="replace a planner setting of learned planners' checkpoints "
                        "(repeatable)")
    p.add_argument("--steps-per-tick", default="1", help="comma list of refine steps per tick")
    _add_ray(p, "one task per --batch episodes")
    p.add_argument("--store", default=None, metavar="FILE",
                   help="episode store (JSONL) to append to and resume from "
                        "(default runs/eval/episodes.jsonl)")
    p.add_argument("--batch", type=positive_int, default=None,
                   help="episodes per Ray task (default: 1-8, at least 4 tasks per CPU)")
    p.add_argument("--max-retries", type=nonnegative_int, default=3,
                   help="with --ray: runs again of a task whose worker died")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _target(p, "runtime.cli.eval:cli_eval")


def _add_run(sp: argparse._SubParsersAction[_Parser]) -> None:
    p = sp.add_parser("run", help="drive a plant with a planner and report deadlines")
    _add_policy_spec(p)
    _add_plant_spec(p, served=False)
    p.add_argument("--mode", choices=["lockstep", "realtime"], default="lockstep")
    p.add_argument("--rate", type=positive_float, default=None, help="control rate in Hz")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--seconds", type=positive_float, default=None)
    g.add_argument("--episodes", type=positive_int, default=None)
    p.add_argument("--steps-per-tick", type=positive_int, default=None, help="cap on steps")
    p.add_argument("--refine", choices=["sync", "async"], default="sync")
    p.add_argument(
        "--emit-first", action="store_true",
        help="sync: send the action the plan already holds for the tick as soon as the "
             "observation arrives, before the planner observes or steps; then observe and "
             "refine for the ticks to come",
    )
    p.add_argument(
        "--emit-after", type=nonnegative_int, default=None, metavar="N",
        help="sync: send the command after N refine steps, then refine on for later ticks "
             "(0: refine first, send at the end; default: 1 for the rolling planner in "
             "realtime, else 0)",
    )
    p.add_argument(
        "--fallback", choices=["hold", "decay", "zero"], default="hold", help="on a miss"
    )
    p.add_argument("--trace", default=None, help="write the tick trace to this directory")
    p.add_argument(
        "--trace-chunk", type=positive_int, default=1024, metavar="TICKS",
        help="with --trace: records per chunk file (smaller: less lost to a crash, more writes)",
    )
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument(
        "--spin-us", type=nonnegative_float, default=200.0,
        help="realtime: spin (not sleep) the last N us before each tick; a value >= the "
             "period keeps the core busy, and the model in its caches, between ticks",
    )
    p.add_argument(
        "--no-plan-ahead", action="store_true",
        help="realtime: send each command without the planner's plan for the next ticks "
             "(by default a plant that executes plans applies it when a command is late)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--rt-priority", type=positive_int, default=None, metavar="P",
        help="SCHED_FIFO priority (1-99); realtime runs ask for priority "
             f"{DEFAULT_RT_PRIORITY} by default where the OS allows it (Linux with "
             "CAP_SYS_NICE or an rtprio limit) and say what they got",
    )
    p.add_argument("--no-rt", action="store_true", help="do not ask for SCHED_FIFO")
    p.add_argument(
        "--ready-file", default=None, metavar="PATH",
        help="write PATH once the loop is ticking (for a supervisor, e.g. `bench stalls`)",
    )
    _target(p, "runtime.cli.run:cli_run")


def _add_bench(sp: argparse._SubParsersAction[_Parser]) -> None:
    p = sp.add_parser("bench", help="benchmarks: tick | bridge | deadline | stalls | soak | "
                                    "flood | kills | faults | fuzz | ddp | eval | "
                                    "paradigms | amortize | pivot")
    bp = p.add_subparsers(dest="bench",
                          metavar="{tick,bridge,deadline,stalls,soak,flood,kills,faults,fuzz,ddp,"
                                  "eval,paradigms,amortize,pivot}",
                          parser_class=_Parser)
    bp.required = True

    t = bp.add_parser("tick", help="Python tick-loop jitter with a synthetic planner")
    t.add_argument("--rate", type=positive_float, default=1000.0, help="tick rate in Hz")
    t.add_argument("--seconds", type=positive_float, default=10.0, help="per variant")
    t.add_argument("--step-us", type=positive_float, default=50.0, help="mean synthetic step cost")
    t.add_argument(
        "--tail-prob", type=float, default=0.01, help="probability of a heavy-tail step"
    )
    t.add_argument("--tail-x", type=positive_float, default=4.0, help="tail step = x * mean")
    t.add_argument("--budget-fraction", type=fraction, default=0.6, help="of the period")
    t.add_argument(
        "--variants",
        default="sleep+gc,sleep+frozen,spin+gc,spin+frozen",
        help="comma list of {sleep,spin}+{gc,frozen}[+async]",
    )
    t.add_argument(
        "--switch-us", type=positive_float, default=None,
        help="sys.setswitchinterval for the run (GIL hand-off period, us)",
    )
    t.add_argument("--spin-us", type=positive_float, default=300.0, help="spin window")
    t.add_argument(
        "--heap-objects",
        type=nonnegative_int,
        default=1_000_000,
        help="long-lived objects built first (stands in for torch+mujoco's heap)",
    )
    t.add_argument("--seed", type=nonnegative_int, default=0)
    t.add_argument("--json", action="store_true")
    _add_results(t)
    _target(t, "runtime.cli.bench_tick:cli_bench_tick")

    b = bp.add_parser("bridge", help="bridge round trip vs bare pyzmq+msgpack")
    b.add_argument("--seconds", type=positive_float, default=5.0)
    b.add_argument("--json", action="store_true")
    b.add_argument("--mlock", action="store_true",
                   help="lock each process's memory (mlockall) before measuring")
    b.add_argument("--pin", action="store_true",
                   help="pin the plant server and the client to different CPUs")
    _add_rt_priority(b, "both ends")
    _target(b, "runtime.cli.bench_bridge:cli_bench_bridge")

    d = bp.add_parser("deadline", help="planners x rates in realtime over the bridge")
    d.add_argument("--out", default="runs/deadline", help="run directory to write")
    d.add_argument("--tasks", default="double-pendulum,bimodal", help="comma list")
    d.add_argument("--plant", default=None, metavar="SPEC",
                   help="instead of --tasks: any plant rtdiff serve takes (mjcf:, gym:, py:)")
    d.add_argument("--plant-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument for --plant (repeatable)")
    d.add_argument("--rates", default="50,100,250,500", help="comma list of Hz")
    d.add_argument(
        "--planners",
        default="rolling,chunked,chunked-k10,chunked-k50,chunked-async,pertick,mlp,expert",
        help="comma list of: rolling, rolling-late (refines then sends), rolling-first (sends "
             "the plan's action before any step), rolling-async, "
             "chunked, chunked-k10, chunked-k50, chunked-async, pertick, mlp, expert, or any "
             "policy spec (py:..., KIND:TASK, a checkpoint directory)",
    )
    d.add_argument("--seeds", type=positive_int, default=2, help="seeds per cell")
    d.add_argument("--seed", type=nonnegative_int, default=0, help="first seed")
    d.add_argument("--seconds", type=positive_float, default=5.0, help="per run")
    d.add_argument("--hog", action="store_true", help="repeat rolling with a CPU hog")
    _add_rt_priority(d, "controller and plant (the plant one level higher)")
    d.add_argument("--json", action="store_true")
    _add_ray(d, "each cell (served plant + controller) is a Ray task holding 2 CPUs, so no "
                "two cells share cores")
    _add_results(d)
    _target(d, "runtime.cli.bench_deadline:cli_bench_deadline")

    ev = bp.add_parser("eval", help="lockstep evaluation throughput: 2 Ray workers and 1 vs "
                                    "this process, and Ray's overhead per episode")
    ev.add_argument("--task", default="double-pendulum")
    ev.add_argument("--planner", default="rolling",
                    help="an `rtdiff eval` planner: expert, KIND, KIND:TASK, a checkpoint dir")
    ev.add_argument("--episodes", type=positive_int, default=20, help="per mode and round")
    ev.add_argument("--rounds", type=positive_int, default=1,
                    help="repeat the three modes, alternating their order")
    ev.add_argument("--seed", type=nonnegative_int, default=0)
    ev.add_argument("--batch", type=positive_int, default=1, help="episodes per Ray task")
    ev.add_argument("--json", action="store_true")
    _add_results(ev)
    _target(ev, "runtime.cli.eval:cli_bench_eval")

    s = bp.add_parser("stalls", help="stop the controller on purpose; what the plant applied")
    s.add_argument("--task", default="double-pendulum")
    s.add_argument("--rate", type=positive_float, default=None, help="plant rate (Hz)")
    s.add_argument("--planners", default="rolling,expert,mlp",
                   help="comma list of `bench deadline` planners without overrides (rolling, "
                        "rolling-late, rolling-async, chunked, chunked-async, pertick, mlp, "
                        "expert) or any `rtdiff run --policy` (KIND:TASK, a checkpoint dir)")
    s.add_argument("--stall-ms", default="5,20,50,80,100,200",
                   help="comma list of stall lengths in ms (0: no injection, the host only)")
    s.add_argument("--every-s", type=positive_float, default=0.25,
                   help="one stall every this many seconds (with --quota: the cgroup period)")
    s.add_argument("--plan-ahead", choices=["on", "off", "both"], default="both")
    s.add_argument("--quota", type=positive_float, default=None, metavar="PCT",
                   help="instead of SIGSTOP: limit the controller to PCT %% of a CPU per "
                        "period with the cpu cgroup's bandwidth limit (no SCHED_FIFO then)")
    s.add_argument("--seconds", type=positive_float, default=20.0, help="per run")
    s.add_argument("--seeds", type=positive_int, default=3, help="seeds per cell")
    s.add_argument("--seed", type=nonnegative_int, default=0, help="first seed")
    s.add_argument("--out", default="runs/stalls", help="run directory to write")
    s.add_argument("--rt-priority", type=positive_int, default=DEFAULT_RT_PRIORITY, metavar="P",
                   help="SCHED_FIFO priority of the controllers (the plant one level higher)")
    s.add_argument("--no-rt", action="store_true", help="do not ask for SCHED_FIFO")
    s.add_argument("--json", action="store_true")
    _add_results(s)
    _target(s, "runtime.cli.bench_stalls:cli_bench_stalls")

    k = bp.add_parser("soak", help="one controller on a served plant for a long time: "
                                   "memory, misses per minute, trace records")
    k.add_argument("--minutes", type=positive_float, default=60.0, help="length of the run")
    k.add_argument("--rate", type=positive_float, default=None, help="plant rate (Hz)")
    k.add_argument("--task", default="double-pendulum")
    k.add_argument("--planner", default="rolling",
                   help="a `bench deadline` planner without overrides or any `rtdiff run "
                        "--policy` (KIND:TASK, a checkpoint dir)")
    k.add_argument("--seed", type=nonnegative_int, default=0)
    k.add_argument("--sample-s", type=positive_float, default=2.0,
                   help="read RSS, CPU time and steal every this many seconds")
    k.add_argument("--out", default=None,
                   help="run directory to write, fresh (default: runs/soak/UTC-TIME)")
    k.add_argument("--rt-priority", type=positive_int, default=DEFAULT_RT_PRIORITY, metavar="P",
                   help="SCHED_FIFO priority of the controller (the plant one level higher)")
    k.add_argument("--no-rt", action="store_true", help="do not ask for SCHED_FIFO")
    k.add_argument("--json", action="store_true")
    _add_results(k)
    _target(k, "runtime.cli.bench_soak:cli_bench_soak")

    f = bp.add_parser("flood", help="hostile local peers against a served plant while a "
                                    "controller runs: misses, server memory and CPU")
    f.add_argument("--peers", type=positive_int, default=50, help="hostile peers")
    f.add_argument("--kinds", default="hello,garbage,slow,identities,commands",
                   help="comma list of peer kinds, dealt to the peers in turn: hello, garbage, "
                        "slow, identities, commands")
    f.add_argument("--procs", type=positive_int, default=None,
                   help="flooder processes the peers are split over (default: 2-4)")
    f.add_argument("--peer-rate", type=nonnegative_float, default=0.0, metavar="HZ",
                   help="frames per second per peer at most (0: as fast as they go)")
    f.add_argument("--rate", type=positive_float, default=100.0, help="plant rate (Hz)")
    f.add_argument("--task", default="double-pendulum")
    f.add_argument("--planner", default="expert",
                   help="the controller: a `bench deadline` planner without overrides or any "
                        "`rtdiff run --policy` (KIND:TASK, a checkpoint dir)")
    f.add_argument("--seconds", type=positive_float, default=10.0, help="per cell")
    f.add_argument("--seed", type=nonnegative_int, default=0)
    f.add_argument("--out", default="runs/flood", help="run directory to write")
    f.add_argument("--rt-priority", type=positive_int, default=DEFAULT_RT_PRIORITY, metavar="P",
                   help="SCHED_FIFO priority of the controller (the plant one level higher)")
    f.add_argument("--no-rt", action="store_true", help="do not ask for SCHED_FIFO")
    f.add_argument("--json", action="store_true")
    _add_results(f)
    _target(f, "runtime.cli.bench_flood:cli_bench_flood")

    kl = bp.add_parser("kills", help="kill -9 the controller or the plant server at random "
                                     "moments; safe action, regained control, traces")
    kl.add_argument("--kills", type=positive_int, default=100,
                    help="kills in all, dealt in turn over --targets")
    kl.add_argument("--targets", default="controller,server",
                    help="comma list of: controller, server")
    kl.add_argument("--rate", type=positive_float, default=100.0, help="plant rate (Hz)")
    kl.add_argument("--task", default="double-pendulum")
    kl.add_argument("--planner", default="rolling",
                    help="a `bench deadline` planner without overrides or any `rtdiff run "
                         "--policy` (KIND:TASK, a checkpoint dir)")
    kl.add_argument("--seed", type=nonnegative_int, default=0,
                    help="seeds the kill moments and restart delays (and the runs)")
    kl.add_argument("--delay-s", type=positive_float, default=2.0,
                    help="each kill comes at a random moment 0.3 s to this long after "
                         "control was (re)gained")
    kl.add_argument("--restart-s", type=positive_float, default=1.0,
                    help="a killed server is restarted after a random delay up to this long")
    kl.add_argument("--trace-chunk", type=positive_int, default=8,
                    help="trace chunk size of the controllers (ticks; small: frequent writes)")
    kl.add_argument("--watchdog-ms", type=positive_float, default=100.0,
                    help="the plant server's watchdog")
    kl.add_argument("--out", default=None,
                    help="run directory to write, fresh (default: runs/kills/UTC-TIME)")
    kl.add_argument("--rt-priority", type=positive_int, default=DEFAULT_RT_PRIORITY,
                    metavar="P",
                    help="SCHED_FIFO priority of the controllers (the plant one level higher)")
    kl.add_argument("--no-rt", action="store_true", help="do not ask for SCHED_FIFO")
    kl.add_argument("--json", action="store_true")
    _add_results(kl)
    _target(kl, "runtime.cli.bench_kills:cli_bench_kills")

    lf = bp.add_parser("faults", help="link faults between controller and plant (a fault "
                                      "proxy): what the plant applied, safe action, regain")
    lf.add_argument("--faults", default=None,
                    help="comma list of: none, delay, loss-up, loss-down, dup-up, dup-down, "
                         "reorder-up, reorder-down, bandwidth, partition (default: all)")
    lf.add_argument("--rates", default="100,500", help="comma list of plant rates (Hz)")
    lf.add_argument("--planners", default="expert,rolling",
                    help="comma list of `bench deadline` planners without overrides or any "
                         "`rtdiff run --policy` (KIND:TASK, a checkpoint dir)")
    lf.add_argument("--task", default="double-pendulum")
    lf.add_argument("--seconds", type=positive_float, default=10.0, help="per run")
    lf.add_argument("--seeds", type=positive_int, default=1, help="seeds per cell")
    lf.add_argument("--seed", type=nonnegative_int, default=0,
                    help="first seed (the runs' and the proxy's)")
    lf.add_argument("--watchdog-ms", type=positive_float, default=100.0,
                    help="the served plant's watchdog")
    lf.add_argument("--out", default="runs/faults", help="run directory to write")
    lf.add_argument("--rt-priority", type=positive_int, default=DEFAULT_RT_PRIORITY, metavar="P",
                    help="SCHED_FIFO priority of the controller (plant and proxy one level "
                         "higher)")
    lf.add_argument("--no-rt", action="store_true", help="do not ask for SCHED_FIFO")
    lf.add_argument("--json", action="store_true")
    _add_results(lf)
    _target(lf, "runtime.cli.bench_faults:cli_bench_faults")

    fz = bp.add_parser("fuzz", help="coverage-guided fuzzing of the bridge (atheris): codec, "
                                    "server and client targets")
    fz.add_argument("--messages", type=positive_int, default=100_000, metavar="N",
                    help="fuzz inputs per target (each a short sequence of frames)")
    fz.add_argument("--seed", type=nonnegative_int, default=0, help="libFuzzer's seed")
    fz.add_argument("--target", default="codec,server,client",
                    help="comma list of: codec, server, client")
    fz.add_argument("--max-seconds", type=positive_float, default=None, metavar="S",
                    help="stop each target after S seconds even if N inputs were not run")
    fz.add_argument("--out", default="runs/fuzz",
                    help="run directory: corpus, crash inputs, logs, summary.json")
    fz.add_argument("--json", action="store_true")
    _add_results(fz)
    _target(fz, "runtime.cli.bench_fuzz:cli_bench_fuzz")

    dd = bp.add_parser("ddp", help="training samples/s of N DDP processes against one")
    dd.add_argument("--nproc", type=positive_int, default=2, help="processes of the DDP run")
    dd.add_argument("--policy", choices=["rolling", "chunked", "pertick", "mlp"],
                    default="rolling")
    dd.add_argument("--steps", type=positive_int, default=200, help="optimizer steps per run")
    dd.add_argument("--batch", type=positive_int, default=256, help="global batch (windows)")
    dd.add_argument("--data", default=None,
                    help="dataset directory (default: a synthetic 6-D state, 2-D action one)")
    dd.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    dd.add_argument("--seed", type=nonnegative_int, default=0)
    dd.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                    help="a `rtdiff train --set` setting for both runs (repeatable)")
    dd.add_argument("--json", action="store_true")
    _add_results(dd)
    _target(dd, "runtime.cli.bench_ddp:cli_bench_ddp")

    pa = bp.add_parser("paradigms", help="planner paradigms (dllm, ar, rolling, chunked, mlp, "
                                         "expert) on the same tasks, seeds and clock")
    pa.add_argument("--tasks", default="double-pendulum,reacher-moving",
                    help="comma list of tasks (or plant specs: mjcf:, gym:, py:)")
    pa.add_argument("--plant-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="a keyword argument for every task's plant (repeatable)")
    pa.add_argument("--planners", default="dllm,ar,rolling,chunked,mlp,expert",
                    help="comma list of KIND (= KIND:TASK per task), `bench deadline` names, "
                         "expert, or any policy spec (KIND:TASK, a checkpoint dir, py:...)")
    pa.add_argument("--episodes", type=positive_int, default=10,
                    help="lockstep episodes per cell (seeds SEED, SEED+1, ...)")
    pa.add_argument("--seed", type=nonnegative_int, default=1000, help="first seed")
    pa.add_argument("--steps-per-tick", type=positive_int, default=1,
                    help="lockstep refine steps per tick (more for a planner that declares "
                         "steps_per_decision)")
    pa.add_argument("--whole-plan", action="store_true",
                    help="every decision delivers the whole plan, not just the next action "
                         "(ar decodes every plan sub-token a tick)")
    pa.add_argument("--scaling-horizons", default="", metavar="H,...",
                    help="also time dllm against whole-plan ar at these horizons (fresh "
                         "weights, the first task's sizes)")
    pa.add_argument("--scaling-ticks", type=positive_int, default=100,
                    help="with --scaling-horizons: lockstep ticks per model")
    pa.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    pa.add_argument("--realtime", action="store_true",
                    help="also run each planner in realtime over the bridge at the task's rate "
                         "and at --rates")
    pa.add_argument("--rates", default="250,500", help="with --realtime: comma list of Hz")
    pa.add_argument("--seconds", type=positive_float, default=5.0,
                    help="with --realtime: per run")
    _add_rt_priority(pa, "the realtime runs' controller and plant (the plant one level higher)")
    pa.add_argument("--out", default="runs/paradigms", help="directory for summary.json")
    pa.add_argument("--markdown", default=None, metavar="FILE", help="write the table here")
    pa.add_argument("--plot", default=None, metavar="FILE",
                    help="success against end-to-end time per planner (PNG)")
    pa.add_argument("--json", action="store_true")
    _add_results(pa)
    _target(pa, "runtime.cli.bench_paradigms:cli_bench_paradigms")

    pv = bp.add_parser("pivot", help="the rolling planner's pivot rules against keeping the "
                                     "plan and a blank slate, push by push")
    pv.add_argument("--tasks", default="double-pendulum,bimodal,reacher-moving",
                    help="comma list")
    pv.add_argument("--pivots", default="uniform,keep,blank,decay,shift",
                    help="comma list of rules: uniform (re-noise every token, as calibrated), "
                         "keep (never on surprise), blank (restart from noise), decay, shift")
    pv.add_argument("--planner", default="rolling",
                    help="KIND (= KIND:TASK per task), KIND:TASK or a rolling checkpoint dir")
    pv.add_argument("--episodes", type=positive_int, default=20,
                    help="lockstep episodes per task and rule (seeds SEED, SEED+1, ...)")
    pv.add_argument("--seed", type=nonnegative_int, default=6000,
                    help="first seed (default: a range no dataset or earlier study used)")
    pv.add_argument("--disturbances", default="default",
                    help="default (the task's), pushes (pushes only) or none")
    pv.add_argument("--push-force", default=None, metavar="LOW,HIGH",
                    help="push force range in N instead of the task's")
    pv.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                    help="replace a planner setting of the checkpoint for every rule "
                         "(repeatable; not pivot: that is --pivots)")
    pv.add_argument("--steps-per-tick", type=positive_int, default=1,
                    help="lockstep refine steps per tick")
    pv.add_argument("--store", default=None, metavar="FILE",
                    help="episode store (JSONL) to append to and resume from (default: a "
                         "temporary one, every episode run now)")
    _add_ray(pv, "a cell's episodes spread over workers")
    pv.add_argument("--batch", type=positive_int, default=None,
                    help="episodes per Ray task (default: 1-8, at least 4 tasks per CPU)")
    pv.add_argument("--markdown", default=None, metavar="FILE", help="write the table here")
    pv.add_argument("--json", action="store_true", help="print one JSON object")
    _add_results(pv)
    _target(pv, "runtime.cli.bench_pivot:cli_bench_pivot")

    am = bp.add_parser("amortize", help="the rolling planner's few steps a tick against the "
                                        "chunked sampler's many steps a decision, lockstep and "
                                        "realtime")
    am.add_argument("--task", default="swerve", help="a built-in task with chunked and rolling "
                                                     "checkpoints")
    am.add_argument("--episodes", type=positive_int, default=10,
                    help="lockstep episodes per row (seeds SEED, SEED+1, ...)")
    am.add_argument("--seed", type=nonnegative_int, default=1000, help="first seed")
    am.add_argument("--offline-steps", default="1,2,5,10,20,50", metavar="K,...",
                    help="flow steps per chunk of the chunked checkpoint's offline rows "
                         "(empty: none)")
    am.add_argument("--rolling-steps", default="1,2,4", metavar="S,...",
                    help="refine steps per tick of the rolling planner's lockstep rows "
                         "(empty: none)")
    am.add_argument("--rolling", default="rolling", metavar="POLICY,...",
                    help="rolling planners of the rolling and realtime rows (KIND = KIND:TASK, "
                         "a spec or a checkpoint dir)")
    am.add_argument("--chunked", default="chunked", metavar="POLICY",
                    help="the chunked model of the offline rows")
    am.add_argument("--big", default=None, metavar="POLICY",
                    help="the big model run in realtime (a policy spec or checkpoint dir; "
                         "default policies/checkpoints/chunked-big-TASK when it exists)")
    am.add_argument("--big-steps", default=None, metavar="K,...",
                    help="the big model's flow steps per chunk, one offline and one realtime "
                         "row each (default: its checkpoint's)")
    am.add_argument("--seconds", type=positive_float, default=60.0,
                    help="per realtime run")
    am.add_argument("--no-realtime", action="store_true", help="lockstep rows only")
    am.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    _add_rt_priority(am, "the realtime runs' controller and plant (the plant one level higher)")
    am.add_argument("--markdown", default=None, metavar="FILE", help="write the table here")
    am.add_argument("--plot", default=None, metavar="FILE",
                    help="success against mean compute per tick, log x (PNG)")
    am.add_argument("--json", action="store_true")
    _add_results(am)
    _target(am, "runtime.cli.bench_amortize:cli_bench_amortize")


def _add_trace(sp: argparse._SubParsersAction[_Parser]) -> None:
    p = sp.add_parser("trace", help="tick traces: export")
    tp = p.add_subparsers(dest="trace_command", metavar="{export}", parser_class=_Parser)
    tp.required = True
    e = tp.add_parser("export", help="a trace as MCAP (JSON messages) for Foxglove Studio")
    e.add_argument("run_dir", metavar="RUN_DIR", help="trace directory (rtdiff run --trace DIR)")
    e.add_argument("--mcap", required=True, metavar="OUT.mcap", help="MCAP file to write")
    e.add_argument("--force", action="store_true", help="replace OUT.mcap if it exists")
    _target(e, "runtime.cli.trace_export:cli_trace_export")


def _add_report(sp: argparse._SubParsersAction[_Parser]) -> None:
    p = sp.add_parser("report", help="plots and a markdown table from recorded runs")
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?", default=None,
                   help="directory with runs/*.json (+ traces)")
    p.add_argument("--out", default=None,
                   help="directory for the PNGs and report.md (with --benchmarks: the page "
                        "to write, default docs/benchmarks.md)")
    p.add_argument("--benchmarks", action="store_true",
                   help="generate the benchmarks page from the recorded results instead")
    p.add_argument("--results", default="benchmarks/results",
                   help="with --benchmarks: the result files' directory")
    p.add_argument("--check", action="store_true",
                   help="with --benchmarks: fail (exit 1) if the page differs from the results")
    _target(p, "runtime.cli.report:cli_report")


def _add_demo(sp: argparse._SubParsersAction[_Parser]) -> None:
    p = sp.add_parser("demo", help="the main job end to end (what `make demo` runs)")
    p.add_argument("--episodes", type=positive_int, default=2, help="per planner (10 s each)")
    p.add_argument("--bench-seconds", type=positive_float, default=2.0, help="per variant")
    p.add_argument("--out", default="runs/demo", help="where runs and the report go")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument(
        "--fast-rate", type=nonnegative_float, default=500.0,
        help="also run the rolling planner with the plant served at this rate (0: skip)",
    )
    p.add_argument(
        "--stall-ms", type=nonnegative_float, default=50.0,
        help="also run the rolling planner stopped this long every second, plan-ahead on and "
             "off (0: skip)",
    )
    _add_rt_priority(p, "controller and plant (the plant one level higher)", default=10)
    p.add_argument("--no-rt", action="store_true", help="do not ask for SCHED_FIFO")
    _add_results(p)
    _target(p, "runtime.cli.demo:cli_demo")


def build_parser() -> _Parser:
    parser = _Parser(prog="rtdiff", description=__doc__.split("\n")[0] if __doc__ else None)
    sp = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sp.required = True
    for add in (
        _add_tasks, _add_collect, _add_train, _add_serve, _add_keys, _add_run, _add_eval,
        _add_bench,
        _add_report, _add_demo, _add_trace, _add_check,
    ):
        add(sp)
    return parser


def _resolve(target: str) -> Callable[[argparse.Namespace], int]:
    module_name, func_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
        func: Callable[[argparse.Namespace], int] = getattr(module, func_name)
    except (ImportError, AttributeError) as exc:
        raise CliError(f"this build of rtdiff cannot run it yet ({target}: {exc})") from exc
    return func


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(_resolve(args._target)(args) or 0)
    except CliError as exc:
        sys.stderr.write(f"rtdiff {args.command}: error: {exc}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"rtdiff {args.command}: interrupted\n")
        return 130
    except ModuleNotFoundError as exc:
        extra = EXTRA_OF.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        sys.stderr.write(
            f"rtdiff {args.command}: error: this needs {exc.name}, which is not installed "
            f"(pip install 'rtdiff[{extra}]')\n"
        )
        return 2


# the optional packages and the install extra that brings each (pyproject.toml)
EXTRA_OF = {
    "mujoco": "sim", "gymnasium": "sim", "gymnasium_robotics": "sim", "minari": "sim",
    "h5py": "sim", "torch": "learn", "safetensors": "learn", "matplotlib": "learn",
    "dynamixel_sdk": "dynamixel", "mcap": "trace", "ray": "scale",
}


if __name__ == "__main__":
    raise SystemExit(main())
