"""`rtdiff collect`: record a dataset (Minari) of a plant driven by a policy.

`--task T` records the built-in task's expert with its DART settings (`sims.collect.collect`).
`--plant SPEC --policy SPEC` records any plant (`runtime.cli.plants`: sim:, mjcf:, gym:, py:,
or a served plant's endpoint) driven by any policy (expert, a checkpoint, a py: policy), with
no perturbation unless `--dart-prob` asks for it; the dataset takes the plant spec's
dimensions, limits and rate, which `rtdiff train --data` reads. `CollectError` and `CliError`
are the one-line errors.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from runtime.cli import CliError
from runtime.cli.plants import make_planner, make_plant
from runtime.specs import SpecError, parse_kv


def cli_collect(args: argparse.Namespace) -> int:
    from sims.collect import CollectError, collect_from_args, collect_plant

    plant_text = getattr(args, "plant", None)
    if bool(plant_text) == bool(getattr(args, "task", None)):
        raise CliError("give one of --task TASK (its expert) or --plant SPEC --policy SPEC")
    if not plant_text:
        if getattr(args, "policy", None):
            raise CliError("--policy goes with --plant; --task records the task's expert")
        try:
            return collect_from_args(args)
        except CollectError as exc:
            raise CliError(str(exc)) from None
    if getattr(args, "workers", 1) != 1:
        raise CliError("--workers goes with --task (an expert collection)")
    if not args.policy:
        raise CliError("--plant needs --policy SPEC (what drives the plant while recording)")
    if args.dart_prob is not None and not 0.0 <= args.dart_prob <= 1.0:
        raise CliError(f"--dart-prob must be in [0, 1], got {args.dart_prob}")
    try:
        plant_args = parse_kv(args.plant_arg, flag="--plant-arg")
        policy_args = parse_kv(args.policy_arg, flag="--policy-arg")
    except SpecError as exc:
        raise CliError(str(exc)) from None
    plant = make_plant(plant_text, plant_args, mode="lockstep", seed=args.seed)
    try:
        planner = make_planner(args.policy, plant, seed=args.seed, policy_args=policy_args,
                               strict=True)
        from runtime.userpolicy import PolicyError

        try:
            meta = collect_plant(
                plant, planner, out=Path(args.out), episodes=args.episodes, seed=args.seed,
                dart_prob=args.dart_prob or 0.0, plant_text=plant_text, policy_text=args.policy,
            )
        except (CollectError, PolicyError, ImportError) as exc:
            raise CliError(str(exc)) from None
        except ValueError as exc:  # e.g. an output directory that is not a dataset
            raise CliError(str(exc)) from None
    finally:
        plant.close()
    print(f"wrote {meta['episodes']} episodes ({meta['ticks']} ticks) of {meta['task']} "
          f"({meta['rate_hz']:g} Hz) to {args.out}; success {meta['success_rate']:.0%}")
    return 0
