"""rtdiff collect -> load_episodes round trip, atomic writes, and one-line CLI errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.cli import main
from sims import collect as collect_mod
from sims.collect import CollectConfig, collect
from sims.datasets import Episode, load_episodes


def test_collect_then_load_round_trips_episodes(tmp_path):
    out = tmp_path / "ds"
    meta = collect(CollectConfig("bimodal", 3, out, seed=4, dart_prob=0.5), progress=False)
    eps = load_episodes(out)
    assert len(eps) == 3 == meta["episodes"]
    for e in eps:
        assert isinstance(e, Episode) and e.task == "bimodal"
        t = e.ticks
        assert e.states.shape == (t + 1, 2) and e.states.dtype == np.float32
        assert e.goals.shape == (t + 1, 0)
        assert e.actions.shape == e.executed.shape == (t, 2)
        assert e.rewards.shape == (t,)
        assert e.disturbances["push_n"].shape == (t, 3)
        assert e.disturbances["mode"].shape == (t,)
        assert set(np.unique(e.disturbances["mode"])) <= {-1, 1}
    # DART: some ticks executed a perturbed action, the labels stay clean
    e = eps[0]
    assert np.any(np.abs(e.executed - e.actions) > 1e-6)
    assert np.any(np.abs(e.executed - e.actions) < 1e-7)
    assert meta["success_rate"] == np.mean([e.success for e in eps])


def test_collect_is_reproducible_under_the_seed(tmp_path):
    collect(CollectConfig("reacher-moving", 1, tmp_path / "a", seed=9), progress=False)
    collect(CollectConfig("reacher-moving", 1, tmp_path / "b", seed=9), progress=False)
    a, b = load_episodes(tmp_path / "a")[0], load_episodes(tmp_path / "b")[0]
    np.testing.assert_array_equal(a.states, b.states)
    np.testing.assert_array_equal(a.disturbances["push_n"], b.disturbances["push_n"])


def test_worker_shares_cover_the_seeds_in_order():
    assert collect_mod.worker_shares(7, 100, 3) == [(100, 3), (103, 2), (105, 2)]
    assert collect_mod.worker_shares(2, 0, 2) == [(0, 1), (1, 1)]
    with pytest.raises(ValueError, match="--workers"):
        CollectConfig("bimodal", 2, collect_mod.Path("x"), workers=3)


def test_parallel_workers_record_each_share_as_a_single_worker_would(tmp_path):
    meta = collect(CollectConfig("bimodal", 3, tmp_path / "p", seed=4, workers=2),
                   progress=False)
    whole = load_episodes(tmp_path / "p")
    assert meta["episodes"] == 3 and meta["seeds"] == [4, 5, 6]
    collect(CollectConfig("bimodal", 1, tmp_path / "last", seed=6), progress=False)
    np.testing.assert_array_equal(whole[2].states, load_episodes(tmp_path / "last")[0].states)


def test_the_dataset_opens_with_minari(tmp_path):
    import minari

    collect(CollectConfig("pointmaze", 2, tmp_path / "m", seed=0), progress=False)
    ds = minari.MinariDataset(tmp_path / "m")
    assert ds.total_episodes == 2
    ep = next(iter(ds))
    assert ep.observations["state"].shape[1] == 4 and ep.observations["goal"].shape[1] == 2
    assert "expert_action" in ep.infos


def test_an_interrupted_collection_leaves_no_dataset(tmp_path, monkeypatch):
    out = tmp_path / "ds"

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(collect_mod, "write_dataset", boom)
    with pytest.raises(KeyboardInterrupt):
        collect(CollectConfig("bimodal", 1, out), progress=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_directory_without_the_marker_is_not_loaded(tmp_path):
    (tmp_path / "half").mkdir()
    with pytest.raises(ValueError, match="is not an rtdiff dataset"):
        load_episodes(tmp_path / "half")


def _cli(capsys, *argv):
    code = main(["collect", *argv])
    return code, capsys.readouterr().err.strip()


def test_cli_errors_are_one_line(tmp_path, capsys):
    code, err = _cli(capsys, "--task", "nope", "--episodes", "2", "--out", str(tmp_path / "x"))
    assert code == 2
    assert err == (
        "rtdiff collect: error: unknown task 'nope'; known: double-pendulum, "
        "reacher-moving, pointmaze, pusher, bimodal, push-t, swerve"
    )
    with pytest.raises(SystemExit) as exc:
        main(["collect", "--task", "bimodal", "--episodes", "0", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "must be a positive integer" in capsys.readouterr().err
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "notes.txt").write_text("mine")
    code, err = _cli(
        capsys, "--task", "bimodal", "--episodes", "1", "--out", str(tmp_path / "occupied")
    )
    assert code == 2 and "exists and is not an rtdiff dataset" in err and "\n" not in err
    code, err = _cli(
        capsys, "--task", "bimodal", "--episodes", "1", "--out", str(tmp_path / "y"),
        "--dart-prob", "1.5",
    )
    assert code == 2 and err.endswith("--dart-prob must be in [0, 1], got 1.5")


def test_cli_collect_writes_a_dataset_and_replaces_an_old_one(tmp_path, capsys):
    out = tmp_path / "ds"
    for n in ("2", "1"):
        assert main(["collect", "--task", "bimodal", "--episodes", n, "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "wrote 1 episodes" in captured.out and "collect bimodal" in captured.err
    assert json.loads((out / "rtdiff.json").read_text())["episodes"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_rtdiff_tasks_prints_a_table_and_json(capsys):
    assert main(["tasks"]) == 0
    table = capsys.readouterr().out
    assert "double-pendulum" in table and "rate_hz" in table
    assert main(["tasks", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    names = [t["name"] for t in data["tasks"]]
    assert names[:2] == ["double-pendulum", "reacher-moving"]
    assert data["tasks"][0]["rate_hz"] == 100.0


def test_cli_collect_accepts_a_relative_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["collect", "--task", "bimodal", "--episodes", "1", "--out", "ds_rel"]) == 0
    assert load_episodes(tmp_path / "ds_rel")[0].task == "bimodal"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds_rel"]
