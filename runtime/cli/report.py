"""`rtdiff report RUN_DIR --out DIR`: plots and a markdown table from recorded runs.

A run directory holds one JSON per run (the `rtdiff run --json` object) in `RUN_DIR/runs/` and,
for runs recorded with a trace, the trace directory named by the JSON's `trace` field (made by
`TraceRing`, with the `sidecar.npz` of states, plan noise levels and events). `rtdiff bench
deadline` and `rtdiff demo` write this layout.

Figures (PNG, matplotlib's Agg backend, no display needed):
- `latency_hist.png`: lateness and compute-time histograms per planner (log counts: the tail is
  the story);
- `rate_sweep.png`: miss rate and success rate against control rate, per task and planner;
- `plan_heatmap.png`: the rolling buffer's per-token noise levels over time, pushes marked;
- `plan_lookahead_error.png`: beside it, the plan's predicted-state error against lookahead
  (what the plan at tick t predicted for tick t+j against the state observed at t+j, in each
  state dimension's std over the run), mean and p90 over ticks, one line per run whose
  sidecar holds predicted states (`runtime.sidecar.lookahead_error`);
- `trajectories.png`: states and actions over time, each planner against the expert.
`report.md` carries the same figures, a table with one row per run, and the lookahead
error's numbers per run and lookahead.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from runtime.cli import CliError
from runtime.sidecar import EVENT_GOAL, EVENT_PUSH, LookaheadError, load_sidecar, lookahead_error
from runtime.trace import read_trace


def load_runs(run_dir: Path, failed: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Every run JSON under `run_dir/runs/` (or `run_dir` itself), sorted by name. A run's
    relative `trace` is looked for under `run_dir` first, then where it was written from.

    Runs that could not run (`bench deadline` keeps them with an `error`) go to `failed`.
    """
    src = run_dir / "runs" if (run_dir / "runs").is_dir() else run_dir
    runs = []
    for path in sorted(src.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise CliError(f"{path} is not valid JSON: {exc}") from None
        if isinstance(data, dict) and "error" in data and failed is not None:
            failed.append({"name": data.get("name", path.stem), "error": data["error"]})
            continue
        if not isinstance(data, dict) or "lateness_ms" not in data:
            continue  # summaries and other files
        data.setdefault("name", path.stem)
        trace = data.get("trace")
        if trace and not Path(trace).is_absolute() and (run_dir / trace).exists():
            data["trace"] = str(run_dir / trace)  # a run directory's own layout
        # else as written: relative to where `rtdiff run --trace` ran, or absolute
        runs.append(data)
    return runs


def _label(run: dict[str, Any]) -> str:
    """`bench deadline`'s planner name (e.g. chunked-k50) if given, else the policy's kind;
    runs with a CPU hog beside them are their own series (`rolling + hog`)."""
    name = str(run.get("planner") or str(run.get("policy", "?")).split(":")[0])
    return f"{name} + hog" if run.get("hog") else name


def _table(runs: list[dict[str, Any]]) -> str:
    head = ("| task | planner | rate Hz | mode | ticks | misses | miss % | plant late "
            "| late p50 ms | late p99 ms | late max ms | compute p50 ms | compute p99 ms "
            "| steps/tick | re-plans/s | sent after (steps) | episodes | success % | return |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in runs:
        lat, comp = r["lateness_ms"], r["compute_ms"]
        rows.append(
            f"| {r.get('task', '?')} | {_label(r)} | {r.get('rate_hz', 0):g} "
            f"| {r.get('mode', '?')} "
            f"| {r['ticks']} | {r['misses']} | {100 * r['miss_rate']:.3f} "
            f"| {r.get('plant_misses', '-')} | {lat['p50']:.3f} | {lat['p99']:.3f} "
            f"| {lat['max']:.3f} | {comp['p50']:.3f} | {comp['p99']:.3f} "
            f"| {r['steps_per_tick']['mean']:.2f} | {r.get('replans_per_s', 0.0):.1f} "
            f"| {r.get('emit_after_steps', '-')} | {r.get('episodes', 0)} "
            f"| {100 * r.get('success_rate', 0.0):.1f} | {r.get('mean_return', 0.0):.1f} |"
        )
    return "\n".join(rows)


def _trace_data(run: dict[str, Any]) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    trace = run.get("trace")
    if not trace or not Path(trace).is_dir():
        return None, None
    return read_trace(trace).records, load_sidecar(trace)


def timing_labels(runs: list[dict[str, Any]]) -> list[str]:
    """Each run's series in the timing histograms: its planner label, with its rate when the
    same planner ran at more than one (a 250 Hz tick's compute is not a 100 Hz tick's)."""
    rates: dict[str, set[float]] = defaultdict(set)
    for run in runs:
        rates[_label(run)].add(float(run.get("rate_hz", 0)))
    return [
        f"{_label(r)} @ {float(r.get('rate_hz', 0)):g} Hz" if len(rates[_label(r)]) > 1
        else _label(r)
        for r in runs
    ]


def plot_latency(runs: list[dict[str, Any]], out: Path) -> Path | None:
    import matplotlib.pyplot as plt

    # Only the timing columns are pooled: runs of different tasks have different action sizes.
    late: dict[str, list[np.ndarray]] = defaultdict(list)  # label -> [(N,) ms]
    comp: dict[str, list[np.ndarray]] = defaultdict(list)
    for run, label in zip(runs, timing_labels(runs), strict=True):
        rec, _ = _trace_data(run)
        if rec is not None and len(rec):
            late[label].append(rec["lateness_ns"] / 1e6)
            comp[label].append((rec["emit_ns"] - rec["start_ns"]) / 1e6)
    if not late:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    lat = {k: np.concatenate(v) for k, v in late.items()}
    cmp_ = {k: np.concatenate(v) for k, v in comp.items()}
    # Shared bin edges, so that the planners' histograms can be compared bar for bar.
    late_bins = np.histogram_bin_edges(np.concatenate(list(lat.values())), bins=60)
    comp_bins = np.histogram_bin_edges(np.concatenate(list(cmp_.values())), bins=60)
    for label in lat:
        axes[0].hist(lat[label], bins=late_bins, histtype="step", label=label, log=True)
        axes[1].hist(cmp_[label], bins=comp_bins, histtype="step", label=label, log=True)
    axes[0].set(xlabel="lateness: actual - scheduled tick start (ms)", ylabel="ticks (log)",
                title="Tick start lateness")
    axes[1].set(xlabel="compute: tick start to command sent (ms)", ylabel="ticks (log)",
                title="Compute time per tick")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = out / "latency_hist.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_rate_sweep(runs: list[dict[str, Any]], out: Path) -> Path | None:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    cells: dict[tuple[str, str], dict[float, list[dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for run in runs:
        cells[(str(run.get("task", "?")), _label(run))][float(run.get("rate_hz", 0))].append(run)
    tasks = sorted({t for t, _ in cells})
    if not any(len(v) > 1 for v in cells.values()):
        return None  # a sweep needs at least two rates for some planner
    fig, axes = plt.subplots(len(tasks), 2, figsize=(12, 4 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        series = [(label, by_rate) for (t, label), by_rate in sorted(cells.items()) if t == task]
        for i, (label, by_rate) in enumerate(series):
            rates = sorted(by_rate)
            miss = [100 * np.mean([r["miss_rate"] for r in by_rate[x]]) for x in rates]
            style = "--" if label.endswith("+ hog") else "-"
            # hollow markers, each series a size smaller: planners with the same figures
            # (0 % misses, 100 % success) show as rings around one point, not one dot
            mark = dict(marker="o", markersize=max(3.0, 11.0 - 1.6 * i), fillstyle="none",
                        markeredgewidth=1.5, clip_on=False)
            axes[row, 0].plot(rates, miss, style, label=label, **mark)
            # success only where some episode finished (a run shorter than an episode says
            # nothing about success)
            done = [(x, [r for r in by_rate[x] if r.get("episodes", 0)]) for x in rates]
            xs = [x for x, rs in done if rs]
            succ = [100 * sum(r["success_rate"] * r["episodes"] for r in rs)
                    / sum(r["episodes"] for r in rs) for _, rs in done if rs]
            axes[row, 1].plot(xs, succ, style, label=label, **mark)
        measured = sorted({x for _, by_rate in series for x in by_rate})
        axes[row, 0].set_yscale("symlog", linthresh=0.1)
        axes[row, 0].set(xscale="log", xlabel="control rate (Hz)", ylim=(0, 100),
                         ylabel="deadline misses (%, symlog)", title=f"{task}: miss rate")
        axes[row, 1].set(xscale="log", xlabel="control rate (Hz)", ylabel="success (%)",
                         ylim=(-5, 105), title=f"{task}: task success")
        for ax in axes[row]:
            ax.set_xticks(measured, [f"{x:g}" for x in measured])  # the rates measured
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    path = out / "rate_sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_heatmap(runs: list[dict[str, Any]], out: Path, *, max_ticks: int = 600) -> Path | None:
    import matplotlib.pyplot as plt

    rolling_first = sorted(runs, key=lambda r: not str(r.get("policy", "")).startswith("roll"))
    for run in rolling_first:
        _, side = _trace_data(run)
        if side is None or side["levels"].shape[1] == 0 or len(side["levels"]) < 2:
            continue
        levels = side["levels"][:max_ticks]  # (N, H)
        events = side["events"][:max_ticks]
        rate = float(run.get("rate_hz", 1.0))
        t_end = len(levels) / rate
        fig, ax = plt.subplots(figsize=(12, 4))
        im = ax.imshow(levels.T, aspect="auto", origin="lower", cmap="magma", vmin=0, vmax=1,
                       extent=(0.0, t_end, -0.5, levels.shape[1] - 0.5),
                       interpolation="nearest")
        pushes = np.flatnonzero(events & EVENT_PUSH) / rate
        goals = np.flatnonzero(events & EVENT_GOAL) / rate
        for i, x in enumerate(pushes):
            ax.axvline(x, color="cyan", lw=0.8, alpha=0.8, label="push" if i == 0 else None)
        for i, x in enumerate(goals):
            ax.axvline(x, color="lime", lw=0.8, ls="--", label="goal switch" if i == 0 else None)
        ax.set(xlabel="time (s)", ylabel="plan token j (steps ahead)",
               title=f"{_label(run)} on {run.get('task', '?')}: per-token noise level τ "
                     "after each tick (0 clean, 1 pure noise)")
        fig.colorbar(im, ax=ax, label="noise level τ")
        if len(pushes) or len(goals):
            ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        path = out / "plan_heatmap.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
    return None


def lookahead_errors(runs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], LookaheadError]]:
    """Each run's predicted-state error against lookahead, for the runs whose sidecar holds
    predicted states with at least one pair that counts. Only the ticks the trace still holds
    count (their `skipped` column tells a skipped tick)."""
    found = []
    for run in runs:
        rec, side = _trace_data(run)
        pred = None if side is None else side.get("predicted")
        if rec is None or side is None or pred is None or pred.ndim != 3 or not pred.shape[1]:
            continue
        n = min(len(rec), len(side["state"]))
        err = lookahead_error(side["state"][:n], pred[:n], side["predicted_n"][:n],
                              side["events"][:n], skipped=rec["skipped"][:n])
        if err.pairs.any():
            found.append((run, err))
    return found


def plot_lookahead_error(
    errors: list[tuple[dict[str, Any], LookaheadError]], out: Path
) -> Path | None:
    """`plan_lookahead_error.png`: error against lookahead in seconds, mean (solid) and p90
    (dashed) in one colour per run."""
    import matplotlib.pyplot as plt

    if not errors:
        return None
    fig, ax = plt.subplots(figsize=(12, 4.5))
    for i, (run, err) in enumerate(errors):
        rate = float(run.get("rate_hz", 1.0))
        has = np.flatnonzero(err.pairs)
        x = (has + 1) / rate
        color = f"C{i % 10}"
        ax.plot(x, err.mean[has], "-o", color=color, ms=3, lw=1.2, label=f"{run['name']} mean")
        ax.plot(x, err.p90[has], "--", color=color, lw=1.0, label=f"{run['name']} p90")
    ax.set(xlabel="lookahead: how far ahead the plan predicted (s)",
           ylabel="|predicted - observed| / state std",
           title="Predicted-state error against lookahead: the plan at tick t for tick t+j vs "
                 "what happened (mean over state dims; mean and p90 over ticks)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2 if len(errors) > 3 else 1)
    fig.tight_layout()
    path = out / "plan_lookahead_error.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _lookahead_table(errors: list[tuple[dict[str, Any], LookaheadError]]) -> list[str]:
    """The lookahead error's numbers in markdown: one row per run and lookahead j."""
    md = ["Predicted-state error against lookahead: the state the plan at tick t predicted for "
          "tick t+j against the state observed at t+j, |predicted - observed| in each state "
          "dimension's std over the run, averaged over the dimensions; mean and p90 over the "
          "ticks whose prediction reached t+j within one episode (`pairs`).", "",
          "| run | j | lookahead ms | mean | p90 | pairs |", "|---|---|---|---|---|---|"]
    for run, err in errors:
        for row in err.to_json(float(run.get("rate_hz", 1.0))):
            md.append(f"| {run['name']} | {row['j']} | {1e3 * row['lookahead_s']:.1f} "
                      f"| {row['mean']:.3f} | {row['p90']:.3f} | {row['pairs']} |")
    return [*md, ""]


def plot_trajectories(runs: list[dict[str, Any]], out: Path, *, max_ticks: int = 500,
                      dims: int = 3) -> Path | None:
    """States and first action over time, every planner against the expert, on one seed."""
    import matplotlib.pyplot as plt

    traced: list[tuple[dict[str, Any], np.ndarray, dict[str, Any]]] = []
    for r in runs:
        rec, side = _trace_data(r)
        if rec is not None and side is not None and len(side["state"]):
            traced.append((r, rec, side))
    if not traced:
        return None
    # the rate most runs share (a demo's side-by-side planners, not its one faster run)
    rates = [float(t[0].get("rate_hz", 0)) for t in traced]
    common = max(set(rates), key=lambda r: (rates.count(r), -r))
    at_rate = [t for t in traced if float(t[0].get("rate_hz", 0)) == common]
    learned = sorted((t for t in at_rate if t[0].get("policy") != "expert"),
                     key=lambda t: not str(t[0].get("policy", "")).startswith("roll"))
    first = learned[0] if learned else at_rate[0]
    key = (first[0].get("task"), first[0].get("seed"))
    same = [t for t in traced if (t[0].get("task"), t[0].get("seed")) == key
            and float(t[0].get("rate_hz", 0)) == float(first[0].get("rate_hz", 0))]
    # every planner of that task, seed and rate, one line each (the expert last, the reference)
    series = sorted(same, key=lambda t: (t[0].get("policy") == "expert", _label(t[0])))[:5]
    rate = float(first[0].get("rate_hz", 1.0))
    n_state = min(dims, first[2]["state"].shape[1])
    fig, axes = plt.subplots(n_state + 1, 1, figsize=(12, 2.2 * (n_state + 1)), sharex=True)
    for run, rec, side in series:
        n = min(max_ticks, len(rec), len(side["state"]))
        t = np.arange(n) / rate
        for d in range(n_state):
            axes[d].plot(t, side["state"][:n, d], label=_label(run), lw=1)
        axes[-1].plot(t, rec["action"][:n, 0], label=_label(run), lw=1)
    for d in range(n_state):
        axes[d].set(ylabel=f"state[{d}]")
    axes[-1].set(ylabel="action[0] (plant units)", xlabel="time (s)")
    axes[0].set_title(f"{key[0]}: states and first action over time, seed {key[1]}")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path = out / "trajectories.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_report(run_dir: Path, out: Path) -> list[Path]:
    """Write the figures and `report.md` for the runs in `run_dir`; returns the files made."""
    import matplotlib

    matplotlib.use("Agg")
    failed: list[dict[str, Any]] = []
    runs = load_runs(run_dir, failed)
    if not runs:
        raise CliError(f"{run_dir} holds no run JSON (expected RUN_DIR/runs/*.json)")
    out.mkdir(parents=True, exist_ok=True)
    errors = lookahead_errors(runs)
    made = [p for p in (plot_latency(runs, out), plot_rate_sweep(runs, out),
                        plot_heatmap(runs, out), plot_lookahead_error(errors, out),
                        plot_trajectories(runs, out)) if p is not None]
    md = [f"# rtdiff report: {run_dir}", "", f"{len(runs)} runs.", "", _table(runs), ""]
    if failed:
        md += [f"{len(failed)} runs did not run:", ""]
        md += [f"- `{f['name']}`: {f['error']}" for f in failed] + [""]
    for p in made:
        md += [f"![{p.stem}]({p.name})", ""]
        if p.name == "plan_lookahead_error.png":
            md += _lookahead_table(errors)
    report = out / "report.md"
    report.write_text("\n".join(md))
    return [*made, report]


def cli_report(args: argparse.Namespace) -> int:
    if getattr(args, "benchmarks", False):
        return _benchmarks_page(args)
    if args.run_dir is None or args.out is None:
        raise CliError("give RUN_DIR and --out (or --benchmarks)")
    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise CliError(f"{run_dir} is not a directory")
    made = make_report(run_dir, Path(args.out))
    print(f"report written to {Path(args.out) / 'report.md'} ({len(made)} files)")
    return 0


def _benchmarks_page(args: argparse.Namespace) -> int:
    from runtime.cli.benchpage import render_page
    from runtime.files import atomic_write_text

    results = Path(args.results)
    if not results.is_dir():
        raise CliError(f"{results} is not a directory of benchmark results")
    page = render_page(results)
    out = Path(args.out or "docs/benchmarks.md")
    if args.check:
        have = out.read_text() if out.is_file() else ""
        if have != page:
            print(f"{out} differs from what {results} gives: run `rtdiff report --benchmarks`")
            return 1
        print(f"{out} matches {results}")
        return 0
    atomic_write_text(out, page)
    print(f"wrote {out} from {len(list(results.glob('*.json')))} result files in {results}")
    return 0
