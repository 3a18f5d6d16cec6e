"""`rtdiff check`: good plants and policies pass; each broken promise fails in plain words."""

from __future__ import annotations

import json

import pytest

from runtime.cli import main

U = "py:tests.byo.userstuff"


def _check(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict]:
    code = main(["check", *argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def _failed(report: dict) -> dict[str, str]:
    return {f["name"]: f["text"] for fs in report["findings"].values() for f in fs if not f["ok"]}


@pytest.mark.parametrize("argv", [
    ["--plant", f"{U}:motor"],
    ["--plant", "sim:double-pendulum", "--ticks", "50"],
    ["--plant", "sim:bimodal", "--mode", "realtime", "--seconds", "0.3"],
    ["--plant", "sim:double-pendulum", "--policy", "expert", "--ticks", "50"],
    ["--plant", f"{U}:motor", "--policy", f"{U}:pd"],
])
def test_sound_plants_and_policies_pass(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = _check(argv, capsys)
    assert code == 0 and report["failed"] == 0, _failed(report)


def test_a_plant_whose_time_goes_backwards_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = _check(["--plant", f"{U}:motor_with_bad_clock", "--mode", "realtime",
                           "--seconds", "0.2"], capsys)
    assert code == 1
    assert "the plant's time went backwards" in _failed(report)["time"]


def test_a_plant_that_applies_nan_fails(capsys: pytest.CaptureFixture[str]) -> None:
    code, report = _check(["--plant", f"{U}:TakesAnything"], capsys)
    assert code == 1
    assert _failed(report)["refuses NaN"] == "apply() took a NaN action (it must raise, not apply)"


@pytest.mark.parametrize(("how", "needle"), [
    ("nan", "returned a non-finite action [nan] at tick 2"),
    ("raise", "raised ZeroDivisionError: bad luck"),
    ("shape", "returned shape (3,), expected (1,)"),
])
def test_a_policy_that_misbehaves_fails(
    how: str, needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, report = _check(["--plant", f"{U}:motor", "--policy", f"{U}:Buggy",
                           "--policy-arg", f"how={how}"], capsys)
    assert code == 1
    assert any(needle in text for text in _failed(report).values()), _failed(report)


def test_the_text_report_says_what_failed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--plant", f"{U}:TakesAnything"]) == 1
    out = capsys.readouterr().out
    assert "  FAIL refuses NaN: apply() took a NaN action" in out
    assert out.strip().endswith("rtdiff check: FAILED, 3 problem(s)")
