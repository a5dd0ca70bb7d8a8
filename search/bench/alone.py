"""Latency as a deployer sees it: the teacher's file and each method's recommended latency trial timed
alone, at ONNX Runtime's defaults (intra-op threads spinning), each at its best thread count
(``stages.measure.alone_latency``). The search's own interleaved measurement (spinning off, every
session turn about) gives the steadier ratio; these are the milliseconds a user will read.
Cached per file and mtime in ``alone.json``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from search.bench.results import BenchSummary
from search.workloads import Workload
from stages.files import write_atomic
from stages.measure import alone_latency, thread_counts

ALONE_JSON = "alone.json"
TARGET = "latency"  # the target whose ratios these stand beside


def add_alone(summary: BenchSummary, workload: Workload, teacher_onnx: Path, results: Path) -> BenchSummary:
    """``summary`` with the teacher's and each latency method's recommended trial's latency measured
    alone (a trial whose file is gone here, a fresh clone's, is left out)."""
    blocks = [b for b in summary.targets if b.target == TARGET]
    if not blocks or not teacher_onnx.is_file():
        return summary
    cache_path = results / ALONE_JSON
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    example = workload.data.example_input(1).numpy()

    def measured(path: Path) -> tuple[float, int]:
        key = f"{path.resolve()}:{path.stat().st_mtime_ns}"
        if key not in cache:
            cache[key] = list(alone_latency(path, example, thread_counts()))
        ms, threads = cache[key]
        return float(ms), int(threads)

    targets = []
    for block in summary.targets:
        if block.target != TARGET:
            targets.append(block)
            continue
        methods = []
        for m in block.methods:
            art = Path(m.best.artifact) if m.best is not None and m.best.artifact else None
            methods.append(dataclasses.replace(m, alone=measured(art)) if art is not None and art.is_file() else m)
        targets.append(dataclasses.replace(block, methods=methods))
    teacher = measured(teacher_onnx)
    results.mkdir(parents=True, exist_ok=True)
    write_atomic(cache_path, json.dumps(cache, indent=1, sort_keys=True))
    return dataclasses.replace(summary, targets=targets, teacher_alone=teacher)
