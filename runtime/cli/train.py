"""`rtdiff train`: `policies.train` does the work; its `TrainError` is the one-line CLI error."""

from __future__ import annotations

import argparse

from policies.train import TrainError, train_from_args
from runtime.cli import CliError


def cli_train(args: argparse.Namespace) -> int:
    try:
        return train_from_args(args)
    except TrainError as exc:
        raise CliError(str(exc)) from None
