"""`rtdiff bench fuzz`: coverage-guided fuzzing of the bridge with atheris (libFuzzer).

The targets, their invariants, the input format and the mutator are `hw_bridge.fuzzing`'s
(read its docstring). libFuzzer owns the process it runs in (it exits when done, and at the
first crash), so each target runs in a child, `python -m hw_bridge.fuzzing TARGET`, one after
the other, and this process reads what the child reports on stderr:

- libFuzzer's status lines (`#N ... cov: E ft: F ... exec/s: R`): the inputs executed so far,
  the coverage (E edges of the instrumented bridge modules, F features); summarised on stderr
  every few seconds and kept whole in `OUT/log-TARGET.txt`;
- its final stats (`-print_final_stats=1`): inputs executed, new corpus units, peak RSS;
- a crash: the harness's `rtdiff-fuzz: violation KIND: DETAIL` line (an invariant broke) or
  libFuzzer's `ERROR: libFuzzer: ...` (a timeout, out of memory, a signal), and the file the
  crashing input was written to (`OUT/crashes/TARGET-crash-<sha1>`);
- the harness's own counts (`RTDIFF_FUZZ_STATS`, `OUT/stats-TARGET.json`): frames handled and
  what they reached (commands applied, plans, takeovers, watchdog trips, states handed out).

Each target starts from its seed corpus (`hw_bridge.fuzzing.seeds`), written to
`OUT/corpus/TARGET/` (cleared first, so that a run is reproducible from `--seed`: libFuzzer adds
the inputs that found new coverage there). A crash makes the bench exit 1 after the report,
naming the input; reproduce it with `python -m hw_bridge.fuzzing TARGET FILE` (libFuzzer, the
traceback), `... TARGET --replay FILE` (without atheris) or read it with `... TARGET --show
FILE`.

JSON (`--json`): `messages` (inputs run, all targets), `messages_per_target` (the `--messages`
asked), `crashes`, `invalid_applied` (crashes where the plant was handed a command it must
never get: invalid, duplicate or stale), `coverage` (`edges`: the sum over targets, each
counting the edges it reached in the same instrumented modules; `per_target`), `targets` (per
target: `messages`, `frames`, `crashes`, `invalid_applied`, `crash` (kind, detail, reason,
file, reproduce) or null, `edges`, `features`, `corpus_units`, `new_units`, `seconds` (wall,
the child's start and its seeds included), `execs_per_s` (inputs / seconds),
`libfuzzer_execs_per_s` (libFuzzer's own average), `peak_rss_mb`, `steal_s`, `reached`),
`seed`, `atheris` (its version), `fault` (`RTDIFF_FUZZ_FAULT`: a deliberate defect the harness
injects to show it catches it; null in a real run), `steal_s`, `out`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from hw_bridge.fuzzing import TARGETS, VIOLATION_MARK, seeds
from runtime.cli import CliError
from runtime.cli.bench_deadline import csv_list
from runtime.files import atomic_write_text, record_result
from runtime.rt import read_steal_s

MAX_LEN = 16_384  # bytes per input: up to 48 frames of a few hundred bytes, plans included
UNIT_TIMEOUT_S = 25  # one input running longer is a crash (libFuzzer's -timeout)
RSS_LIMIT_MB = 2_048
APPLY_KINDS = ("invalid_applied", "duplicate_applied", "stale_applied")
PROGRESS_EVERY_S = 5.0

_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+(?:cov: (\d+) ft: (\d+) )?(?:corp: (\d+)/)?")
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)")
_WRITTEN = re.compile(r"Test unit written to (\S+)")
_ERROR = re.compile(r"==\d+== ERROR: libFuzzer: (.*)")


def atheris_version() -> str:
    """The installed atheris; a one-line CliError when it is missing (a dev dependency)."""
    if importlib.util.find_spec("atheris") is None:
        raise CliError("the atheris package is not installed: pip install 'atheris>=2.3' "
                       "(a dev dependency: pip install -e '.[dev]')")
    try:
        return metadata.version("atheris")
    except metadata.PackageNotFoundError:
        return "unknown"


class _Parse:
    """What a child's stderr said, line by line."""

    def __init__(self) -> None:
        self.execs = 0
        self.edges = 0
        self.features = 0
        self.corpus = 0
        self.stats: dict[str, int] = {}
        self.files: list[str] = []
        self.error: str | None = None
        self.kind: str | None = None
        self.detail: str | None = None
        self.rate = 0

    def line(self, text: str) -> None:
        m = _STATUS.match(text)
        if m:
            self.execs = int(m[1])
            if m[3] is not None:
                self.edges, self.features = int(m[3]), int(m[4])
            if m[5] is not None:
                self.corpus = int(m[5])
            r = re.search(r"exec/s: (\d+)", text)
            if r:
                self.rate = int(r[1])
            return
        m = _STAT.match(text)
        if m:
            self.stats[m[1]] = int(m[2])
            return
        if text.startswith(VIOLATION_MARK):
            kind, _, detail = text[len(VIOLATION_MARK):].strip().partition(": ")
            if self.kind is None:
                self.kind, self.detail = kind, detail
            return
        m = _ERROR.search(text)
        if m:
            self.error = m[1].strip()
            return
        m = _WRITTEN.search(text)
        if m:
            self.files.append(m[1])


def _write_seeds(corpus: Path, target: str) -> int:
    if corpus.exists():
        shutil.rmtree(corpus)
    corpus.mkdir(parents=True)
    inputs = seeds(target)
    for i, data in enumerate(inputs):
        (corpus / f"seed-{i:03d}").write_bytes(data)
    return len(inputs)


def inherited_rss_mb() -> int:
    """The peak RSS (MB) a child of this process starts with as its own. Linux carries the
    parent's high-water mark into a child across fork and exec (`getrusage`'s `ru_maxrss`,
    which libFuzzer's memory limit reads), so a child of a large process would report an
    out-of-memory on its first input."""
    try:
        import resource
    except ImportError:  # not POSIX: nothing is inherited that we can read
        return 0
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) // 1024  # KB on Linux


def fuzz_argv(target: str, *, messages: int, seed: int, out: Path,
              max_seconds: float | None, inherited_mb: int = 0) -> list[str]:
    """The child's command line (libFuzzer's seed must not be 0: that asks for a random one).
    The memory limit is `RSS_LIMIT_MB` over the `inherited_mb` the child starts with."""
    argv = [sys.executable, "-m", "hw_bridge.fuzzing", target, f"-runs={messages}",
            f"-seed={seed + 1}", "-print_final_stats=1", f"-max_len={MAX_LEN}",
            f"-timeout={UNIT_TIMEOUT_S}", f"-rss_limit_mb={RSS_LIMIT_MB + inherited_mb}",
            f"-artifact_prefix={out / 'crashes' / target}-"]
    if max_seconds is not None:
        argv.append(f"-max_total_time={max(1, round(max_seconds))}")
    return [*argv, str(out / "corpus" / target)]


def run_target(target: str, *, messages: int, seed: int, out: Path,
               max_seconds: float | None) -> dict[str, Any]:
    """One target in a child process; its figures (module docstring, `targets`)."""
    n_seeds = _write_seeds(out / "corpus" / target, target)
    (out / "crashes").mkdir(parents=True, exist_ok=True)
    stats_path = out / f"stats-{target}.json"
    stats_path.unlink(missing_ok=True)
    env = {**os.environ, "RTDIFF_FUZZ_STATS": str(stats_path), "PYTHONUNBUFFERED": "1"}
    argv = fuzz_argv(target, messages=messages, seed=seed, out=out, max_seconds=max_seconds,
                     inherited_mb=inherited_rss_mb())
    parse = _Parse()
    steal0 = read_steal_s()
    t0 = time.monotonic()
    next_note = t0 + PROGRESS_EVERY_S
    sys.stderr.write(f"fuzz {target}: {messages} inputs from {n_seeds} seeds ...\n")
    with open(out / f"log-{target}.txt", "w") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, errors="replace", env=env)
        assert proc.stderr is not None
        try:
            for text in proc.stderr:
                log.write(text)
                parse.line(text.rstrip("\n"))
                now = time.monotonic()
                if now >= next_note:
                    next_note = now + PROGRESS_EVERY_S
                    sys.stderr.write(f"fuzz {target}: {parse.execs} inputs, cov {parse.edges} "
                                     f"ft {parse.features}, {parse.rate} inputs/s\n")
            rc = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    seconds = time.monotonic() - t0
    steal1 = read_steal_s()
    crash_files = [f for f in parse.files if not Path(f).name.startswith("slow-unit-")]
    if rc != 0 and not crash_files:
        raise CliError(f"fuzz {target}: the harness exited with {rc} without a crash input: "
                       f"{parse.error or 'see ' + str(out / f'log-{target}.txt')}")
    execs = parse.stats.get("number_of_executed_units", parse.execs)
    try:
        reached: dict[str, int] = json.loads(stats_path.read_text())
    except (OSError, ValueError):
        reached = {}
    crash: dict[str, Any] | None = None
    if crash_files:
        file = crash_files[-1]
        crash = {
            "kind": parse.kind or "libfuzzer",
            "detail": parse.detail or parse.error,
            "reason": parse.error,
            "file": file,
            "reproduce": f"python -m hw_bridge.fuzzing {target} {file}",
        }
    invalid = int(crash is not None and crash["kind"] in APPLY_KINDS)
    return {
        "messages": execs,
        "frames": int(reached.get("frames", 0)),
        "crashes": len(crash_files),
        "invalid_applied": invalid,
        "crash": crash,
        "edges": parse.edges,
        "features": parse.features,
        "corpus_units": parse.corpus,
        "new_units": parse.stats.get("new_units_added", 0),
        "seconds": round(seconds, 3),
        "execs_per_s": round(execs / seconds, 1) if seconds > 0 else None,
        "libfuzzer_execs_per_s": parse.stats.get("average_exec_per_sec"),
        "peak_rss_mb": parse.stats.get("peak_rss_mb"),
        "steal_s": None if steal0 is None or steal1 is None else round(steal1 - steal0, 3),
        "reached": {k: v for k, v in sorted(reached.items()) if k not in ("inputs", "frames")},
    }


def table(result: dict[str, Any]) -> str:
    lines = [f"{'target':<8}{'inputs':>10}{'frames':>10}{'crashes':>9}{'edges':>7}"
             f"{'features':>10}{'s':>8}{'inputs/s':>10}{'steal s':>9}"]
    for name, t in result["targets"].items():
        steal = f"{t['steal_s']:>9.2f}" if t["steal_s"] is not None else f"{'-':>9}"
        rate = f"{t['execs_per_s']:>10.0f}" if t["execs_per_s"] is not None else f"{'-':>10}"
        lines.append(f"{name:<8}{t['messages']:>10}{t['frames']:>10}{t['crashes']:>9}"
                     f"{t['edges']:>7}{t['features']:>10}{t['seconds']:>8.1f}{rate}{steal}")
    return "\n".join(lines)


def cli_bench_fuzz(args: argparse.Namespace) -> int:
    targets = csv_list(args.target)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise CliError(f"--target: unknown target(s) {unknown or [args.target]}; known: "
                       f"{','.join(TARGETS)}")
    if len(set(targets)) != len(targets):
        raise CliError(f"--target names a target twice: {args.target!r}")
    version = atheris_version()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    steal0 = read_steal_s()
    per: dict[str, dict[str, Any]] = {}
    for target in targets:
        per[target] = run_target(target, messages=args.messages, seed=args.seed, out=out,
                                 max_seconds=args.max_seconds)
        t = per[target]
        sys.stderr.write(f"fuzz {target}: {t['messages']} inputs in {t['seconds']:.1f} s "
                         f"({t['execs_per_s']} /s), cov {t['edges']} ft {t['features']}, "
                         f"{'crash: ' + t['crash']['kind'] if t['crash'] else 'no crash'}\n")
    steal1 = read_steal_s()
    result: dict[str, Any] = {
        "messages": sum(t["messages"] for t in per.values()),
        "messages_per_target": args.messages,
        "crashes": sum(t["crashes"] for t in per.values()),
        "invalid_applied": sum(t["invalid_applied"] for t in per.values()),
        "coverage": {
            "edges": sum(t["edges"] for t in per.values()),
            "features": sum(t["features"] for t in per.values()),
            "per_target": {name: t["edges"] for name, t in per.items()},
        },
        "targets": per,
        "seed": args.seed,
        "atheris": version,
        "fault": os.environ.get("RTDIFF_FUZZ_FAULT") or None,
        "steal_s": None if steal0 is None or steal1 is None else round(steal1 - steal0, 3),
        "out": str(out),
    }
    atomic_write_text(out / "summary.json", json.dumps(result, indent=1))
    if args.results:
        record_result(args.results, "fuzz", result)
    if args.json:
        print(json.dumps(result))
    else:
        print(table(result))
    crashed = [(name, t["crash"]) for name, t in per.items() if t["crash"] is not None]
    for name, crash in crashed:
        sys.stderr.write(f"rtdiff bench fuzz: {name}: {crash['kind']}: {crash['detail']}; "
                         f"input {crash['file']} (reproduce: {crash['reproduce']})\n")
    return 1 if crashed else 0
