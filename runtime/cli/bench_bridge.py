"""`rtdiff bench bridge`: `hw_bridge.bench` does the work; its `BenchError` is the one-line CLI
error."""

from __future__ import annotations

import argparse

from hw_bridge.bench import BenchError, bench_bridge_from_args
from runtime.cli import CliError


def cli_bench_bridge(args: argparse.Namespace) -> int:
    try:
        return bench_bridge_from_args(args)
    except BenchError as exc:
        raise CliError(str(exc)) from exc
