"""`rtdiff serve --plant SPEC`: any local plant behind the bridge (`hw_bridge`).

`--plant` takes the specs of `runtime.cli.plants` (sim:TASK, mjcf:PATH.xml, gym:ENV_ID,
py:MODULE:ATTR for a user's Driver or Plant, with `--plant-arg KEY=VALUE`); `--task T` is the
short form of `--plant sim:T`. This wiring lives in the CLI face because it is the one place
allowed to join two packages: `hw_bridge` serves any `runtime.Plant` and never imports `sims`.
Both are imported lazily, so `rtdiff --help` stays light and a `py:` driver is served on a
computer without MuJoCo or torch.

`--realtime` runs physics on the wall clock (the plant paces itself; the server ticks just after
it, runs the watchdog and publishes each new state); without it the plant is lockstep: each
command steps it once. `--keys DIR` turns CurveZMQ on with the allowlist in DIR (see
`rtdiff keys`). Safety events and reconnects are logged on stderr; a one-line summary with the
counters is printed when the server stops (`--seconds`, Ctrl-C, SIGTERM). `--audit FILE` wraps
the plant in `hw_bridge.audit.AuditPlant` and writes what it counted, with the server's counters
and safety events, to FILE at the stop.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Literal

from runtime.cli import CliError
from runtime.cli.plants import make_plant, plant_spec_of
from runtime.clock import MonotonicClock
from runtime.files import atomic_write_text
from runtime.rt import try_realtime
from runtime.specs import SpecError, parse_kv


def cli_serve(args: argparse.Namespace) -> int:
    from hw_bridge import PlantServer

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    # First, so that the plant's pacing thread and ZeroMQ's I/O thread inherit the policy.
    if getattr(args, "rt_priority", None):
        for line in try_realtime(args.rt_priority):
            sys.stderr.write(f"rtdiff serve: {line}\n")
    mode: Literal["lockstep", "realtime"] = "realtime" if args.realtime else "lockstep"
    if args.keys is not None and not Path(args.keys, "server.key_secret").exists():
        raise CliError(f"--keys {args.keys}: no server.key_secret there (run `rtdiff keys`)")
    if bool(getattr(args, "plant", None)) == bool(getattr(args, "task", None)):
        raise CliError("give one of --plant SPEC or --task TASK")
    plant_text = getattr(args, "plant", None) or f"sim:{args.task}"
    try:
        plant_args = parse_kv(getattr(args, "plant_arg", None) or [], flag="--plant-arg")
    except SpecError as exc:
        raise CliError(str(exc)) from None
    # The plant's pacing thread shares the GIL with the server loop: a spin that kept it
    # would hold every command that arrives in the last 100 us before a tick until after
    # the tick, and the server would count it late.
    # A plan is executed for at most the watchdog's time after its observation (the
    # watchdog then stops the plant anyway), unless told otherwise.
    watchdog_ms = getattr(args, "watchdog_ms", 100.0)
    max_age_ms = getattr(args, "plan_max_age_ms", None) or watchdog_ms
    plant = make_plant(plant_text, plant_args, mode=mode, seed=args.seed,
                       clock=MonotonicClock(spin_ns=100_000, yield_in_spin=True),
                       rate_hz=getattr(args, "rate", None),
                       plan_max_age_s=max_age_ms / 1e3, remote=False)
    rate = getattr(args, "rate", None)
    if rate is not None and abs(plant_spec_of(plant).rate_hz - rate) > 1e-6 * rate:
        got = plant_spec_of(plant).rate_hz
        plant.close()
        raise CliError(f"--plant {plant_text} runs at {got:g} Hz and does not take --rate {rate:g}")
    if mode == "realtime":
        # The plant's thread and the server loop share one GIL: a command arriving while the
        # plant thread runs Python waits up to the switch interval (CPython's default 5 ms,
        # several 500 Hz periods) before the server can hand it over, and then counts as late.
        sys.setswitchinterval(min(100e-6, plant_spec_of(plant).period_s / 20))
    audit = None
    if getattr(args, "audit", None):
        from hw_bridge.audit import AuditPlant

        audit = AuditPlant(plant)
    try:
        server = PlantServer(
            audit if audit is not None else plant,
            bind=args.bind,
            mode=mode,
            watchdog_ms=getattr(args, "watchdog_ms", 100.0),
            keys_dir=args.keys,
            seed=args.seed,
        )
    except (OSError, ValueError) as exc:
        plant.close()
        raise CliError(str(exc)) from None
    if audit is not None:
        audit.attach(server.core)  # sessions keyed by the controller's connection
    spec = plant_spec_of(plant)
    sys.stderr.write(
        f"rtdiff serve: {spec.name} ({mode}, {spec.rate_hz:g} Hz) on {server.address}"
        f"{' with CurveZMQ' if args.keys else ''}\n"
    )
    timer = None
    if args.seconds is not None:
        timer = threading.Timer(args.seconds, server.stop)
        timer.daemon = True
        timer.start()
    if threading.current_thread() is threading.main_thread():  # a service manager's stop
        signal.signal(signal.SIGTERM, lambda *_: server.stop())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
    finally:
        if timer is not None:
            timer.cancel()
        counters = server.counters
        if audit is not None:
            _write_audit(args.audit, audit.summary(), server, counters)
        server.close()
        plant.close()
    sys.stderr.write(f"rtdiff serve: stopped; counters {json.dumps(counters)}\n")
    return 0


def _write_audit(path: str, summary: dict[str, Any], server: Any,
                 counters: dict[str, int]) -> None:
    summary["server_counters"] = counters
    summary["events"] = [{"kind": e.kind, "t_ns": int(e.t_ns),
                          "last_valid_ns": int(e.last_valid_ns)} for e in server.events]
    summary["rate_hz"] = float(server.core.spec.rate_hz)
    summary["watchdog_ms"] = float(server.config.watchdog_ms)
    atomic_write_text(Path(path), json.dumps(summary))
