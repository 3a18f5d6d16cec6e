"""A simulated plant served in its own process, for commands that drive it over the bridge.

`rtdiff demo` and `rtdiff bench deadline` put the MuJoCo plant behind `rtdiff serve` in a child
process, as a robot would be: the controller then pays the real costs of the link and competes
with the plant for the cores, which an in-process plant would hide.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence

from runtime.cli import CliError, build_parser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_args(policy: str, plant: str, *, seed: int, seconds: float | None = None,
             episodes: int | None = None, trace: str | None = None,
             rt_priority: int | None = None) -> argparse.Namespace:
    """`rtdiff run` arguments (realtime, JSON), parsed by the real parser: one set of defaults."""
    argv = ["run", "--policy", policy, "--plant", plant, "--mode", "realtime",
            "--seed", str(seed), "--json"]
    argv += ["--rt-priority", str(rt_priority)] if rt_priority else ["--no-rt"]
    argv += ["--seconds", f"{seconds:g}"] if seconds is not None else []
    argv += ["--episodes", str(episodes)] if episodes is not None else []
    argv += ["--trace", trace] if trace is not None else []
    return build_parser().parse_args(argv)


_SERVING = re.compile(r"^rtdiff serve: \S+ \((lockstep|realtime), [0-9.e+]+ Hz\) on ")


def wait_for_server(server: subprocess.Popen[str], timeout_s: float = 30.0) -> None:
    """Wait for `rtdiff serve` to say it is serving (its first stderr line)."""
    deadline = time.monotonic() + timeout_s
    if server.stderr is None:
        raise CliError("cannot read the plant server's output")
    while time.monotonic() < deadline:
        line = server.stderr.readline()
        if not line and server.poll() is not None:
            raise CliError(f"the plant server exited with code {server.returncode}")
        if line.startswith("rtdiff serve: error:"):
            reason = line.strip().removeprefix("rtdiff serve: error: ")
            raise CliError(f"the plant server refused to start: {reason}")
        if _SERVING.match(line):  # "rtdiff serve: TASK (MODE, RATE Hz) on ADDRESS"
            # Keep draining its log so a full pipe can never block the plant process.
            threading.Thread(target=server.stderr.read, daemon=True).start()
            return
    raise CliError(f"the plant server did not come up within {timeout_s:g} s")


@contextlib.contextmanager
def plant_server(task: str, *, seed: int, rate_hz: float | None = None,
                 rt_priority: int | None = None,
                 extra: Sequence[str] = ()) -> Iterator[str]:
    """A realtime `rtdiff serve` process on a free loopback port; yields its address. `extra`:
    more `rtdiff serve` arguments (e.g. `--audit FILE`). Stopped with SIGTERM at the end."""
    address = f"tcp://127.0.0.1:{free_port()}"
    # a built-in task's name, or any plant spec `rtdiff serve --plant` takes
    which = ["--plant", task] if ":" in task else ["--task", task]
    argv = [sys.executable, "-m", "runtime.cli", "serve", *which, "--realtime",
            "--bind", address, "--seed", str(seed)]
    # The plant is the ground truth and must keep its schedule: one priority level above the
    # controller, so a controller thread computing under SCHED_FIFO (not time-sliced against
    # equal priorities) never holds the plant's threads off a core.
    argv += ["--rt-priority", str(min(99, rt_priority + 1))] if rt_priority else []
    if rate_hz is not None:
        argv += ["--rate", f"{rate_hz:g}"]
    argv += list(extra)
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        wait_for_server(server)
        yield address
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
