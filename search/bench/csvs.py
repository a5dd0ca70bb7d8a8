"""The benchmark's CSV files: ``summary.csv`` (one row per target and method) and ``trials.csv``
(every compared trial with its ratios on every target and its settings)."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path

from objectives import TARGETS, metrics
from search.bench.results import BenchSummary, TargetResults, passes_text, reaches_share, test_drop, val_drop
from stages.files import write_atomic

SUMMARY_CSV, TRIALS_CSV = "summary.csv", "trials.csv"


def write_csvs(summary: BenchSummary, results: Path) -> list[Path]:
    rows = []
    for block in summary.targets:
        at_compute = {m.method: m for m in block.at_compute}
        for m in block.methods:
            ci = m.paired.interval() if m.paired else (math.nan, math.nan)
            same = at_compute.get(m.method)
            rows.append({
                "target": block.target,
                "method": m.method,
                "study": m.study,
                "trials": m.trials,
                "best_trial": m.best.number if m.best else "",
                "best_ratio": _num(m.ratio),
                "val_drop": _num(val_drop(summary.baseline, m.best)),
                "test_drop": _num(test_drop(summary.baseline, m.best) if m.best else None),
                "test_drop_ci_low": _num(ci[0]),
                "test_drop_ci_high": _num(ci[1]),
                # Chosen with the test split: the largest ratio within the bound on both splits.
                "best_on_both_trial": m.best_on_both.number if m.best_on_both else "",
                "best_on_both_ratio": _num(m.ratio_on_both),
                "hypervolume": f"{m.hypervolume:.6g}",
                "wall_s": f"{m.wall_s:.1f}",
                "trials_per_hour": _num(m.trials_per_hour),
                "samples_seen": m.samples_seen,
                # The same method at the compute the default search spent (``compute_samples``).
                "compute_samples": block.budget or "",
                "at_compute_trials": same.trials if same else "",
                "at_compute_samples_seen": same.samples_seen if same else "",
                "at_compute_best_ratio": _num(same.ratio) if same else "",
                "at_compute_hypervolume": f"{same.hypervolume:.6g}" if same else "",
                "at_compute_wall_s": f"{same.wall_s:.1f}" if same else "",
                # Milliseconds measured alone at ONNX Runtime's defaults, each at its best threads.
                "alone_ms": _num(m.alone[0]) if m.alone else "",
                "alone_threads": m.alone[1] if m.alone else "",
                "teacher_alone_ms": _num(summary.teacher_alone[0]) if m.alone and summary.teacher_alone else "",
                # The trial count at which the search reached random search's final hypervolume.
                "search_passes_random_at": passes_text(block) if m.method == "search" and "random" in block.histories else "",
                # The samples after which the multi-fidelity search reached the default search's
                # hypervolume at its compute, and their share of that compute ("never": not reached;
                # empty when the search has no feasible front there).
                "asha_reaches_search_at": _reaches(block) if m.method == "asha" and block.search_volume else "",
                "asha_reaches_search_share": _num(reaches_share(block)) if m.method == "asha" else "",
            })
    summary_csv = _write_csv(results / SUMMARY_CSV, rows)
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
                    metrics.VAL_ACC: _num(r.metrics.get(metrics.VAL_ACC)),
                    metrics.TEST_ACC: _num(r.metrics.get(metrics.TEST_ACC)),
                    "feasible_val": r.feasible,
                    **{f"{t}_ratio": _num(r.ratios.get(t)) for t in TARGETS},
                    "seconds": _num(r.seconds),
                    "samples_seen": r.samples_seen,
                    **{k: v for k, v in sorted(r.config.items())},
                })
    return [summary_csv, _write_csv(results / TRIALS_CSV, trial_rows)]


def _reaches(block: TargetResults) -> str:
    at = block.asha_reaches_search
    return "never" if at is None else str(at)


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
