"""Writes the benchmark summary: gathers the bench studies, measures the paired test drops, and
writes the Markdown section of BENCHMARKS.md, ``summary.csv``, ``trials.csv`` and the plots
(each in its own module: ``paired``, ``markdown``, ``csvs``, ``plots``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from search.bench.csvs import write_csvs
from search.bench.markdown import markdown, splice
from search.bench.paired import add_paired
from search.bench.plan import BASELINE_FILE, BenchPlan
from search.bench.plots import (
    EFFICIENCY_HTML,
    PLOT_HTML,
    PLOT_PNG,
    write_efficiency,
    write_plots,
)
from search.bench.results import gather
from search.errors import UserError
from search.reporting.screenshot import find_chromium, take_screenshot
from search.study import TrialRecord, load_study, open_storage, trial_records
from search.trials.context import teacher_pass_seconds
from search.workloads.workload import Workload
from stages.files import write_atomic


def load_records(plan: BenchPlan) -> dict[str, list[TrialRecord]]:
    storage = open_storage(plan.storage, create=False)
    out = {}
    for study in [*plan.studies(), *([plan.peer_study()] if plan.peers else [])]:
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
    written.append(write_efficiency(summary, results / EFFICIENCY_HTML))
    png: Path | None = None
    if find_chromium() is not None:
        try:
            png = take_screenshot(html, results / PLOT_PNG, size=(1300, 520 * len(summary.targets) + 80))
        except UserError as exc:
            console.print(f"bench: no PNG of the plots: {exc}")
    section = markdown(summary, command=command, method_command=method_command, results=results, png=png, html=html,
                       links_from=out.parent)
    write_atomic(out, splice(out.read_text() if out.is_file() else "", section, plan.name))
    return [out, *written, png or html]
