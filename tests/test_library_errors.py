"""Each library raises its own error; the CLI layer (`runtime.cli.*`) turns it into CliError.

The libraries' subcommand functions (`*_from_args`) never raise `CliError`; the adapters in
`runtime.cli` keep the message and `rtdiff` prints it as one line with exit code 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from runtime.cli import CliError, main


def _ns(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**kw)


def test_train_raises_train_error_and_the_cli_converts_it() -> None:
    from policies.train import TrainError, train_from_args
    from runtime.cli.train import cli_train

    args = _ns(policy="nope", device="cpu", task="toy", data="d", out="o", steps=1, seed=0)
    with pytest.raises(TrainError, match="--policy 'nope' must be one of") as info:
        train_from_args(args)
    assert not isinstance(info.value, CliError) and isinstance(info.value, ValueError)
    with pytest.raises(CliError, match="--policy 'nope' must be one of"):
        cli_train(args)


def test_keys_raises_keys_error_and_rtdiff_prints_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hw_bridge.keys import KeysError, keys_from_args

    with pytest.raises(KeysError, match="use letters, digits"):
        keys_from_args(_ns(out=str(tmp_path / "k"), client="a b"))
    assert main(["keys", "--out", str(tmp_path / "k"), "--client", "a b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rtdiff keys: error: --client 'a b'") and err.count("\n") == 1
    assert not (tmp_path / "k").exists()


def test_collect_raises_collect_error_and_rtdiff_prints_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sims.collect import CollectError, collect_from_args

    args = _ns(task="no-such-task", episodes=1, out=str(tmp_path / "d"), seed=0, dart_prob=None)
    with pytest.raises(CollectError, match="unknown task 'no-such-task'"):
        collect_from_args(args)
    argv = ["collect", "--task", "no-such-task", "--episodes", "1", "--out", str(tmp_path / "d")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("rtdiff collect: error: unknown task") and err.count("\n") == 1


def test_bench_bridge_raises_bench_error_and_the_cli_converts_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import hw_bridge.bench as bench
    from runtime.cli.bench_bridge import cli_bench_bridge

    def broken(*args: Any, **kw: Any) -> dict[str, Any]:
        raise OSError("no sockets today")

    monkeypatch.setattr(bench, "run_bench", broken)
    args = _ns(seconds=0.1, json=True, rt_priority=None, mlock=False, pin=False)
    with pytest.raises(bench.BenchError, match="bridge benchmark failed: no sockets today"):
        bench.bench_bridge_from_args(args)
    with pytest.raises(CliError, match="bridge benchmark failed: no sockets today"):
        cli_bench_bridge(args)
