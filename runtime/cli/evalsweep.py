"""The engine of `rtdiff eval`: seeded lockstep episodes, run here or on Ray workers, streamed
into an episode store and aggregated into rows.

Cells. A cell is one `Episode`: a task, a planner (`expert`, `KIND:TASK` or a checkpoint
directory, as `rtdiff run --policy` takes them), a `Setting` and a seed. Episode i of a sweep
with `--seed S` runs on seed S + i, whatever process runs it: the plant resets with that seed
and the planner is reseeded with it (`policies.evaluate.score_episode`), so its record is the
same in this process, on any Ray worker and in a retried task. An episode's `key` names all of
it (task, planner, setting, seed); the store keeps one record per key.

Settings. What the push-recovery and dithering studies of `policies.evaluate` vary:
- `variant`: the learned planner's surprise-driven re-noising as calibrated (`renoise`), never
  (`none`), restarting from noise (`blank`) or under another pivot rule (`decay`, `shift`:
  `policies.rolling`); an expert has no re-noising and runs as it is under `renoise` only;
- `disturbances`: the task's own (`default`: pushes, goal switches, sensor noise, actuation
  delay as the task sets them), `pushes` (the task's pushes alone) or `none`;
- `push_force_n`: a push force range replacing the task's (a stress test);
- `set`: `KEY=VALUE` replacements of the checkpoint's planner settings;
- `steps_per_tick`: refine steps per lockstep tick.
Every record carries the push-recovery figures under the task's rule, and on bimodal the
course rule's side counts and the lateral command's mode switches (`policies.evaluate`).

Workers. `run_batch(specs)` runs episodes in the calling process. A process keeps its plants
(one per task and disturbance setting) and its learned planners (one per planner, task, variant
and settings: loaded and traced once) for later episodes; experts are built for each episode
with its seed (the bimodal expert draws its side from a generator of its own; building one
takes 2-50 ms). Without Ray the driver runs the batches itself; with Ray each batch is one task
(`num_cpus=1`, `max_retries`): a worker that dies has its batch run again elsewhere, and
since records go into the store only when a batch returns, each episode lands there once.

Imports: `policies` and `sims` inside the functions that run episodes or check names; Ray
through `runtime.cli.raycluster`, only when asked for.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from runtime.cli import CliError
from runtime.evalstore import EpisodeStore, StoreError

DISTURBANCES = ("default", "pushes", "none")
# `pushes`: the task's pushes, every other disturbance off (the push draws stay the same: each
# disturbance draws from its own generator)
_PUSHES_ONLY = {"goal_switch_rate_hz": 0.0, "sensor_noise_std": 0.0, "action_delay_ticks": 0}


@dataclass(frozen=True)
class Setting:
    """One planner and disturbance setting of a sweep (see the module docstring)."""

    variant: str = "renoise"
    disturbances: str = "default"
    push_force_n: tuple[float, float] | None = None
    sets: tuple[str, ...] = ()
    steps_per_tick: int = 1

    def label(self) -> str:
        parts = [f"variant={self.variant}", f"disturbances={self.disturbances}"]
        if self.push_force_n is not None:
            lo, hi = self.push_force_n
            parts.append(f"push_force_n={lo:g}:{hi:g}")
        if self.sets:
            parts.append("set=" + ";".join(self.sets))
        parts.append(f"steps_per_tick={self.steps_per_tick}")
        return ",".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"variant": self.variant, "disturbances": self.disturbances,
                "push_force_n": None if self.push_force_n is None else list(self.push_force_n),
                "set": list(self.sets), "steps_per_tick": self.steps_per_tick}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Setting:
        pf = d.get("push_force_n")
        return cls(variant=d["variant"], disturbances=d["disturbances"],
                   push_force_n=None if pf is None else (float(pf[0]), float(pf[1])),
                   sets=tuple(d.get("set", ())), steps_per_tick=int(d["steps_per_tick"]))

    def plant_disturbances(self) -> bool | dict[str, Any]:
        """`MujocoPlant(disturbances=...)` for this setting."""
        if self.disturbances == "none":
            return False
        kw: dict[str, Any] = dict(_PUSHES_ONLY) if self.disturbances == "pushes" else {}
        if self.push_force_n is not None:
            kw["push_force_n"] = self.push_force_n
        return kw or True


@dataclass(frozen=True)
class Episode:
    """One cell: `planner` on `task` under `setting`, on seed `seed`."""

    task: str
    planner: str
    setting: Setting
    seed: int

    @property
    def key(self) -> str:
        return f"{self.task}|{self.planner}|{self.setting.label()}|seed={self.seed}"

    @property
    def cell(self) -> tuple[str, str, str]:
        """What the episode's row aggregates over (every seed of it)."""
        return self.task, self.planner, self.setting.label()

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "planner": self.planner, "setting": self.setting.to_json(),
                "seed": self.seed}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Episode:
        return cls(d["task"], d["planner"], Setting.from_json(d["setting"]), int(d["seed"]))


# ------------------------------------------------------------------------------ the worker

_PLANTS: dict[tuple[str, str], Any] = {}
_PLANNERS: dict[tuple[str, str, str, tuple[str, ...]], Any] = {}


def _plant(task: str, setting: Setting) -> Any:
    disturbances = setting.plant_disturbances()
    key = (task, json.dumps(disturbances, sort_keys=True))
    if key not in _PLANTS:
        from sims import make_plant

        _PLANTS[key] = make_plant(task, disturbances=disturbances)
    return _PLANTS[key]


def planner_config(ckpt: Any, setting: Setting) -> dict[str, Any] | None:
    """The planner-setting overrides `setting` makes of checkpoint `ckpt` (its `--set` items,
    then its re-noising variant), None for none. ValueError, one line, for a bad item."""
    from dataclasses import fields

    from policies.evaluate import planner_settings, variant_config

    cfg = variant_config(planner_settings(list(setting.sets), ckpt.planner), setting.variant)
    changed = {f.name: getattr(cfg, f.name) for f in fields(cfg)
               if getattr(cfg, f.name) != getattr(ckpt.planner, f.name)}
    return changed or None


def _planner(ep: Episode, plant: Any) -> Any:
    spec = plant.spec()
    if ep.planner == "expert":
        from sims.experts import make_expert

        return make_expert(ep.task, spec, seed=ep.seed)
    key = (ep.planner, ep.task, ep.setting.variant, ep.setting.sets)
    if key not in _PLANNERS:
        import torch

        from policies import load_checkpoint, planner_from_checkpoint, resolve_policy

        torch.set_num_threads(1)  # these models gain nothing from a second thread
        directory, kind = resolve_policy(ep.planner)
        ckpt = load_checkpoint(directory)
        _PLANNERS[key] = planner_from_checkpoint(
            ckpt, spec=spec, kind=kind, seed=ep.seed, overrides=planner_config(ckpt, ep.setting)
        )
    return _PLANNERS[key]


def run_episode(ep: Episode) -> dict[str, Any]:
    """Run and score one episode in this process; its store record."""
    from policies.evaluate import Scoring, score_episode

    t0 = time.perf_counter()
    plant = _plant(ep.task, ep.setting)
    planner = _planner(ep, plant)
    rec = score_episode(planner, plant, seed=ep.seed, steps_per_tick=ep.setting.steps_per_tick,
                        scoring=Scoring.for_task(ep.task))
    return {"key": ep.key, "task": ep.task, "planner": ep.planner,
            "setting": ep.setting.label(), **rec,
            "wall_s": round(time.perf_counter() - t0, 6),
            "host": socket.gethostname(), "pid": os.getpid()}


def run_batch(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of the episodes `specs` (`Episode.to_json()`), run in this process: what
    one Ray task does."""
    return [run_episode(Episode.from_json(s)) for s in specs]


def close_workers() -> None:
    """Close this process's cached plants and planners (the plain path, at its end)."""
    for planner in _PLANNERS.values():
        close = getattr(planner, "close", None)
        if close is not None:
            close()
    for plant in _PLANTS.values():
        plant.close()
    _PLANNERS.clear()
    _PLANTS.clear()


# ------------------------------------------------------------------------------ the driver


class Progress:
    """Episodes done / to do, episodes per second and the time left, on `stream`: one line
    rewritten about twice a second on a terminal, a line every `every_s` otherwise."""

    def __init__(self, todo: int, skipped: int, *, stream: IO[str] | None = None,
                 every_s: float | None = None, prefix: str = "rtdiff eval") -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.every_s = every_s if every_s is not None else (0.5 if self.tty else 10.0)
        self.todo, self.skipped, self.done = todo, skipped, 0
        self.prefix = prefix
        self._t0 = time.monotonic()
        self._last = self._t0

    def line(self) -> str:
        dt = time.monotonic() - self._t0
        rate = self.done / dt if dt > 0 else 0.0
        left = self.todo - self.done
        eta = f"{left / rate:.0f} s" if rate > 0 else "-"
        skipped = f" ({self.skipped} already in the store)" if self.skipped else ""
        return (f"{self.prefix}: {self.done}/{self.todo} episodes{skipped}, "
                f"{rate:.2f} episodes/s, ETA {eta}")

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._write()

    def _write(self) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + "   ")
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def finish(self) -> None:
        self._write()
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


@dataclass
class SweepResult:
    episodes: int  # cells asked for (distinct keys)
    skipped: int  # found in the store already
    ran: int  # run now
    seconds: float
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> record, asked-for


def _dedupe(episodes: Iterable[Episode]) -> list[Episode]:
    seen: dict[str, Episode] = {}
    for ep in episodes:
        seen.setdefault(ep.key, ep)
    return list(seen.values())


def run_sweep(
    episodes: Sequence[Episode],
    store_path: str | Path,
    *,
    ray: Any = None,
    batch: int | None = 1,
    in_flight: int | None = None,
    max_retries: int = 3,
    progress: Callable[[int, int], Progress] | None = None,
    keep_workers: bool = False,
) -> SweepResult:
    """Run every episode not in the store yet and append its record there.

    `ray`: an initialised `ray` module to run batches of `batch` episodes as Ray tasks (at most
    `in_flight` at a time, default twice the cluster's CPUs), or None to run them here.
    `batch` None: `auto_batch` of what is left to run and the CPUs that run it.
    `progress(todo, skipped)` makes the progress display. Without Ray, this process's plants and
    planners are closed at the end unless `keep_workers`. Raises CliError, one line, when an
    episode fails (an exception in it, or a worker that died on every try); the records that
    came back before stay in the store."""
    cells = _dedupe(episodes)
    t0 = time.perf_counter()
    try:
        with EpisodeStore(store_path) as store:
            todo = [e for e in cells if e.key not in store.done]
            skipped = len(cells) - len(todo)
            shown = progress(len(todo), skipped) if progress is not None else None
            if batch is None:
                from runtime.cli.raycluster import cluster_cpus

                batch = auto_batch(len(todo), 1 if ray is None else cluster_cpus(ray))
            batches = [todo[i:i + batch] for i in range(0, len(todo), max(1, batch))]

            def finished(records: list[dict[str, Any]]) -> None:
                store.append(records)
                if shown is not None:
                    shown.add(len(records))

            if ray is None:
                _run_here(batches, finished, close=not keep_workers)
            else:
                from runtime.cli.raycluster import cluster_cpus

                _run_on_ray(ray, batches, finished, max_retries=max_retries,
                            in_flight=in_flight or 2 * cluster_cpus(ray))
            if shown is not None:
                shown.finish()
            records = {e.key: store.done[e.key] for e in cells}
    except StoreError as exc:
        raise CliError(str(exc)) from None
    return SweepResult(len(cells), skipped, len(todo), time.perf_counter() - t0, records)


# A Ray task costs about 6 ms of scheduling, transfer and the store's fsync on a 2-core
# machine (`rtdiff bench eval`): 10 % of an expert's 50-70 ms double-pendulum episode, 1 % of
# the rolling planner's 600 ms. Batches of up to MAX_BATCH episodes bring it near 1.5 ms an
# episode; at least TASKS_PER_CPU tasks per CPU keep the workers busy to the end.
MAX_BATCH = 8
TASKS_PER_CPU = 4


def auto_batch(todo: int, cpus: int) -> int:
    """Episodes per Ray task for `todo` episodes on `cpus` CPUs: as many as keep
    `TASKS_PER_CPU` tasks per CPU, 1 to `MAX_BATCH`."""
    return max(1, min(MAX_BATCH, -(-todo // (TASKS_PER_CPU * max(1, cpus)))))


def _run_here(batches: list[list[Episode]],
              finished: Callable[[list[dict[str, Any]]], None], *, close: bool) -> None:
    try:
        for b in batches:
            try:
                records = run_batch([e.to_json() for e in b])
            except (KeyError, ValueError, FileNotFoundError) as exc:
                raise CliError(f"episode {b[0].key}: {str(exc).strip(chr(39) + chr(34))}"
                               ) from None
            finished(records)
    finally:
        if close:
            close_workers()


def _run_on_ray(ray: Any, batches: list[list[Episode]],
                finished: Callable[[list[dict[str, Any]]], None], *, max_retries: int,
                in_flight: int) -> None:
    from runtime.cli.raycluster import task_error

    remote = ray.remote(num_cpus=1, max_retries=max_retries)(run_batch)
    pending: dict[Any, list[Episode]] = {}
    queue = iter(batches)

    def submit() -> None:
        b = next(queue, None)
        if b is not None:
            pending[remote.remote([e.to_json() for e in b])] = b

    for _ in range(max(1, in_flight)):
        submit()
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                b = pending.pop(ref)
                try:
                    records = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise CliError(f"episode {b[0].key}: {task_error(exc)}") from None
                finished(records)
                submit()
    finally:
        for ref in pending:  # after an error: stop what is still running
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)


# ------------------------------------------------------------------------------ the rows


def rows(episodes: Sequence[Episode], records: dict[str, dict[str, Any]], *,
         seed: int = 0) -> dict[str, Any]:
    """Rows (one per task, planner and setting, sorted) aggregated from the records of
    `episodes`, and `vs_renoise`: for each row of another variant, its push recovery against
    the `renoise` row of the same task, planner and other settings, push by push
    (`policies.evaluate.paired_difference`, bootstrap seeded `seed`)."""
    from policies.evaluate import aggregate, paired_difference

    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    settings: dict[tuple[str, str, str], Setting] = {}
    for ep in _dedupe(episodes):
        if ep.key in records:
            groups.setdefault(ep.cell, []).append(records[ep.key])
            settings[ep.cell] = ep.setting
    out, logs = [], {}
    for cell, recs in groups.items():
        task, planner, _ = cell
        agg = aggregate(recs)
        logs[cell] = agg.pop("_log", None)
        out.append({"task": task, "planner": planner, **settings[cell].to_json(), **agg})
    out.sort(key=_row_order)
    paired = []
    for cell, log in logs.items():
        s = settings[cell]
        if s.variant == "renoise" or log is None:
            continue
        base = Setting(variant="renoise", disturbances=s.disturbances,
                       push_force_n=s.push_force_n, sets=s.sets, steps_per_tick=s.steps_per_tick)
        base_log = logs.get((cell[0], cell[1], base.label()))
        if base_log is None:
            continue
        paired.append({"task": cell[0], "planner": cell[1], **s.to_json(),
                       **paired_difference(base_log, log, seed=seed)})
    paired.sort(key=_row_order)
    return {"rows": out, "vs_renoise": paired}


def _row_order(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["task"], r["planner"], r["variant"], r["disturbances"],
            r["push_force_n"] or [], r["set"], r["steps_per_tick"])
