"""Plants and planners from their specs (`runtime.specs`): the one place the CLI builds them.

`make_plant` turns `--plant SPEC` plus `--plant-arg` keywords into a `runtime.Plant`:

- `sim:TASK` -> `sims.MujocoPlant` of the built-in task (plant args are task settings, e.g.
  `disturbances=false`);
- `mjcf:PATH.xml` -> `sims.MujocoPlant` over `sims.generic.MjcfEnv` (plant args: `state`,
  `joints`, `keyframe`, `reset_noise`, `episode_ticks`, `episode_s`, `push_body`);
- `gym:ENV_ID` -> `sims.MujocoPlant` over `sims.generic.GymEnv` (plant args go to
  `gymnasium.make`, besides `episode_ticks`);
- `py:...` -> the user's Plant, Driver, or factory called with the plant args (and `mode`,
  `seed`, `rate_hz`, `clock` when its signature takes them and the user did not give them);
- `tcp://`, `ipc://` -> `hw_bridge.RemotePlant` (not for `rtdiff serve`).

`make_planner` turns `--policy SPEC` plus `--policy-arg` keywords into a `runtime.Planner`:
`expert` (the built-in task's expert), `KIND:TASK` or a checkpoint directory
(`policies.load_planner`), or `py:...` (`runtime.userpolicy`). Every failure is a `CliError`
with one line.
"""

from __future__ import annotations

from typing import Any, Literal

from runtime.cli import CliError
from runtime.clock import MonotonicClock
from runtime.protocols import Clock, Planner, Plant, PlantSpec
from runtime.specs import (
    Spec,
    SpecError,
    has_methods,
    load_object,
    one_line,
    parse_spec,
    takes_param,
)

__all__ = ["make_planner", "make_plant", "plant_spec_of"]

_PLANT_METHODS = ("spec", "reset", "observe", "apply", "counters", "close")

Mode = Literal["lockstep", "realtime"]


def _in_process_clock() -> MonotonicClock:
    # In-process, the plant's pacing thread shares the GIL with the controller (or the server
    # loop): its final spin must yield it (time.sleep(0)) or the other thread stalls behind it.
    return MonotonicClock(spin_ns=100_000, yield_in_spin=True)


def make_plant(
    text: str,
    plant_args: dict[str, Any] | None = None,
    *,
    mode: Mode,
    seed: int = 0,
    rate_hz: float | None = None,
    clock: Clock | None = None,
    plan_max_age_s: float | None = None,
    remote: bool = True,
) -> Plant:
    """The plant `text` names (see the module docstring). `remote=False` refuses endpoints
    (a server serves a local plant)."""
    try:
        spec = parse_spec(text, plant_args, what="plant")
    except SpecError as exc:
        raise CliError(str(exc)) from None
    if spec.scheme in ("tcp", "ipc"):
        if not remote:
            raise CliError(f"--plant {text}: an endpoint cannot be served; give a local plant")
        from hw_bridge import RemotePlant

        try:
            return RemotePlant(spec.target)
        except (ConnectionError, TimeoutError, ValueError, OSError) as exc:
            raise CliError(f"cannot reach a plant at {spec.target}: {exc}") from None
    if spec.scheme == "py":
        return _user_plant(spec, mode=mode, seed=seed, rate_hz=rate_hz, clock=clock)
    return _sim_plant(spec, mode=mode, seed=seed, rate_hz=rate_hz, clock=clock,
                      plan_max_age_s=plan_max_age_s)


def _sim_plant(
    spec: Spec, *, mode: Mode, seed: int, rate_hz: float | None, clock: Clock | None,
    plan_max_age_s: float | None,
) -> Plant:
    from sims import MujocoPlant

    common: dict[str, Any] = {
        "mode": mode, "seed": seed, "clock": clock or _in_process_clock(),
        "plan_max_age_s": plan_max_age_s,
    }
    kw = dict(spec.kwargs)
    try:
        if spec.scheme == "sim":
            return MujocoPlant(spec.target, rate_hz=rate_hz, **common, **kw)
        if spec.scheme == "mjcf":
            from sims.generic import MjcfEnv

            return MujocoPlant(env=MjcfEnv(spec.target, rate_hz=rate_hz, **kw), **common)
        from sims.generic import GymEnv

        return MujocoPlant(env=GymEnv(spec.target, rate_hz=rate_hz, **kw), **common)
    except TypeError as exc:
        raise CliError(f"--plant {spec}: {_bad_kwargs(exc, kw)}") from None
    except (KeyError, ValueError) as exc:
        raise CliError(f"--plant {spec}: {str(exc).strip(chr(39) + chr(34))}") from None


def _bad_kwargs(exc: TypeError, kw: dict[str, Any]) -> str:
    text = " ".join(str(exc).split())
    if "unexpected keyword" in text or "got an unexpected" in text:
        return f"unknown plant arg ({text}); given: {', '.join(kw) or 'none'}"
    return text


def _user_plant(
    spec: Spec, *, mode: Mode, seed: int, rate_hz: float | None, clock: Clock | None
) -> Plant:
    try:
        obj = load_object(spec)
    except SpecError as exc:
        raise CliError(str(exc)) from None
    kw = dict(spec.kwargs)
    if _is_plant(obj):
        if kw:
            raise CliError(f"--plant {spec}: a ready plant object takes no --plant-arg")
        plant: Plant = obj
        return plant
    if not callable(obj):
        raise CliError(f"--plant {spec}: neither a Plant, a Driver class nor a factory")
    context = {"mode": mode, "seed": seed, "rate_hz": rate_hz, "clock": clock}
    for key, value in context.items():
        if value is not None and key not in kw and takes_param(obj, key):
            kw[key] = value
    try:
        made = obj(**kw)
    except TypeError as exc:
        raise CliError(f"--plant {spec}: {_bad_kwargs(exc, spec.kwargs)}") from None
    except Exception as exc:
        raise CliError(f"--plant {spec}: building it raised {one_line(exc)}") from None
    if not _is_plant(made):
        missing = [m for m in _PLANT_METHODS if not callable(getattr(made, m, None))]
        raise CliError(
            f"--plant {spec}: made a {type(made).__name__}, not a Plant "
            f"(missing {', '.join(missing)})"
        )
    made_plant: Plant = made
    return made_plant


def _is_plant(obj: Any) -> bool:
    return has_methods(obj, _PLANT_METHODS)


def plant_spec_of(plant: Plant) -> PlantSpec:
    """`plant.spec()`, with a user's broken spec reported as one line."""
    try:
        spec = plant.spec()
    except Exception as exc:
        raise CliError(f"the plant's spec() raised {one_line(exc)}") from None
    if not isinstance(spec, PlantSpec):
        raise CliError(f"the plant's spec() returned {type(spec).__name__}, not a PlantSpec")
    return spec


def make_planner(
    policy: str,
    plant: Plant,
    *,
    device: str = "cpu",
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    policy_args: dict[str, Any] | None = None,
    strict: bool = True,
) -> Planner:
    """`expert` -> the task's expert; `py:...` -> the user's policy (`strict`: a failing
    callable stops a lockstep run; in realtime it falls back, counted); anything else ->
    `policies.load_planner`.

    `overrides` replaces planner settings of the checkpoint (e.g. `chunk_steps` for the chunked
    baseline's K), as `rtdiff bench deadline` does for its K=10 / K=50 columns.
    """
    spec = plant_spec_of(plant)
    try:
        parsed = parse_spec(policy, policy_args, what="policy")
    except SpecError as exc:
        raise CliError(str(exc)) from None
    if parsed.scheme == "py":
        from runtime.userpolicy import planner_from_object

        try:
            return planner_from_object(
                load_object(parsed), spec, kwargs=parsed.kwargs, strict=strict, name=str(parsed)
            )
        except SpecError as exc:  # its message names the spec
            raise CliError(str(exc)) from None
    if policy_args:
        raise CliError(f"--policy-arg applies to py: policies, not {policy!r}")
    if policy == "expert":
        from sims.experts import make_expert

        try:
            return make_expert(spec.name, spec)
        except (KeyError, ValueError) as exc:
            raise CliError(f"no expert for plant {spec.name!r}: {exc}") from None
    from policies import load_planner

    try:
        if overrides:
            return load_planner(policy, spec=spec, device=device, seed=seed,
                                overrides=overrides)
        return load_planner(policy, spec=spec, device=device, seed=seed)
    except (KeyError, ValueError, FileNotFoundError) as exc:
        raise CliError(str(exc).strip("'\"")) from None
