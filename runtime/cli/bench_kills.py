"""`rtdiff bench kills`: kill -9 the controller or the plant server at seeded random moments.

A realtime served plant and one `rtdiff run` controller (tracing to its own directory) run
as child processes. The bench kills one of them with SIGKILL at a random moment, restarts
it, and measures whether and how fast control comes back, with no manual step in between:

- `controller` kills: the plant's watchdog must reach its safe action within `watchdog_ms`
  + one period of the last command it applied; a new controller, started at once, must take
  control by itself (the dead one's lease lapses after `lease_ms`, its hello is retried until
  then). Every other one of these kills (the first, the third, ...) waits for the trace
  writer's next temp file to appear (inotify on the trace directory) after its random
  moment and lands at once, while a chunk is being written; every
  controller traces with small chunks (`--trace-chunk`, 8 ticks by default, one write every
  80 ms at 100 Hz) so that writes are frequent. Whether a kill did land mid-write is read
  from the disk afterwards: the write's temp file is still there.
- `server` kills: the `rtdiff serve` process dies with its plant; a new one is started on
  the same address after a random delay (`--restart-s`, well within the client's 10 s
  `give_up_s`), and the running controller must regain control on its own (libzmq
  reconnects; the new server does not know the session, says `unknown_peer`, and the client
  says hello again).

Times come from the plant side. The server runs in a child of this module
(`python -m runtime.cli.bench_kills serve ...`), which is `rtdiff serve` itself with one
addition: a recorder that wraps the plant's `apply` and reports on stdout, as JSON lines, the
server's `SafetyEvent`s (`t_ns` of the trip, `last_valid_ns` of the last command applied,
both read from the server's own record) and the first controller command applied after the
start or after a safe action (the command's `t_ns`, the instant the server handed it to the
plant). Those are the plant's own clock readings at the moments that matter, with no log
parsing and no polling resolution, which is why the bench does not read `rtdiff serve`'s
stderr instead (its lines carry wall-clock times to the millisecond and the silence in
0.1 ms). The server's clock (`MonotonicClock`) and this process's (`time.perf_counter_ns`)
are both CLOCK_MONOTONIC on Linux, so the bench's own instants (a kill, a process start)
compare with the plant's exactly.

The controller children are plain `rtdiff run --trace DIR --trace-chunk N` processes
(`rtdiff run` writes 1024-tick chunks by default, one write every 10 s at 100 Hz).

After every controller kill the killed trace is read back (`runtime.trace.read_trace`): it
must be readable, say that it was not closed cleanly, bound the records lost (`lost_max`)
and name the chunk being written (`writing`). The records actually lost are counted from
the kill's instant: ticks scheduled before it and not on disk. The last controller is
stopped with SIGINT at the end and its trace must read back complete.

Output: a summary, or with `--json` one object; per-kill records in `OUT/kills.json`, the
summary in `OUT/summary.json`, each child's stderr in `OUT/logs/`.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from runtime.cli import CliError
from runtime.cli.bench_deadline import PLANNERS, csv_list, runnable
from runtime.cli.bench_stalls import run_argv
from runtime.cli.plantproc import free_port, wait_for_server
from runtime.files import atomic_write_text, record_result
from runtime.rt import read_steal_s
from runtime.stats import percentiles
from runtime.trace import read_trace

TARGETS = ("controller", "server")
MODULE = "runtime.cli.bench_kills"
READY_TIMEOUT_S = 60.0  # a controller loads its model and ticks within this
REGAIN_TIMEOUT_S = 30.0  # control must be back within this after a restart, or the kill fails
MIN_DELAY_S = 0.3  # a kill comes at least this long after control was regained


# ---- the child: `rtdiff serve` with a recorder ----------------------------------------------


class _Recorder:
    """In the served plant's process: wraps `plant.apply` and reports, as JSON lines on
    stdout, the server's safety events and the first controller command applied after the
    start or after a safe action, each with its server-clock time."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.want_first = True
        self._lines: list[str] = []
        self._cond = threading.Condition()
        plant = server.core.plant
        apply = plant.apply

        def recorded_apply(cmd: Any) -> None:
            apply(cmd)
            if cmd.fallback == "watchdog":  # the server's safe action
                self.want_first = True
            elif cmd.fallback != "plan" and self.want_first:  # a controller's command
                self.want_first = False
                self._put({"ev": "first", "t_ns": int(cmd.t_ns), "src_seq": cmd.src_seq})

        plant.apply = recorded_apply
        self._put({"ev": "up", "t_ns": int(server.clock.now_ns()),
                   "rate_hz": float(server.core.spec.rate_hz)})
        threading.Thread(target=self._run, name="rtdiff-kills-recorder", daemon=True).start()

    def _put(self, item: dict[str, Any]) -> None:
        with self._cond:
            self._lines.append(json.dumps(item))
            self._cond.notify()

    def _run(self) -> None:
        seen = 0
        while True:
            with self._cond:
                self._cond.wait(timeout=0.01)
                lines, self._lines = self._lines, []
            events = self.server.events
            for ev in events[seen:]:
                lines.append(json.dumps({"ev": "safety", "kind": ev.kind, "t_ns": int(ev.t_ns),
                                         "last_valid_ns": int(ev.last_valid_ns),
                                         "detail": ev.detail}))
            seen = len(events)
            if lines:
                sys.stdout.write("\n".join(lines) + "\n")
                sys.stdout.flush()


def _child_main(argv: list[str]) -> int:
    """`serve ARGS...`: `rtdiff serve ARGS` with the recorder."""
    from runtime.cli import main

    if argv[:1] == ["serve"]:
        import hw_bridge

        base = hw_bridge.PlantServer

        class RecordedServer(base):  # type: ignore[misc,valid-type]
            def __init__(self, *a: Any, **kw: Any) -> None:
                super().__init__(*a, **kw)
                self.recorder = _Recorder(self)

        hw_bridge.PlantServer = RecordedServer  # type: ignore[misc]
        return main(["serve", *argv[1:]])
    sys.stderr.write(f"usage: python -m {MODULE} serve ARGS...\n")
    return 2


# ---- watching for a chunk write -------------------------------------------------------------


class TempFileWatch:
    """Wakes when a temp file of `runtime.files.atomic_write` (`.tmp-*.part`) is created in
    `directory`: inotify where the C library has it (microseconds after the writer's open),
    else a 1 ms poll."""

    IN_CREATE = 0x100

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.fd = -1
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
            if fd >= 0:
                if libc.inotify_add_watch(fd, os.fsencode(directory), self.IN_CREATE) >= 0:
                    self.fd = fd
                else:
                    os.close(fd)
        except (OSError, AttributeError):
            self.fd = -1

    @staticmethod
    def _is_temp(name: str) -> bool:
        return name.startswith(".tmp-") and name.endswith(".part")

    def _names(self) -> list[str]:
        """The names of the files created since the last call (inotify)."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        names, off = [], 0
        while off + 16 <= len(data):
            _, _, _, n = struct.unpack_from("iIII", data, off)
            names.append(data[off + 16 : off + 16 + n].rstrip(b"\0").decode(errors="replace"))
            off += 16 + n
        return names

    def drain(self) -> None:
        if self.fd >= 0:
            while self._names():
                pass

    def wait(self, timeout_s: float) -> bool:
        """True as soon as a temp file is created (after the last `drain`); False on timeout."""
        end = time.monotonic() + timeout_s
        before = set() if self.fd >= 0 else set(self._listing())
        while (left := end - time.monotonic()) > 0:
            if self.fd >= 0:
                ready, _, _ = select.select([self.fd], [], [], left)
                if ready and any(self._is_temp(n) for n in self._names()):
                    return True
            else:
                if set(self._listing()) - before:
                    return True
                time.sleep(0.001)
        return False

    def _listing(self) -> list[str]:
        with contextlib.suppress(OSError):
            return [n for n in os.listdir(self.directory) if self._is_temp(n)]
        return []

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


# ---- the processes ------------------------------------------------------------------------


class ServerProc:
    """One recorded plant server process; its recorder's events, parsed, in `events`."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.t_start_ns = time.perf_counter_ns()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._log = log
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        try:
            wait_for_server(self.proc)  # then drains (discards) the rest of its stderr
        except BaseException:
            self.kill()
            raise

    def _read(self, stream: IO[str]) -> None:
        with open(self._log, "a") as log:
            for line in stream:
                log.write(line)
                with contextlib.suppress(json.JSONDecodeError):
                    item = json.loads(line)
                    with self._lock:
                        self.events.append(item)

    def find(self, pred: Callable[[dict[str, Any]], bool],
             timeout_s: float) -> dict[str, Any] | None:
        """The first event satisfying `pred`, waiting up to `timeout_s` for it."""
        end = time.monotonic() + timeout_s
        while True:
            with self._lock:
                for ev in self.events:
                    if pred(ev):
                        return ev
            if time.monotonic() >= end:
                return None
            time.sleep(0.005)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()


class ControllerProc:
    """One `rtdiff run` controller tracing to `trace_dir`, its stderr in `log`."""

    def __init__(self, argv: list[str], trace_dir: Path, ready: Path, log: Path) -> None:
        self.trace_dir, self.ready = trace_dir, ready
        trace_dir.mkdir(parents=True)  # before the start, so that a watch can be put on it
        self.watch = TempFileWatch(trace_dir)
        self.t_start_ns = time.perf_counter_ns()
        with open(log, "w") as f:
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=f,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> bool:
        end = time.monotonic() + timeout_s
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                return False
            time.sleep(0.005)
        return True

    def kill(self) -> int:
        """SIGKILL; returns the instant it was sent (CLOCK_MONOTONIC ns)."""
        t = time.perf_counter_ns()
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.watch.close()
        return t

    def interrupt(self, timeout_s: float = 30.0) -> None:
        """SIGINT (the run closes its trace), then SIGKILL if it does not exit."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self.watch.close()


# ---- the bench ----------------------------------------------------------------------------


def trace_check(trace_dir: Path, t_kill_ns: int | None, period_ns: int) -> dict[str, Any]:
    """A trace read back after a kill (or a clean stop, `t_kill_ns` None): readable, the
    reader's bound (`lost_max`) and chunk being written, the records lost counted from the
    kill's instant (ticks scheduled before it and not on disk), and whether the kill left a
    chunk's temp file (it landed mid-write)."""
    try:
        data = read_trace(trace_dir)
    except (ValueError, OSError) as exc:
        return {"readable": False, "error": str(exc)}
    n = len(data.records)
    if t_kill_ns is None:
        lost = data.lost_max  # exact after a clean close
    elif n:
        last = int(data.records["scheduled_ns"][-1])
        lost = max(0, -(-(t_kill_ns - last) // period_ns) - 1)
    else:
        lost = None
    return {
        "readable": True,
        "records": n,
        "complete": data.complete,
        "clean_close": bool(data.meta.get("clean_close", False)),
        "lost": lost,
        "lost_max": data.lost_max,
        "lost_within_bound": lost is None or lost <= data.lost_max,
        "writing": data.writing,
        "warning": data.warning,
    }


class KillBench:
    """The plant server, the current controller, and the kill loop; see the module doc."""

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args = args
        self.out = out
        self.rng = random.Random(args.seed)
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.rt = None if args.no_rt else args.rt_priority
        policy_t, overrides, self.extra = PLANNERS.get(args.planner, (args.planner, {}, {}))
        if overrides:
            raise CliError(f"{args.planner}: planner overrides are not supported by bench kills")
        self.policy = policy_t.format(task=args.task)
        self.n_servers = 0
        self.n_controllers = 0
        self.server: ServerProc | None = None
        self.controller: ControllerProc | None = None
        self.regained_ns = 0  # when the current controller last took control (plant clock)
        # long enough for the whole bench; the bench stops the last controller itself
        self.seconds = args.kills * (args.delay_s + args.restart_s + 15.0) + 120.0
        (out / "logs").mkdir(parents=True, exist_ok=True)
        (out / "traces").mkdir(exist_ok=True)

    # -- processes --------------------------------------------------------------------------

    def start_server(self) -> ServerProc:
        argv = [sys.executable, "-m", MODULE, "serve", "--task", self.args.task, "--realtime",
                "--bind", self.address, "--seed", str(self.args.seed),
                "--watchdog-ms", f"{self.args.watchdog_ms:g}"]
        argv += ["--rt-priority", str(min(99, self.rt + 1))] if self.rt else []
        argv += ["--rate", f"{self.args.rate:g}"] if self.args.rate else []
        self.n_servers += 1
        self.server = ServerProc(argv, self.out / "logs" / f"server-{self.n_servers:03d}.log")
        return self.server

    def start_controller(self) -> ControllerProc:
        self.n_controllers += 1
        name = f"c{self.n_controllers:03d}"
        ready = self.out / "logs" / f"{name}.ready"
        argv = run_argv(self.policy, self.address, seed=self.args.seed + self.n_controllers,
                         seconds=self.seconds, plan_ahead=True, rt=self.rt, ready=str(ready),
                         extra=self.extra)
        argv += ["--trace", str(self.out / "traces" / name),
                 "--trace-chunk", str(self.args.trace_chunk)]
        self.controller = ControllerProc(argv, self.out / "traces" / name, ready,
                                         self.out / "logs" / f"{name}.log")
        return self.controller

    def first_after(self, server: ServerProc, t_ns: int, timeout_s: float) -> int | None:
        ev = server.find(lambda e: e["ev"] == "first" and e["t_ns"] >= t_ns, timeout_s)
        return None if ev is None else int(ev["t_ns"])

    def take_control(self, ctl: ControllerProc, server: ServerProc) -> int | None:
        """Wait until `ctl` ticks and the plant applies its first command; that instant."""
        if not ctl.wait_ready():
            return None
        first = self.first_after(server, ctl.t_start_ns, REGAIN_TIMEOUT_S)
        if first is not None:
            self.regained_ns = first
        return first

    # -- kills -----------------------------------------------------------------------------

    def kill_controller(self, i: int, aim: bool, period_ns: int) -> dict[str, Any]:
        ctl, server = self.controller, self.server
        assert ctl is not None and server is not None
        time.sleep(self.rng.uniform(MIN_DELAY_S, self.args.delay_s))
        aimed = False
        if aim:
            ctl.watch.drain()
            aimed = ctl.watch.wait(timeout_s=2.0)
        t_kill = ctl.kill()
        trace = trace_check(ctl.trace_dir, t_kill, period_ns)
        trace["mid_chunk"] = trace.get("writing") is not None
        wd_ns = round(self.args.watchdog_ms * 1e6)
        # the trip that covers the kill: the first after control was last (re)gained
        since = self.latest_first(server, t_kill)
        trip = server.find(lambda e: e["ev"] == "safety" and e["t_ns"] > since,
                           timeout_s=(wd_ns + 4 * period_ns) / 1e9 + 2.0)
        rec: dict[str, Any] = {"kill": i, "target": "controller", "aimed_at_write": aim,
                               "write_seen": aimed, "t_kill_ns": t_kill, "trace": trace,
                               "bound_ms": (wd_ns + period_ns) / 1e6}
        if trip is not None:
            safe_after = (trip["t_ns"] - trip["last_valid_ns"]) / 1e6
            rec.update(safety_kind=trip["kind"], last_cmd_ns=trip["last_valid_ns"],
                       safe_ns=trip["t_ns"], safe_after_ms=safe_after,
                       within_bound=safe_after <= rec["bound_ms"])
        else:
            rec.update(safety_kind=None, safe_after_ms=None, within_bound=False)
        new = self.start_controller()
        first = self.take_control(new, server)
        rec.update(new_start_ns=new.t_start_ns, first_cmd_ns=first,
                   regain_ms=None if first is None else (first - new.t_start_ns) / 1e6,
                   outage_ms=None if first is None else (first - t_kill) / 1e6)
        return rec

    def latest_first(self, server: ServerProc, before_ns: int) -> int:
        firsts = [e["t_ns"] for e in list(server.events)
                  if e["ev"] == "first" and e["t_ns"] <= before_ns]
        return max(firsts, default=0)

    def kill_server(self, i: int) -> dict[str, Any]:
        ctl, old = self.controller, self.server
        assert ctl is not None and old is not None
        time.sleep(self.rng.uniform(MIN_DELAY_S, self.args.delay_s))
        t_kill = time.perf_counter_ns()
        old.kill()
        delay = self.rng.uniform(0.05, self.args.restart_s)
        time.sleep(delay)
        server = self.start_server()
        up = server.find(lambda e: e["ev"] == "up", timeout_s=5.0)
        first = self.first_after(server, server.t_start_ns, REGAIN_TIMEOUT_S)
        rec: dict[str, Any] = {"kill": i, "target": "server", "t_kill_ns": t_kill,
                               "restart_delay_s": delay, "new_start_ns": server.t_start_ns,
                               "up_ns": None if up is None else up["t_ns"],
                               "first_cmd_ns": first,
                               "controller_alive": ctl.proc.poll() is None}
        rec["regain_ms"] = None if first is None else (first - server.t_start_ns) / 1e6
        rec["reconnect_ms"] = (None if first is None or up is None
                               else (first - up["t_ns"]) / 1e6)
        rec["outage_ms"] = None if first is None else (first - t_kill) / 1e6
        if first is not None:
            self.regained_ns = first
        return rec

    def run(self) -> list[dict[str, Any]]:
        targets = csv_list(self.args.targets)
        records: list[dict[str, Any]] = []
        server = self.start_server()
        period_ns = round(1e9 / self.rate_hz())
        ctl = self.start_controller()
        if self.take_control(ctl, server) is None:
            raise CliError(f"the first controller did not take control (log: "
                           f"{self.out / 'logs' / 'c001.log'})")
        n_ctl = 0
        for i in range(self.args.kills):
            target = targets[i % len(targets)]
            if target == "controller":
                n_ctl += 1
                rec = self.kill_controller(i, aim=n_ctl % 2 == 1, period_ns=period_ns)
            else:
                rec = self.kill_server(i)
            records.append(rec)
            sys.stderr.write(_line(rec) + "\n")
            sys.stderr.flush()
            atomic_write_text(self.out / "kills.json", json.dumps(records, indent=1))
            if rec.get("first_cmd_ns") is None or self.controller is None or (
                    self.controller.proc.poll() is not None):
                # control did not come back: a fresh controller, so the next kills still count
                if self.controller is not None:
                    self.controller.kill()
                c = self.start_controller()
                assert self.server is not None
                self.take_control(c, self.server)
        return records

    def rate_hz(self) -> float:
        """The plant's rate, as its first server said when it came up."""
        assert self.server is not None
        up = self.server.find(lambda e: e["ev"] == "up", timeout_s=10.0)
        if up is None:
            raise CliError("the plant server did not report its rate")
        return float(up["rate_hz"])

    def close(self) -> dict[str, Any] | None:
        """Stop the last controller (SIGINT: its trace closes) and the server; the last
        trace's check, or None when no controller ran."""
        final = None
        if self.controller is not None:
            self.controller.interrupt()
            final = trace_check(self.controller.trace_dir, None, 1)
        if self.server is not None:
            self.server.stop()
        return final


def _line(rec: dict[str, Any]) -> str:
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    if rec["target"] == "controller":
        tr = rec["trace"]
        return (f"kill {rec['kill']:>3} controller: safe after {ms(rec['safe_after_ms'])} ms "
                f"(bound {rec['bound_ms']:g}), regained {ms(rec['regain_ms'])} ms after the "
                f"restart; trace {'ok' if tr.get('readable') else 'UNREADABLE'}, lost "
                f"{tr.get('lost')} (<= {tr.get('lost_max')})"
                + (f", mid-write of {tr['writing']}" if tr.get("writing") else ""))
    return (f"kill {rec['kill']:>3} server: restarted after {rec['restart_delay_s']:.2f} s, "
            f"regained {ms(rec['regain_ms'])} ms after the restart "
            f"({ms(rec['reconnect_ms'])} ms after it served)")


def summarize(records: list[dict[str, Any]], final: dict[str, Any] | None,
              bound_ms: float) -> dict[str, Any]:
    """The bench's figures from its per-kill records and the last controller's trace."""
    kills = {t: sum(r["target"] == t for r in records) for t in TARGETS}
    ctl = [r for r in records if r["target"] == "controller"]
    safe = [r["safe_after_ms"] for r in ctl if r.get("safe_after_ms") is not None]
    regains = [r["regain_ms"] for r in records if r.get("regain_ms") is not None]

    def pct(xs: list[float]) -> dict[str, float | None]:
        if not xs:
            return {"max": None, "p50": None}
        p = percentiles(xs, (50.0,))
        return {"max": p["max"], "p50": p["p50"]}

    traces = [r["trace"] for r in ctl] + ([final] if final is not None else [])
    read = [t for t in traces if t.get("readable")]
    lost = [int(t["lost"]) for t in read if t.get("lost") is not None]
    return {
        "kills": kills,
        "safe_after_ms": {**pct(safe), "bound_ms": bound_ms,
                          "all_within_bound": None if not ctl else len(safe) == len(ctl)
                          and all(bool(r.get("within_bound")) for r in ctl)},
        "regain_ms": {
            **pct(regains),
            "by_target": {t: pct([r["regain_ms"] for r in records if r["target"] == t
                                  and r.get("regain_ms") is not None]) for t in TARGETS},
        },
        "outage_ms": pct([r["outage_ms"] for r in records if r.get("outage_ms") is not None]),
        "reconnect_ms": pct([r["reconnect_ms"] for r in records
                             if r.get("reconnect_ms") is not None]),
        "regained": sum(r.get("first_cmd_ns") is not None for r in records),
        "not_regained": sum(r.get("first_cmd_ns") is None for r in records),
        "traces": {
            "read": len(read),
            "unreadable": len(traces) - len(read),
            "records_lost": {"sum": sum(lost), "max": max(lost, default=0)},
            "all_within_reader_bound": all(t.get("lost_within_bound") for t in read),
            "last_complete": None if final is None else bool(final.get("complete")),
        },
        "mid_chunk_kills": sum(bool(r["trace"].get("mid_chunk")) for r in ctl),
        "aimed_at_write": sum(bool(r.get("aimed_at_write")) for r in ctl),
    }


def report(r: dict[str, Any]) -> str:
    def ms(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    s, g, t = r["safe_after_ms"], r["regain_ms"], r["traces"]
    by = g["by_target"]
    return "\n".join([
        f"rtdiff bench kills: {r['kills']['controller']} controller and {r['kills']['server']} "
        f"server kill -9s on {r['task']} at {r['rate_hz']:g} Hz ({r['policy']}); "
        f"control regained after {r['regained']}, not after {r['not_regained']}",
        f"  safe action after the last command (ms)  p50 {ms(s['p50'])}  max {ms(s['max'])}  "
        f"bound {s['bound_ms']:g}: "
        + {True: "ok", False: "FAIL", None: "no controller kill"}[s["all_within_bound"]],
        f"  control regained after a restart (ms)  controller p50 "
        f"{ms(by['controller']['p50'])} max {ms(by['controller']['max'])};  server p50 "
        f"{ms(by['server']['p50'])} max {ms(by['server']['max'])}",
        f"  traces read {t['read']}, unreadable {t['unreadable']}; records lost sum "
        f"{t['records_lost']['sum']} max {t['records_lost']['max']} (all within the reader's "
        f"bound: {t['all_within_reader_bound']}); {r['mid_chunk_kills']} kill(s) mid-write "
        f"({r['aimed_at_write']} aimed)",
        f"  host steal {'-' if r['steal_s'] is None else format(r['steal_s'], '.2f')} s; "
        f"per-kill records in {r['out']}/kills.json",
    ])


def cli_bench_kills(args: argparse.Namespace) -> int:
    targets = csv_list(args.targets)
    if not targets or any(t not in TARGETS for t in targets):
        raise CliError(f"--targets must be a comma list of {', '.join(TARGETS)}, "
                       f"got {args.targets!r}")
    if not runnable(args.planner):
        raise CliError(f"unknown planner {args.planner!r}; known: {sorted(PLANNERS)}")
    if args.delay_s <= MIN_DELAY_S:
        raise CliError(f"--delay-s must be above {MIN_DELAY_S:g} s, got {args.delay_s:g}")
    if args.restart_s >= 5.0:
        raise CliError("--restart-s must be well within the client's 10 s give-up: < 5 s")
    out = Path(args.out or time.strftime("runs/kills/%Y%m%dT%H%M%SZ", time.gmtime()))
    if (out / "traces").exists() and any((out / "traces").iterdir()):
        raise CliError(f"{out} already holds a kills run; use a fresh --out")
    steal0 = read_steal_s()
    bench = KillBench(args, out)
    try:
        records = bench.run()
        rate = bench.rate_hz()
    finally:
        final = bench.close()
    steal1 = read_steal_s()
    bound_ms = args.watchdog_ms + 1e3 / rate
    result: dict[str, Any] = {
        "task": args.task, "planner": args.planner, "policy": bench.policy, "rate_hz": rate,
        "watchdog_ms": args.watchdog_ms, "trace_chunk": args.trace_chunk, "seed": args.seed,
        "rt_priority": bench.rt, "out": str(out),
        **summarize(records, final, bound_ms),
        "steal_s": None if steal0 is None or steal1 is None else steal1 - steal0,
    }
    atomic_write_text(out / "summary.json", json.dumps(result, indent=1))
    if args.results:
        record_result(args.results, "kills", result)
    print(json.dumps(result) if args.json else report(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
