"""`rtdiff keys`: `hw_bridge.keys` does the work; its `KeysError` is the one-line CLI error."""

from __future__ import annotations

import argparse

from hw_bridge.keys import KeysError, keys_from_args
from runtime.cli import CliError


def cli_keys(args: argparse.Namespace) -> int:
    try:
        return keys_from_args(args)
    except KeysError as exc:
        raise CliError(str(exc)) from exc
