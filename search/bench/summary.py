"""Writes the benchmark summary: gathers the bench studies, measures the paired test drops, and
writes the Markdown section of BENCHMARKS.md, ``summary.csv``, ``trials.csv`` and the plots
(each in its own module: ``paired``, ``markdown``, ``csvs``, ``plots``)."""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable, Iterable
from pathlib import Path

import optuna
from rich.console import Console

from search.bench.alone import add_alone
from search.bench.csvs import write_csvs
from search.bench.markdown import markdown, splice
from search.bench.paired import add_paired
from search.bench.plan import BASELINE_FILE, BenchPlan, has_run, shared_baseline
from search.bench.plots import (
    EFFICIENCY_HTML,
    EFFICIENCY_PNG,
    PLOT_HTML,
    PLOT_PNG,
    write_efficiency,
    write_plots,
)
from search.bench.results import find_chunks, gather
from search.errors import UserError
from search.reporting.screenshot import find_chromium, take_screenshot
from search.study import load_study, open_storage, trial_records
from search.trials.context import teacher_pass_seconds
from search.workloads import Workload
from stages.files import write_atomic


def trial_spans(studies: Iterable[optuna.Study]) -> list[tuple[datetime.datetime, datetime.datetime | None]]:
    """Every started trial's (start, end) over the benchmark's studies: the runs it was made in."""
    return [
        (trial.datetime_start, trial.datetime_complete)
        for study in studies
        for trial in study.get_trials(deepcopy=False)
        if trial.datetime_start is not None
    ]


def bench_studies(plan: BenchPlan) -> dict[str, optuna.Study]:
    """The benchmark's studies that exist in its storage, by name."""
    storage = open_storage(plan.storage, create=False)
    out = {}
    for study in [*plan.studies(), *([plan.peer_study()] if plan.peers else [])]:
        try:
            out[study.name] = load_study(study.name, storage)
        except UserError:
            continue
    return out


def _baseline(plan: BenchPlan, workload: Workload, console: Console) -> tuple[Path, dict[str, float]]:
    if not has_run(plan):
        raise UserError(
            f"no benchmark {plan.name!r} yet (no study in {plan.storage} and no {plan.folder / BASELINE_FILE}); "
            "run it without --report-only first"
        )
    return shared_baseline(plan, workload, console)


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
    teacher_onnx, baseline = _baseline(plan, workload, console)
    studies = bench_studies(plan)  # the journal is read once, for the records and the runs
    records = {name: trial_records(study) for name, study in studies.items()}
    summary = gather(plan, baseline, records, teacher_pass_seconds(workload))
    summary = dataclasses.replace(summary, chunks=find_chunks(trial_spans(studies.values())))
    summary = add_paired(summary, workload, teacher_onnx, results)
    summary = add_alone(summary, workload, teacher_onnx, results)
    results.mkdir(parents=True, exist_ok=True)
    written = [write_csvs(summary, results)[0]]
    html = write_plots(summary, results / PLOT_HTML)
    efficiency = write_efficiency(summary, results / EFFICIENCY_HTML)
    written.append(efficiency)
    png: Path | None = None
    efficiency_png: Path | None = None
    if find_chromium() is not None:
        try:
            png = take_screenshot(html, results / PLOT_PNG, size=(1300, 520 * len(summary.targets) + 80))
            efficiency_png = take_screenshot(efficiency, results / EFFICIENCY_PNG, size=(1300, 420 * len(summary.targets) + 100))
        except UserError as exc:
            console.print(f"bench: no PNG of the plots: {exc}")
    section = markdown(summary, command=command, method_command=method_command, results=results, png=png, html=html,
                       links_from=out.parent, efficiency_png=efficiency_png)
    write_atomic(out, splice(out.read_text() if out.is_file() else "", section, plan.name))
    return [out, *written, png or html, *([efficiency_png] if efficiency_png else [])]
