"""`rtdiff collect`: `sims.collect` does the work; its `CollectError` is the one-line CLI error."""

from __future__ import annotations

import argparse

from runtime.cli import CliError
from sims.collect import CollectError, collect_from_args


def cli_collect(args: argparse.Namespace) -> int:
    try:
        return collect_from_args(args)
    except CollectError as exc:
        raise CliError(str(exc)) from None
