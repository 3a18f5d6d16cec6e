"""`rtdiff check --plant SPEC [--policy SPEC]`: a user's plant or policy against rtdiff's
contracts (`runtime.check`), one line per finding; exit 1 when any fails."""

from __future__ import annotations

import argparse
import json

from runtime.check import Finding, check_plant, check_policy
from runtime.cli import CliError
from runtime.cli.plants import make_planner, make_plant
from runtime.specs import SpecError, parse_kv


def cli_check(args: argparse.Namespace) -> int:
    try:
        plant_args = parse_kv(args.plant_arg, flag="--plant-arg")
        policy_args = parse_kv(args.policy_arg, flag="--policy-arg")
    except SpecError as exc:
        raise CliError(str(exc)) from None

    def plant(mode: str) -> object:
        return make_plant(args.plant, plant_args, mode=mode,  # type: ignore[arg-type]
                          seed=args.seed, rate_hz=args.rate)

    report: dict[str, list[Finding]] = {}
    if args.policy is None:
        report["plant"] = check_plant(plant(args.mode), mode=args.mode,  # type: ignore[arg-type]
                                      ticks=args.ticks, seconds=args.seconds, seed=args.seed)
    else:
        p = plant("lockstep")
        planner = make_planner(args.policy, p, seed=args.seed,  # type: ignore[arg-type]
                               policy_args=policy_args, strict=True)
        report["policy"] = check_policy(planner, p, ticks=args.ticks,  # type: ignore[arg-type]
                                        seed=args.seed)
    failed = sum(not f.ok for fs in report.values() for f in fs)
    if args.json:
        print(json.dumps({
            "plant": args.plant, "policy": args.policy, "failed": failed,
            "findings": {k: [{"name": f.name, "ok": f.ok, "warn": f.warn, "text": f.text}
                             for f in fs] for k, fs in report.items()},
        }))
    else:
        for what, findings in report.items():
            print(f"rtdiff check: {what} {args.policy if what == 'policy' else args.plant}")
            for f in findings:
                print(f"  {f.line()}")
        print(f"rtdiff check: {'FAILED, ' + str(failed) + ' problem(s)' if failed else 'passed'}")
    return 1 if failed else 0
