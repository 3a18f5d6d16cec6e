"""Push-recovery ablation of the rolling planner's re-noising, in lockstep on a simulated plant.

    python -m policies.evaluate --policy rolling:double-pendulum --episodes 12 --json
    python -m policies.evaluate dither --task bimodal --episodes 50 --json

The second form runs several planners on `bimodal` and reports, beside success, how often per
episode the executed lateral command switches sign before the block (dithering between modes).

Variants of the same checkpoint (only the planner's re-noising differs):
- `renoise`: surprise-driven re-noising as calibrated in the checkpoint (the default planner);
- `none`: never re-noise (threshold at infinity): the plan only ever shifts and refines;
- `blank`: any surprise above the threshold restarts the plan from pure noise (level 1 for every
  token), the blank-slate alternative.

Push recovery: the task reports a push in `info["push"]` on every tick it acts. For each push
(a run of push ticks) we count the ticks from the push's first tick until the state is back
within tolerance: every angle in `--angle-idx` within `--tol-rad` of upright (0). A push that
has not recovered before the next push or the episode's end counts as not recovered (its ticks
are reported as censored, not averaged in). Needs `sims` (imported only here, at the CLI
boundary), one torch thread.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from policies.config import PlannerConfig
from policies.model import Denoiser
from policies.rolling import RollingPlanner
from runtime.protocols import Command

VARIANTS = ("renoise", "none", "blank")


def variant_config(cfg: PlannerConfig, variant: str) -> PlannerConfig:
    if variant == "renoise":
        return cfg
    if variant == "none":
        return replace(cfg, surprise_threshold=1e30, surprise_full=2e30)
    if variant == "blank":
        return replace(cfg, renoise_max=1.0, surprise_full=cfg.surprise_threshold * (1 + 1e-6))
    raise ValueError(f"unknown variant {variant!r} (known: {', '.join(VARIANTS)})")


def run_episodes(
    planner: Any,
    plant: Any,
    *,
    episodes: int,
    seed: int,
    steps_per_tick: int,
    angle_idx: tuple[int, ...],
    tol_rad: float,
) -> dict[str, Any]:
    successes = 0
    recover: list[int] = []
    censored = 0
    renoise_ticks = ticks = 0
    for ep in range(episodes):
        obs = plant.reset(seed=seed + ep)
        planner.reset(obs)
        k = 0
        push_start: int | None = None  # tick the current push began, while not yet recovered
        in_push = False
        while True:
            if k > 0:
                planner.observe(obs)
                ticks += 1
                renoise_ticks += getattr(planner, "renoise_level", 0.0) > 0.0
            for _ in range(steps_per_tick):
                if planner.refine(0) <= 0:
                    break
            plant.apply(Command(seq=k, t_ns=0, action=planner.action().copy(), deadline_ns=0))
            obs = plant.observe()
            k += 1
            pushed = "push" in obs.info and np.any(np.asarray(obs.info["push"]) != 0)
            if pushed and not in_push:
                if push_start is not None:
                    censored += 1  # a new push before recovering from the last one
                push_start = k
            in_push = bool(pushed)
            if push_start is not None and not in_push:
                ang = np.abs(np.asarray(obs.state)[list(angle_idx)])
                if np.all(ang < tol_rad):
                    recover.append(k - push_start)
                    push_start = None
            if obs.done:
                if push_start is not None:
                    censored += 1
                break
        successes += bool(obs.info.get("success", False))
    rec = np.asarray(recover, dtype=np.float64)
    pushes = len(recover) + censored
    return {
        "episodes": episodes,
        "success_rate": successes / episodes,
        "pushes": pushes,
        "recovered": len(recover),
        "recover_ticks": {
            "mean": round(float(rec.mean()), 1) if rec.size else None,
            "p50": float(np.percentile(rec, 50)) if rec.size else None,
            "p90": float(np.percentile(rec, 90)) if rec.size else None,
        },
        "renoise_tick_fraction": round(renoise_ticks / max(1, ticks), 3),
    }


def run_dither(
    planner: Any,
    plant: Any,
    *,
    episodes: int,
    seed: int,
    steps_per_tick: int,
    lateral_idx: int,
    along_idx: int,
    until: float,
    deadband: float,
) -> dict[str, Any]:
    """Success and mode switches: sign changes of the lateral command (|a| > deadband) while the
    agent is still before the obstacle (state[along_idx] < until)."""
    successes, switches = 0, []
    for ep in range(episodes):
        obs = plant.reset(seed=seed + ep)
        planner.reset(obs)
        k, n_sw, last_sign = 0, 0, 0
        while True:
            if k > 0:
                planner.observe(obs)
            for _ in range(steps_per_tick):
                if planner.refine(0) <= 0:
                    break
            a = planner.action().copy()
            if float(np.asarray(obs.state)[along_idx]) < until and abs(a[lateral_idx]) > deadband:
                sign = 1 if a[lateral_idx] > 0 else -1
                n_sw += last_sign != 0 and sign != last_sign
                last_sign = sign
            plant.apply(Command(seq=k, t_ns=0, action=a, deadline_ns=0))
            obs = plant.observe()
            k += 1
            if obs.done:
                break
        successes += bool(obs.info.get("success", False))
        switches.append(n_sw)
    sw = np.asarray(switches, dtype=np.float64)
    return {
        "episodes": episodes,
        "success_rate": successes / episodes,
        "switches_per_episode": round(float(sw.mean()), 2),
        "episodes_with_switch": int((sw > 0).sum()),
    }


def main_dither(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m policies.evaluate dither")
    p.add_argument(
        "--policies", default="rolling:bimodal,chunked:bimodal,pertick:bimodal,mlp:bimodal"
    )
    p.add_argument("--task", default="bimodal")
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--steps-per-tick", type=int, default=1)
    p.add_argument("--lateral-idx", type=int, default=0)
    p.add_argument("--along-idx", type=int, default=1)
    p.add_argument("--until", type=float, default=1.0, help="count switches while along < this")
    p.add_argument("--deadband", type=float, default=0.1)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from policies import load_planner
    from sims import make_plant
    from sims.experts import make_expert

    out: dict[str, Any] = {"task": args.task, "seed": args.seed, "results": {}}
    for policy in args.policies.split(","):
        plant = make_plant(args.task)
        planner: Any = None
        try:
            spec = plant.spec()
            if policy == "expert":
                planner = make_expert(spec.name, spec)
            else:
                planner = load_planner(policy, spec=spec, seed=args.seed)
            res = run_dither(
                planner,
                plant,
                episodes=args.episodes,
                seed=args.seed,
                steps_per_tick=args.steps_per_tick,
                lateral_idx=args.lateral_idx,
                along_idx=args.along_idx,
                until=args.until,
                deadband=args.deadband,
            )
        finally:
            plant.close()
            close = getattr(planner, "close", None)
            if close is not None:
                close()
        out["results"][policy] = res
        sys.stderr.write(f"{policy}: {res}\n")
    print(json.dumps(out) if args.json else out)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["dither"]:
        return main_dither(argv[1:])
    p = argparse.ArgumentParser(
        prog="python -m policies.evaluate", description=__doc__.split("\n")[0]
    )
    p.add_argument("--policy", default="rolling:double-pendulum")
    p.add_argument("--task", default="double-pendulum")
    p.add_argument("--episodes", type=int, default=12)
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--steps-per-tick", type=int, default=1)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--angle-idx", default="1,2", help="state indices of the angles to watch")
    p.add_argument("--tol-rad", type=float, default=0.05)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from policies import load_checkpoint, resolve_policy
    from sims import make_plant

    directory, _ = resolve_policy(args.policy)
    ckpt = load_checkpoint(directory)
    if not isinstance(ckpt.model, Denoiser):
        raise SystemExit("the push ablation needs a denoiser checkpoint")
    angle_idx = tuple(int(i) for i in args.angle_idx.split(","))
    out: dict[str, Any] = {
        "policy": args.policy,
        "task": args.task,
        "steps_per_tick": args.steps_per_tick,
        "seed": args.seed,
        "tol_rad": args.tol_rad,
        "variants": {},
    }
    for variant in args.variants.split(","):
        plant = make_plant(args.task)
        try:
            planner = RollingPlanner(
                ckpt.model,
                ckpt.normalizer,
                plant.spec(),
                variant_config(ckpt.planner, variant),
                seed=args.seed,
            )
            res = run_episodes(
                planner,
                plant,
                episodes=args.episodes,
                seed=args.seed,
                steps_per_tick=args.steps_per_tick,
                angle_idx=angle_idx,
                tol_rad=args.tol_rad,
            )
        finally:
            plant.close()
        out["variants"][variant] = res
        if not args.json:
            print(variant, res, flush=True)
        else:
            sys.stderr.write(f"{variant}: {res}\n")
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
