"""`rtdiff train`: `policies.train` does the work; its `TrainError` is the one-line CLI error.

With `--nproc N` (N > 1) or `--nnodes M` the command starts itself again under torchrun
(`python -m torch.distributed.run ... -m runtime.cli train ...`, the same arguments without the
launcher's), one process per rank; each rank trains with DistributedDataParallel
(`policies.train`). With `--nproc 1` and no `--nnodes` it is the plain single process.

The launcher and its ranks agree on two things through the environment: `RTDIFF_TRAIN_ERRORS`
is a directory where a rank that fails writes its one-line error (`rank-R.json`), and
`RTDIFF_TRAIN_COMMAND` is the command the user ran, which rank 0 records in the checkpoint.
Rank 0's progress lines go through as they come; torchrun's own log is kept back and shown
only as far as a failure needs: a failing rank makes the command exit 2 with that rank's
one-line error (when no rank could say, torchrun's last error line and where its whole log
was saved).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import deque
from pathlib import Path

from policies.train import (
    COMMAND_ENV,
    Ranks,
    TrainConfig,
    TrainError,
    check_world,
    parse_settings,
    train_from_args,
)
from runtime.cli import CliError

ERRORS_ENV = "RTDIFF_TRAIN_ERRORS"
LAUNCH_OPTIONS = ("nproc", "nnodes", "rdzv_endpoint", "node_rank")
PROGRESS = "rtdiff train: "  # rank 0's progress lines start so (`policies.train._progress`)


def cli_train(args: argparse.Namespace) -> int:
    if launches_torchrun(args):
        return launch(args)
    try:
        code = train_from_args(args)
    except TrainError as exc:
        _note_rank_error(str(exc), user=True)
        raise CliError(str(exc)) from None
    except Exception as exc:
        _note_rank_error(f"{type(exc).__name__}: {_first_line(exc)}", user=False)
        raise
    if Ranks.from_env() is not None:
        # A rank whose work is done (its group torn down, rank 0's checkpoint written) leaves
        # at once: at interpreter exit gloo's threads now and then still ran into torch's
        # static teardown and aborted the process ("terminate called without an active
        # exception"), which torchrun reports as a failed job.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def launches_torchrun(args: argparse.Namespace) -> bool:
    """Whether `args` ask for a torchrun job: more than one process here, or any of the
    multi-node options (`check_launch` refuses them without --nnodes)."""
    nproc = int(getattr(args, "nproc", 1) or 1)
    return nproc > 1 or any(getattr(args, k, None) is not None for k in LAUNCH_OPTIONS[1:])


def check_launch(args: argparse.Namespace) -> int:
    """Check the launcher's options; the world size (processes over all nodes), or CliError."""
    if Ranks.from_env() is not None:
        raise CliError("--nproc/--nnodes inside a torchrun job: run plain `rtdiff train` there")
    nnodes = args.nnodes or 1
    if args.nnodes is None and (args.rdzv_endpoint or args.node_rank is not None):
        raise CliError("--rdzv-endpoint and --node-rank go with --nnodes")
    if nnodes > 1 and not args.rdzv_endpoint:
        raise CliError(
            f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (the same on every node)"
        )
    if args.rdzv_endpoint:
        host, sep, port = str(args.rdzv_endpoint).rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise CliError(f"--rdzv-endpoint {args.rdzv_endpoint!r}: expected HOST:PORT")
    if args.node_rank is not None and args.node_rank >= nnodes:
        raise CliError(f"--node-rank {args.node_rank} is not in [0, --nnodes {nnodes})")
    world = int(args.nproc) * nnodes
    try:
        _, train_set, _ = parse_settings(args.settings or [], args.policy)
        batch = int(train_set.get("batch_size", TrainConfig.batch_size))
        if args.device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise TrainError("--device cuda asked for, but torch sees no CUDA device")
        check_world(world, device=args.device, batch_size=batch, local_size=args.nproc)
    except (TrainError, ValueError) as exc:
        raise CliError(str(exc)) from None
    return world


def rank_argv(args: argparse.Namespace) -> list[str]:
    """The `train` arguments each rank runs: those given, less the launcher's own."""
    from runtime.cli import build_parser

    parser = build_parser()
    sub = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    ).choices["train"]
    out = ["train"]
    for action in sub._actions:
        if not action.option_strings or action.dest in (*LAUNCH_OPTIONS, "help"):
            continue
        value = getattr(args, action.dest, None)
        if value is None or value == action.default:
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse._AppendAction):
            for item in value:
                out += [flag, str(item)]
        elif isinstance(action, argparse._StoreTrueAction):
            out.append(flag)
        else:
            out += [flag, str(value)]
    return out


def torchrun_argv(args: argparse.Namespace) -> list[str]:
    """`python -m torch.distributed.run ...` for `args`: standalone on one node; with an
    endpoint a c10d rendezvous (node ranks by arrival) or, with --node-rank, a static one."""
    cmd = [sys.executable, "-m", "torch.distributed.run",
           "--nproc-per-node", str(args.nproc), "--nnodes", str(args.nnodes or 1)]
    if args.rdzv_endpoint is None:
        cmd.append("--standalone")
    elif args.node_rank is None:
        cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", args.rdzv_endpoint,
                "--rdzv-id", "rtdiff-train"]
    else:
        cmd += ["--rdzv-backend", "static", "--rdzv-endpoint", args.rdzv_endpoint,
                "--node-rank", str(args.node_rank)]
    return [*cmd, "--max-restarts", "0", "-m", "runtime.cli", *rank_argv(args)]


def launch(args: argparse.Namespace) -> int:
    """Run the torchrun job; 0 when every rank finished, else CliError with the first failing
    rank's one-line error."""
    world = check_launch(args)
    command = "rtdiff " + " ".join(rank_argv(args))
    for name in LAUNCH_OPTIONS:
        value = getattr(args, name)
        if value is not None and not (name == "nproc" and value == 1):
            command += f" --{name.replace('_', '-')} {value}"
    errors = Path(tempfile.mkdtemp(prefix="rtdiff-train-ranks-"))
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, without its warning banner
    env[ERRORS_ENV], env[COMMAND_ENV] = str(errors), command
    sys.stderr.write(f"{PROGRESS}{world} processes ({args.nproc} here) under torchrun\n")
    sys.stderr.flush()
    log: deque[str] = deque(maxlen=400)
    proc = subprocess.Popen(torchrun_argv(args), env=env, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        for line in proc.stderr:
            if line.startswith(PROGRESS) and not line.startswith(PROGRESS + "error:"):
                sys.stderr.write(line)
                sys.stderr.flush()
            else:
                log.append(line)
        code = proc.wait()
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    try:
        if code == 0:
            return 0
        failed = _rank_errors(errors)
        user = [f for f in failed if f[2]]
        if user:  # a request the trainer refused: its own one line says it all
            raise CliError(f"rank {user[0][0]}: {user[0][1]}")
        saved = _save_log(log)
        said = {rank: message for rank, message, _ in failed}
        root = _root_cause(log)  # torchrun's first failed rank (others may fail after it)
        if root is not None:
            rank, how = root
            raise CliError(f"rank {rank}: {said.get(rank, how)} (torchrun's log: {saved})")
        if failed:
            raise CliError(f"rank {failed[0][0]}: {failed[0][1]} (torchrun's log: {saved})")
        raise CliError(f"torchrun exited with {code}: {_last_error(log)} (its log: {saved})")
    finally:
        for f in errors.glob("*"):
            f.unlink()
        errors.rmdir()


def _note_rank_error(message: str, *, user: bool) -> None:
    """Inside a launched rank: leave its one-line error where the launcher looks."""
    where = os.environ.get(ERRORS_ENV)
    ranks = Ranks.from_env() if where else None
    if where is None or ranks is None:
        return
    record = {"rank": ranks.rank, "message": message, "user": user}
    try:
        (Path(where) / f"rank-{ranks.rank}.json").write_text(json.dumps(record))
    except OSError:
        pass  # the launcher then reports torchrun's own error


def _rank_errors(errors: Path) -> list[tuple[int, str, bool]]:
    """(rank, message, a user error?) of every rank that wrote one, lowest rank first."""
    out = []
    for f in errors.glob("rank-*.json"):
        try:
            rec = json.loads(f.read_text())
            out.append((int(rec["rank"]), str(rec["message"]), bool(rec["user"])))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(out)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_ERROR_LINE = re.compile(r"^\s*[\w.]*(Error|Exception)\b.*\S")


def _last_error(log: deque[str]) -> str:
    """The last line of torchrun's log that names an error, else its last non-empty line."""
    lines = [s.strip() for s in log if s.strip() and set(s.strip()) - set("=-*")]
    for line in reversed(lines):
        if _ERROR_LINE.match(line):
            return line
    return lines[-1] if lines else "no output"


def _root_cause(log: deque[str]) -> tuple[int, str] | None:
    """(rank, how it ended) of the "Root Cause" in torchrun's failure summary, if there is one."""
    lines = list(log)
    starts = [i for i, s in enumerate(lines) if s.startswith("Root Cause")]
    if not starts:
        return None
    rank, how = None, ""
    for line in lines[starts[-1]:]:
        key, sep, value = line.strip().partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "rank" and value.split()[0].isdigit():
            rank = int(value.split()[0])
        elif key == "exitcode" and not how:
            how = f"exited with {value}"
        elif key == "traceback" and value not in ("", "<N/A>") and "enable traceback" not in value:
            how = value
    return None if rank is None else (rank, how or "failed")


def _save_log(log: deque[str]) -> str:
    fd, path = tempfile.mkstemp(prefix="rtdiff-train-torchrun-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.writelines(log)
    return path
