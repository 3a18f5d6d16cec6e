"""Demonstration datasets: `Episode`, and reading/writing them as Minari datasets.

Format: a dataset directory is a Minari dataset (Farama's format for gymnasium data, HDF5
backend, which needs `h5py`): `metadata.json` + `data/main_data.hdf5`. Users open it with
`minari.MinariDataset(DIR)` (no download, no `~/.minari` registration needed). Per Minari's
convention `actions` are the actions that were executed (DART-perturbed on some ticks) and
`observations` the dict `{"state", "goal"}` of the env (T+1 rows). rtdiff's extras ride in
`infos`, T+1 rows aligned with the observations:

- `infos/expert_action` (T+1, Da): the expert's clean action at observation t (the label);
- `infos/push_n` (T+1, 3), `infos/goal_switch` (T+1,), `infos/acted` (T+1, Da), and for
  `bimodal` `infos/mode` (T+1,): the disturbance/record of the step that led to observation
  t (row 0, the reset, is zero);
- `infos/success` (T+1,): the outcome, True only on the last row of a successful episode.

The directory also holds `rtdiff.json` (task, seeds, DART settings, success rate), written
last: a directory without it is not a complete rtdiff dataset.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

MARKER = "rtdiff.json"
FORMAT_VERSION = 1


@dataclass
class Episode:
    """One demonstration. T ticks; Ds/Dg/Da the task's sizes (Dg may be 0).

    `actions` are the expert's clean labels; `executed` what was sent to the plant (a DART
    perturbation of the label on some ticks). `disturbances` holds per-tick records, e.g.
    `push_n` (T, 3) N, `goal_switch` (T,) bool, `acted` (T, Da) (after actuation delay),
    `mode` (T,) for `bimodal`.
    """

    task: str
    states: np.ndarray  # (T+1, Ds) float32
    goals: np.ndarray  # (T+1, Dg) float32
    actions: np.ndarray  # (T, Da) float32, clean expert labels
    executed: np.ndarray  # (T, Da) float32
    rewards: np.ndarray  # (T,) float32
    success: bool
    disturbances: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t = self.actions.shape[0]
        if self.states.shape[0] != t + 1 or self.goals.shape[0] != t + 1:
            raise ValueError(
                f"episode of {t} ticks needs T+1 states/goals: {self.states.shape=}, "
                f"{self.goals.shape=}"
            )
        if self.executed.shape != self.actions.shape or self.rewards.shape != (t,):
            raise ValueError(
                f"{self.actions.shape=}, {self.executed.shape=}, {self.rewards.shape=} disagree"
            )

    @property
    def ticks(self) -> int:
        return int(self.actions.shape[0])


def require_hdf5() -> None:
    """Minari's HDF5 backend needs h5py (the `minari[hdf5]` extra); say so in one line."""
    try:
        import h5py  # noqa: F401
    except ImportError:
        raise ImportError(
            "rtdiff datasets are Minari/HDF5 and need h5py: pip install 'minari[hdf5]'"
        ) from None


def is_dataset(path: Path) -> bool:
    return (path / MARKER).is_file()


def write_dataset(
    path: Path,
    episodes: list[Episode],
    ends: list[tuple[np.ndarray, bool]],
    observation_space: Any,
    action_space: Any,
    meta: dict[str, Any],
) -> None:
    """Write `episodes` as a Minari dataset into the (new or empty) directory `path`.

    `ends[i]` = (the expert's label (Da,) at episode i's final observation, terminated?).
    """
    require_hdf5()
    from minari import __version__ as minari_version
    from minari.data_collector.episode_buffer import EpisodeBuffer
    from minari.dataset.minari_storage import MinariStorage

    storage = MinariStorage.new(
        path,
        observation_space=observation_space,
        action_space=action_space,
        data_format="hdf5",
    )
    buffers = []
    for i, ep in enumerate(episodes):
        obs: dict[str, np.ndarray] = {"state": ep.states.astype(np.float64)}
        if ep.goals.shape[1] > 0:
            obs["goal"] = ep.goals.astype(np.float64)
        t = ep.ticks
        infos: dict[str, np.ndarray] = {}
        label_last, terminated = ends[i]
        for key, rec in ep.disturbances.items():
            rec = np.asarray(rec)
            infos[key] = np.concatenate([np.zeros((1, *rec.shape[1:]), rec.dtype), rec])
        infos["expert_action"] = np.concatenate([ep.actions, label_last[None]]).astype(np.float32)
        success = np.zeros(t + 1, dtype=bool)
        success[-1] = ep.success
        infos["success"] = success
        terminations = np.zeros(t, dtype=bool)
        truncations = np.zeros(t, dtype=bool)
        terminations[-1] = terminated
        truncations[-1] = not terminated
        buffers.append(
            EpisodeBuffer(
                id=i,
                seed=int(meta["seeds"][i]) if "seeds" in meta else None,
                observations=obs,
                actions=ep.executed.astype(np.float64),
                rewards=ep.rewards.astype(np.float64),
                terminations=terminations,
                truncations=truncations,
                infos=infos,
            )
        )
    storage.update_episodes(buffers)
    storage.update_metadata(
        {
            "dataset_id": f"rtdiff/{meta['task']}/expert-v0",
            "algorithm_name": "expert + DART",
            "author": {"rtdiff"},
            "description": f"rtdiff expert demonstrations for task {meta['task']!r}",
            "minari_version": minari_version,
        }
    )
    (path / MARKER).write_text(json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=1))


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not is_dataset(path):
        raise ValueError(f"{str(path)!r} is not an rtdiff dataset (no {MARKER}; incomplete?)")
    meta: dict[str, Any] = json.loads((path / MARKER).read_text())
    return meta


def load_episodes(path: str | Path) -> list[Episode]:
    """Read a dataset written by `rtdiff collect` into a list of `Episode`s."""
    require_hdf5()
    from minari.dataset.minari_storage import MinariStorage

    path = Path(path)
    meta = read_meta(path)
    task = str(meta["task"])
    goal_dim = int(meta["goal_dim"])
    storage = MinariStorage.read(path)
    episodes = []
    for raw in storage.get_episodes(range(storage.total_episodes)):
        obs = raw["observations"]
        states = np.asarray(obs["state"], dtype=np.float32)
        if goal_dim > 0:
            goals = np.asarray(obs["goal"], dtype=np.float32)
        else:
            goals = np.zeros((states.shape[0], 0), dtype=np.float32)
        infos = raw["infos"]
        labels = np.asarray(infos["expert_action"], dtype=np.float32)
        dist = {
            k: np.asarray(v)[1:]
            for k, v in infos.items()
            if k not in ("expert_action", "success")
        }
        episodes.append(
            Episode(
                task=task,
                states=states,
                goals=goals,
                actions=labels[:-1],
                executed=np.asarray(raw["actions"], dtype=np.float32),
                rewards=np.asarray(raw["rewards"], dtype=np.float32),
                success=bool(np.asarray(infos["success"])[-1]),
                disturbances=dist,
            )
        )
    return episodes
