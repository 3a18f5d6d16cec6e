"""`rtdiff train` end to end on a fake dataset module (no sims import, no simulator)."""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import pytest

from runtime.cli import CliError
from runtime.cli.train import cli_train

from .conftest import toy_episodes


@pytest.fixture
def fake_sims(monkeypatch: pytest.MonkeyPatch) -> None:
    sims = types.ModuleType("sims")  # no make_plant: the CLI skips the lockstep evaluation
    datasets = types.ModuleType("sims.datasets")

    def load_episodes(path: str) -> list[object]:
        if path != "toy-data":
            raise ValueError(f"{path!r} is not an rtdiff dataset")
        return list(toy_episodes(n=2, T=20))

    datasets.load_episodes = load_episodes  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sims", sims)
    monkeypatch.setitem(sys.modules, "sims.datasets", datasets)


def _args(**kw: object) -> argparse.Namespace:
    base: dict[str, object] = dict(
        task="toy", policy="rolling", data="toy-data", out="", steps=3, device="cpu", seed=0
    )
    base.update(kw)
    return argparse.Namespace(**base)


def test_train_cli_writes_a_checkpoint_with_its_command(
    fake_sims: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ck"
    assert cli_train(_args(out=str(out))) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kind"] == "rolling" and cfg["task"] == "toy"
    assert cfg["train"]["command"].startswith("rtdiff ")
    err = capsys.readouterr().err
    assert "step 3/3" in err and "no lockstep evaluation" in err


def test_train_cli_reports_user_errors_in_one_line(fake_sims: None, tmp_path: Path) -> None:
    with pytest.raises(CliError, match="cannot read dataset nope"):
        cli_train(_args(data="nope", out=str(tmp_path / "a")))
    with pytest.raises(CliError, match=r"holds task\(s\) \['toy'\], not 'bimodal'"):
        cli_train(_args(task="bimodal", out=str(tmp_path / "b")))


def test_train_cli_set_reaches_the_model_train_and_planner_configs(
    fake_sims: None, tmp_path: Path
) -> None:
    out = tmp_path / "ck"
    settings = ["n_embd=32", "model.n_past=0", "train.p_ramp=0.25", "clean_ticks=3"]
    assert cli_train(_args(out=str(out), settings=settings)) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["n_embd"] == 32 and cfg["model"]["n_past"] == 0
    assert cfg["train"]["config"]["p_ramp"] == 0.25
    assert cfg["planner"]["clean_ticks"] == 3


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("n_embd", "expected KEY=VALUE"),
        ("bogus=1", "unknown setting"),
        ("state_dim=3", "unknown setting"),
        ("optim.lr=1", "prefix must be"),
        ("n_embd=30", "divisible"),
    ],
)
def test_train_cli_rejects_bad_settings(
    fake_sims: None, tmp_path: Path, setting: str, message: str
) -> None:
    with pytest.raises(CliError, match=message):
        cli_train(_args(out=str(tmp_path / "ck"), settings=[setting]))


def test_the_datasets_rate_is_recorded_for_token_rate(tmp_path: Path) -> None:
    from policies.train import _dataset_rate_hz

    (tmp_path / "rtdiff.json").write_text(json.dumps({"task": "toy", "rate_hz": 250.0}))
    assert _dataset_rate_hz(str(tmp_path)) == 250.0
    (tmp_path / "rtdiff.json").write_text("{not json")
    assert _dataset_rate_hz(str(tmp_path)) is None
    assert _dataset_rate_hz(str(tmp_path / "missing")) is None
