"""Paired test drops measured in ONNX Runtime: the best trial's exported file and the teacher's
both run on every test image, so the confidence interval is that of a difference of two
proportions on the same images (cached per artifact and mtime in ``paired.json``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from objectives import PairedDrop, paired_drop
from search.bench.results import BenchSummary, test_drop
from search.workloads import Workload
from stages.files import write_atomic
from stages.measure import OnnxRunner, onnx_correct

PAIRED_JSON = "paired.json"


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
