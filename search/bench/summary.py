"""Writes the benchmark summary: the Markdown section of BENCHMARKS.md (between markers, so text
written around it by hand stays), ``summary.csv``, ``trials.csv`` and the plots.

Confidence intervals are paired: the best trial's exported file and the teacher's are both run
on every test image, and the interval is that of the difference of two proportions measured on
the same images (cached per artifact in ``paired.json``).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import io
import json
import math
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from rich.console import Console

from search.bench.plan import BASELINE_FILE, METHOD_LABELS, BenchPlan
from search.bench.results import (
    BEGIN,
    END,
    PROFILE_FACTOR,
    PUBLISHED,
    TARGET_GOALS,
    TARGET_WORDS,
    BenchSummary,
    MethodResult,
    PairedDrop,
    gather,
    paired_drop,
    test_drop,
)
from search.trials.context import teacher_pass_seconds
from search.errors import UserError
from search.reporting.report import find_chromium, take_screenshot
from search.study import TrialRecord, load_study, open_storage, trial_records
from search.workloads.workload import Workload
from stages.files import write_atomic
from stages.measure import OnnxRunner, onnx_correct

PLOT_HTML, PLOT_PNG = "bench.html", "bench.png"
SUMMARY_CSV, TRIALS_CSV, PAIRED_JSON = "summary.csv", "trials.csv", "paired.json"
METHOD_COLOURS = {"profiles": "#8c564b", "random": "#7f7f7f", "search": "#1f77b4"}


def load_records(plan: BenchPlan) -> dict[str, list[TrialRecord]]:
    storage = open_storage(plan.storage, create=False)
    out = {}
    for study in plan.studies():
        try:
            out[study.name] = trial_records(load_study(study.name, storage))
        except UserError:
            continue
    return out


def _baseline(plan: BenchPlan) -> tuple[Path, dict[str, float]]:
    path = plan.folder / BASELINE_FILE
    if not path.is_file():
        raise UserError(f"no benchmark {plan.name!r} yet ({path} is missing); run it without --report-only first")
    saved = json.loads(path.read_text())
    return Path(saved["onnx"]), {k: float(v) for k, v in saved["metrics"].items()}


def _correct(path: Path, workload: Workload, threads: int) -> np.ndarray:
    """Per-image correctness of the ONNX file at ``path`` on the test split."""
    return onnx_correct(OnnxRunner(path, threads), workload.data.test, batch_size=512)


def add_paired(summary: BenchSummary, workload: Workload, teacher_onnx: Path, results: Path) -> BenchSummary:
    """Each best trial's paired test drop (cached in ``paired.json`` by artifact and mtime)."""
    cache_path = results / PAIRED_JSON
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    teacher = None
    notes = list(summary.notes)
    targets = []
    for block in summary.targets:
        methods = []
        for m in block.methods:
            art = Path(m.best.artifact) if m.best is not None and m.best.artifact else None
            if art is None or not art.is_file():
                methods.append(m)
                continue
            key = f"{art}:{art.stat().st_mtime_ns}"
            if key not in cache:
                if teacher is None:
                    teacher = _correct(teacher_onnx, workload, summary.plan.threads)
                student = _correct(art, workload, summary.plan.threads)
                p = paired_drop(teacher, student)
                cache[key] = {"n": p.n, "lost": p.lost, "gained": p.gained}
            p = PairedDrop(**cache[key])
            stored = test_drop(summary.baseline, m.best)  # type: ignore[arg-type]
            if abs(stored - p.drop) > 0.011:
                notes.append(
                    f"{m.study} trial {m.best.number}: test drop re-measured {p.drop:.2f} pt, "  # type: ignore[union-attr]
                    f"stored {stored:.2f} pt"
                )
            methods.append(dataclasses.replace(m, paired=p))
        targets.append(dataclasses.replace(block, methods=methods))
    results.mkdir(parents=True, exist_ok=True)
    write_atomic(cache_path, json.dumps(cache, indent=1, sort_keys=True))
    return dataclasses.replace(summary, targets=targets, notes=notes)


def write_summary(
    plan: BenchPlan,
    workload: Workload,
    *,
    out: Path,
    results: Path,
    command: str,
    method_command: Callable[[str, str], str],
    console: Console,
) -> list[Path]:
    """Gather the studies and write the Markdown section, the CSVs and the plots."""
    teacher_onnx, baseline = _baseline(plan)
    summary = gather(plan, baseline, load_records(plan), teacher_pass_seconds(workload))
    summary = add_paired(summary, workload, teacher_onnx, results)
    results.mkdir(parents=True, exist_ok=True)
    written = [write_csvs(summary, results)[0]]
    html = write_plots(summary, results / PLOT_HTML)
    png: Path | None = None
    if find_chromium() is not None:
        try:
            png = take_screenshot(html, results / PLOT_PNG, size=(1300, 520 * len(summary.targets) + 80))
        except UserError as exc:
            console.print(f"bench: no PNG of the plots: {exc}")
    section = markdown(summary, command=command, method_command=method_command, results=results, png=png, html=html)
    write_atomic(out, splice(out.read_text() if out.is_file() else "", section))
    return [out, *written, png or html]


def splice(document: str, section: str) -> str:
    """``document`` with the text between the bench markers replaced by ``section`` (appended,
    under a title, when the markers are missing)."""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    if BEGIN in document and END in document.split(BEGIN, 1)[1]:
        head, rest = document.split(BEGIN, 1)
        return head + block + rest.split(END, 1)[1]
    head = document.rstrip() + "\n\n" if document.strip() else "# Benchmarks\n\n"
    return head + block + "\n"


# ---------------------------------------------------------------------------------------------
# CSV


def write_csvs(summary: BenchSummary, results: Path) -> list[Path]:
    rows = []
    for block in summary.targets:
        for m in block.methods:
            ci = m.paired.interval() if m.paired else (math.nan, math.nan)
            rows.append({
                "target": block.target,
                "method": m.method,
                "study": m.study,
                "trials": m.trials,
                "best_trial": m.best.number if m.best else "",
                "best_ratio": _num(m.ratio),
                "val_drop": _num(_val_drop(summary, m.best)),
                "test_drop": _num(test_drop(summary.baseline, m.best) if m.best else None),
                "test_drop_ci_low": _num(ci[0]),
                "test_drop_ci_high": _num(ci[1]),
                "hypervolume": f"{m.hypervolume:.6g}",
                "wall_s": f"{m.wall_s:.1f}",
                "trials_per_hour": _num(m.trials_per_hour),
            })
    summary_csv = _write_csv(results / "summary.csv", rows)
    trial_rows = []
    seen: set[tuple[str, int]] = set()
    for block in summary.targets:
        for method, records in block.points.items():
            for r in records:
                study = next(m.study for m in block.methods if m.method == method)
                if (study, r.number) in seen:
                    continue
                seen.add((study, r.number))
                trial_rows.append({
                    "study": study,
                    "trial": r.number,
                    "profile": r.profile or "",
                    "val_acc": _num(r.metrics.get("val_acc")),
                    "test_acc": _num(r.metrics.get("test_acc")),
                    "feasible_val": r.feasible,
                    **{f"{t}_ratio": _num(r.ratios.get(t)) for t in ("size", "latency", "macs", "params")},
                    "seconds": _num(r.seconds),
                    **{k: v for k, v in sorted(r.config.items())},
                })
    return [summary_csv, _write_csv(results / TRIALS_CSV, trial_rows)]


def _write_csv(path: Path, rows: Sequence[dict]) -> Path:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())
    return path


def _num(value: float | None) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.6g}"


def _val_drop(summary: BenchSummary, record: TrialRecord | None) -> float | None:
    return None if record is None else float(summary.baseline["val_acc"]) - float(record.metrics["val_acc"])


# ---------------------------------------------------------------------------------------------
# Plots


def write_plots(summary: BenchSummary, path: Path) -> Path:
    """Per target: every compared trial (test drop against ratio) and hypervolume per trial."""
    rows = len(summary.targets)
    titles = []
    for block in summary.targets:
        titles += [f"{block.target}: test accuracy drop vs {block.target} ratio", f"{block.target}: hypervolume after each trial"]
    fig = make_subplots(rows=rows, cols=2, subplot_titles=titles, horizontal_spacing=0.08, vertical_spacing=0.16 / max(rows, 1))
    for i, block in enumerate(summary.targets, 1):
        for method, records in block.points.items():
            fig.add_trace(
                go.Scatter(
                    x=[r.ratio(block.target) for r in records],
                    y=[test_drop(summary.baseline, r) for r in records],
                    mode="markers",
                    name=METHOD_LABELS[method],
                    legendgroup=method,
                    showlegend=i == 1,
                    marker={"color": METHOD_COLOURS[method], "size": 11 if method == "profiles" else 8,
                            "symbol": "diamond" if method == "profiles" else "circle"},
                    text=[f"{r.profile or ''} trial {r.number}" for r in records],
                ),
                row=i, col=1,
            )
        fig.add_hline(y=summary.plan.constraint.max_drop, line_dash="dash", line_color="#d1495b", row=i, col=1)
        drops = [test_drop(summary.baseline, r) for rs in block.points.values() for r in rs]
        # Trials that lost far more than the bound would squash the interesting band: cut off.
        top = min(max(drops, default=1.0), 5 * summary.plan.constraint.max_drop + 1)
        fig.update_yaxes(range=[min(min(drops, default=0.0), 0.0) - 0.5, top + 0.5], row=i, col=1)
        fig.update_xaxes(type="log", title_text=f"{block.target} ratio vs teacher (log)", row=i, col=1)
        fig.update_yaxes(title_text="test drop (points; larger drops off the chart)", row=i, col=1)
        for method, volumes in block.histories.items():
            fig.add_trace(
                go.Scatter(x=list(range(1, len(volumes) + 1)), y=volumes, mode="lines+markers", name=METHOD_LABELS[method],
                           legendgroup=method, showlegend=False, line={"color": METHOD_COLOURS[method]}),
                row=i, col=2,
            )
        fig.update_xaxes(title_text="trials", row=i, col=2)
        fig.update_yaxes(title_text="hypervolume (pt x log10 ratio)", row=i, col=2)
    fig.update_layout(
        title=f"{summary.plan.name}: search vs fixed profiles vs random search (<= {summary.plan.constraint.max_drop:g} pt)",
        height=480 * rows + 80, width=1280, template="plotly_white",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, fig.to_html(include_plotlyjs=True, full_html=True))
    return path


# ---------------------------------------------------------------------------------------------
# Markdown


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _drop_cell(summary: BenchSummary, m: MethodResult) -> str:
    if m.best is None:
        return "-"
    text = f"{test_drop(summary.baseline, m.best):+.2f}"
    if m.paired is not None:
        low, high = m.paired.interval()
        text += f" [{low:+.2f}, {high:+.2f}]"
    return text


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def markdown(
    summary: BenchSummary,
    *,
    command: str,
    method_command: Callable[[str, str], str],
    results: Path,
    png: Path | None,
    html: Path,
) -> str:
    plan, base = summary.plan, summary.baseline
    lines = [
        f"## `{plan.name}`",
        "",
        f"Generated by `mcaas-search bench` on {datetime.date.today().isoformat()}; everything between the "
        "bench markers is rewritten by the next run, text outside them is kept.",
        "",
        f"- **Machine:** {_cpu()}, {os.cpu_count()} cores, no GPU used; torch {torch.__version__}, "
        f"ONNX Runtime {onnxruntime.__version__}, {plan.threads} thread(s) for training and for ONNX Runtime.",
        f"- **Teacher (fp32 ONNX):** {base['val_acc']:.2f} % validation, {base['test_acc']:.2f} % test "
        f"({base.get('n_test', 0):.0f} images), {base['bytes'] / 1e6:.1f} MB, {base['latency_ms']:.3f} ms batch 1.",
        f"- **Budget:** {plan.trials} trials per study, rounds of {plan.round_size}; bound: at most "
        f"{plan.constraint.max_drop:g} point of accuracy lost, on validation (what the search sees) and on test.",
        "- **Studies:** " + ", ".join(f"`{k}` {v} trials" for k, v in summary.studies.items()) + ".",
        f"- **Reproduce:** `{command}` (resumes where it stopped; add `--report-only` to rewrite this section).",
        "",
        "Ratios are measured on the exported ONNX file in ONNX Runtime against the teacher's fp32 export "
        "(latency interleaved with the teacher's in the same process). *Best at bound* is the largest ratio "
        "of a trial within the bound on both validation and test; its test drop has a paired 95 % "
        "confidence interval over the test images. Hypervolume is the area the feasible front dominates "
        "above the required validation accuracy, in points x log10(ratio).",
    ]
    for block in summary.targets:
        lines += ["", f"### Target: {block.target} ({TARGET_WORDS.get(block.target, block.target)})", ""]
        lines += [
            f"Compared at **{block.compared} trials** per method (the fixed profiles: their three trials).",
            "",
            "| method | trials | best at bound | trial | val drop (pt) | test drop (pt) [95 % CI] | hypervolume | wall time | trials / h |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in block.methods:
            ratio = f"**{m.ratio:.1f}x**" if m.ratio else "none"
            val = _val_drop(summary, m.best)
            lines.append(
                f"| {METHOD_LABELS[m.method]} | {m.trials} | {ratio} | {m.best.number if m.best else '-'} | "
                f"{'-' if val is None else f'{val:+.2f}'} | {_drop_cell(summary, m)} | {m.hypervolume:.3f} | "
                f"{_minutes(m.wall_s)} | {m.trials_per_hour:.0f} |"
            )
        lines += ["", "Each row on its own (the same studies; the profiles are the search's first three trials):", ""]
        lines += [f"- {METHOD_LABELS[m.method]}: `{method_command(block.target, m.method)}`" for m in block.methods]
        lines += ["", *_verdicts(summary, block.target, block.methods)]
        largest = {m.method: m.largest for m in block.methods}
        far = [
            f"{METHOD_LABELS[k]} {r.ratio(block.target):.1f}x at {test_drop(base, r):+.2f} pt test (trial {r.number})"
            for k, r in largest.items() if r is not None
        ]
        if far:
            lines += ["", "Most compressed trial of each method at any accuracy: " + "; ".join(far) + "."]
    lines += [
        "",
        "### Published results of the seed systems (other tasks: for scale only, not comparable)",
        "",
        "| system | model / data | size ratio | CPU latency ratio | accuracy drop |",
        "|---|---|---:|---:|---:|",
        *(f"| {s} | {task} | {size:g}x | {lat:g}x | -{drop:g} pt |" for s, task, size, lat, drop in PUBLISHED),
    ]
    lines += ["", *_cost_lines(summary)]
    lines += ["", "### Plots", ""]
    rel = os.path.relpath(png or html, start=Path.cwd())
    if png is not None:
        lines.append(f"![test drop vs ratio and hypervolume per trial]({rel})")
        lines.append("")
    lines.append(
        f"Interactive: `{os.path.relpath(html)}` (written by the run, not committed); "
        f"numbers: `{os.path.relpath(results / 'summary.csv')}`, every compared trial: `{os.path.relpath(results / TRIALS_CSV)}`."
    )
    if summary.notes:
        lines += ["", "Notes: " + "; ".join(summary.notes) + "."]
    return "\n".join(lines) + "\n"


def _verdicts(summary: BenchSummary, target: str, methods: Sequence[MethodResult]) -> list[str]:
    by = {m.method: m for m in methods}
    search, random, profiles = by.get("search"), by.get("random"), by.get("profiles")
    out = []
    if search is not None:
        goal = TARGET_GOALS.get(target)
        if goal is not None:
            got = search.ratio or 0.0
            out.append(f"- Default search, {target}: {got:.1f}x at the bound; goal >= {goal:g}x: **{'met' if got >= goal else 'missed'}**.")
        if profiles is not None:
            if profiles.ratio:
                factor = (search.ratio or 0.0) / profiles.ratio
                out.append(
                    f"- Against the best feasible profile ({profiles.ratio:.1f}x): {factor:.2f}x; goal >= {PROFILE_FACTOR:g}x: "
                    f"**{'met' if factor >= PROFILE_FACTOR else 'missed'}**."
                )
            else:
                out.append("- No fixed profile kept the bound, so the search has no profile to beat.")
        if random is not None:
            ok = search.hypervolume >= random.hypervolume
            out.append(
                f"- Hypervolume {search.hypervolume:.3f} vs random search's {random.hypervolume:.3f} at "
                f"{search.trials} trials: **{'met' if ok else 'missed'}**."
            )
    return out


def _cost_lines(summary: BenchSummary) -> list[str]:
    c = summary.cost
    if c.complete == 0:
        return ["### Cost of a trial", "", "No completed trial yet."]
    order = ["prune", "distill", "cluster", "export", "quantize", "measure"]
    parts = [(s, c.stage_s[s]) for s in order if s in c.stage_s] + [("other", c.other_s)]
    lines = [
        "### Cost of a trial",
        "",
        f"Over the {c.complete} completed compared trials ({_minutes(c.wall_s)} in all, "
        f"{c.wall_s / c.complete:.0f} s each on average): training (distillation, QAT included) took "
        f"{c.training_s / c.wall_s:.0%}; **{c.outside_share:.0%} of a trial was outside training** "
        "(goal <= 15 %).",
        "",
        "| " + " | ".join(name for name, _ in parts) + " |",
        "|" + "---:|" * len(parts),
        "| " + " | ".join(f"{s / c.wall_s:.1%}" for _, s in parts) + " |",
        "",
        "*other*: the PyTorch accuracy passes between stages (after pruning, after clustering) and "
        "the study's bookkeeping; *measure*: accuracy on validation and test and latency of the final file.",
        "",
    ]
    if c.stopped:
        total = c.wall_s + c.stopped_wall_s
        lines.append(
            f"- **Early stopping:** {c.stopped} trials stopped or skipped ({_minutes(c.stopped_wall_s)}); "
            f"their own estimate of the training they saved is {_minutes(c.saved_s)}, "
            f"{c.saved_s / (total + c.saved_s):.0%} of what the trials would have taken."
        )
    if c.logits_s is not None and c.logits_saved_s is not None:
        lines.append(
            f"- **Cached teacher outputs:** one teacher pass over the training split takes {c.logits_s:.1f} s; "
            f"computing them once instead of once per distillation epoch saved {_minutes(c.logits_saved_s)}, "
            f"{c.logits_saved_s / (c.wall_s + c.logits_saved_s):.0%} of the completed trials' time."
        )
    return lines
