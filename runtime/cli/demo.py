"""`rtdiff demo` (`make demo`): the most complete real path that exists, end to end.

1. `rtdiff bench tick` for a few seconds per variant: how precisely this machine keeps 1 kHz.
2. The double-pendulum on a real MuJoCo plant in realtime mode, in-process, at 100 Hz.
3. The same over the ZeroMQ bridge: `rtdiff serve --realtime` in its own process on loopback,
   the controller in this one; the plant's own late-command count beside the controller's.
4. Every shipped learned planner for the double-pendulum (`policies/checkpoints/`), the same way.

Each row is a real run; the table is printed and the JSON of every run is written to
`--out` (default `runs/demo/`).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from runtime.cli import CliError

TASK = "double-pendulum"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_args(policy: str, plant: str, seconds: float, seed: int) -> argparse.Namespace:
    """`rtdiff run` arguments, parsed by the real parser so that defaults stay in one place."""
    from runtime.cli import build_parser

    return build_parser().parse_args(
        ["run", "--policy", policy, "--plant", plant, "--mode", "realtime",
         "--seconds", f"{seconds:g}", "--seed", str(seed), "--json"]
    )


def _shipped_policies() -> list[str]:
    try:
        from policies import shipped_policies
    except ImportError:
        return []
    return [name for name in shipped_policies() if name.endswith(f":{TASK}")]


def _row(name: str, out: dict[str, Any]) -> str:
    lat, comp = out["lateness_ms"], out["compute_ms"]
    plant = out.get("plant_misses", "-")
    return (f"{name:<34}{out['ticks']:>7}{out['misses']:>8}{plant:>8}{100 * out['miss_rate']:>9.3f}"
            f"{lat['p99']:>10.3f}{comp['p99']:>10.3f}{out['episodes']:>6}"
            + (f"{100 * out['success_rate']:>9.1f}" if out["episodes"] else f"{'-':>9}"))


def cli_demo(args: argparse.Namespace) -> int:
    from runtime.cli.bench_tick import cli_bench_tick
    from runtime.cli.run import execute

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    print("== 1/4  tick-loop jitter at 1 kHz (rtdiff bench tick) ==", flush=True)
    from runtime.cli import build_parser

    bench = build_parser().parse_args(
        ["bench", "tick", "--rate", "1000", "--seconds", f"{args.bench_seconds:g}",
         "--variants", "sleep+gc,spin+frozen", "--heap-objects", "500000",
         "--seed", str(args.seed)]
    )
    cli_bench_tick(bench)

    rows: dict[str, dict[str, Any]] = {}
    print(f"\n== 2/4  expert on an in-process MuJoCo {TASK}, realtime ==", flush=True)
    _, rows["expert  sim (in-process)"] = execute(
        _run_args("expert", f"sim:{TASK}", args.seconds, args.seed)
    )

    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    print(f"\n== 3/4  the same over the ZeroMQ bridge ({address}, plant in its own process) ==",
          flush=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "serve", "--task", TASK, "--realtime",
         "--bind", address, "--seed", str(args.seed)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        _wait_for_server(server)
        _, rows["expert  bridge (tcp loopback)"] = execute(
            _run_args("expert", address, args.seconds, args.seed)
        )
        policies = _shipped_policies()
        print(f"\n== 4/4  shipped learned planners over the bridge: {policies or 'none yet'} ==",
              flush=True)
        for policy in policies:
            _, rows[f"{policy}  bridge"] = execute(
                _run_args(policy, address, args.seconds, args.seed)
            )
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()

    print(f"\n{'run (realtime, 100 Hz)':<34}{'ticks':>7}{'misses':>8}{'plant':>8}{'miss %':>9}"
          f"{'late p99':>10}{'cmp p99':>10}{'eps':>6}{'success':>9}")
    print(f"{'':<34}{'':>7}{'':>8}{'late':>8}{'':>9}{'ms':>10}{'ms':>10}{'':>6}{'%':>9}")
    for name, out in rows.items():
        print(_row(name, out))
    summary = out_dir / "summary.json"
    summary.write_text(json.dumps(rows, indent=2))
    print(f"\nrun JSON written to {summary}")
    return 0


def _wait_for_server(server: subprocess.Popen[str], timeout_s: float = 30.0) -> None:
    """Wait for `rtdiff serve` to say it is serving (its first stderr line)."""
    deadline = time.monotonic() + timeout_s
    if server.stderr is None:
        raise CliError("cannot read the plant server's output")
    while time.monotonic() < deadline:
        line = server.stderr.readline()
        if not line and server.poll() is not None:
            raise CliError(f"the plant server exited with code {server.returncode}")
        if "rtdiff serve:" in line:
            # Keep draining its log so a full pipe can never block the plant process.
            threading.Thread(target=server.stderr.read, daemon=True).start()
            return
    raise CliError(f"the plant server did not come up within {timeout_s:g} s")
