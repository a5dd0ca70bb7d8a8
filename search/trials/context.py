"""Builds the stage Context of a workload once: teacher outputs and the baseline are computed a
single time per workload / study and reused by every trial (and every worker process)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch

from search.study import STUDIES_DIR
from search.workloads import ANALYSIS_VERSION, Analysis, Workload, analyze
from stages import Context, timed
from stages.files import write_atomic
from stages.pipeline import measure_baseline
from stages.teacher import load_logits, save_logits, teacher_logits

CACHE_DIR = STUDIES_DIR / ".cache"


def fingerprint_hash(fingerprint: dict) -> str:
    """Short stable hash of a workload fingerprint (names cache files)."""
    blob = json.dumps(fingerprint, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def default_threads(jobs: int = 1) -> int:
    """Torch / ONNX Runtime threads per worker: the machine's cores split between ``jobs``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, jobs))


def trial_threads(workload: Workload, jobs: int) -> int:
    """Threads per trial: the cores split between the jobs, but one for the demo CNN, whose
    8x8 convolutions are too small for intra-op threads to pay (measured: 2 threads were slower)."""
    return 1 if workload.name == "demo" else default_threads(jobs)


def make_context(
    workload: Workload,
    workdir: Path,
    *,
    threads: int,
    seed: int = 0,
    cache_dir: Path = CACHE_DIR,
    need_logits: bool = True,
) -> Context:
    """A Context for ``workload`` with the teacher's train-split logits loaded from (or written to)
    ``cache_dir``, so no trial and no worker computes them again."""
    ctx = Context(
        data=workload.data,
        teacher=workload.teacher,
        workdir=workdir,
        device=next(workload.teacher.parameters()).device,
        threads=threads,
        seed=seed,
    )
    if not need_logits:
        return ctx
    return dataclasses.replace(ctx, teacher_logits=cached_teacher_logits(workload, ctx, cache_dir))


def logits_cache_path(workload: Workload, cache_dir: Path = CACHE_DIR) -> Path:
    return cache_dir / f"logits-{fingerprint_hash(workload.fingerprint)}.pt"


def cached_teacher_logits(workload: Workload, ctx: Context, cache_dir: Path) -> torch.Tensor:
    """The teacher's train-split logits from the cache, computed and cached on a miss (with the
    seconds they took in a JSON beside them: what every later trial saves)."""
    path = logits_cache_path(workload, cache_dir)
    logits = load_logits(path, expected_rows=len(workload.data.train))
    if logits is None:
        logits, seconds = _timed_teacher_pass(workload, ctx.device, ctx.eval_batch_size)
        cache_dir.mkdir(parents=True, exist_ok=True)
        save_logits(path, logits)
        _record_pass_seconds(path, seconds, workload)
    return logits


def teacher_pass_seconds(workload: Workload, cache_dir: Path = CACHE_DIR) -> float:
    """Seconds of one teacher pass over the training split: as the logits cache recorded it, or
    timed now (and recorded beside the cache) when the cache predates recording it."""
    path = logits_cache_path(workload, cache_dir)
    try:
        return float(json.loads(path.with_suffix(".json").read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    device = next(workload.teacher.parameters()).device
    _, seconds = _timed_teacher_pass(workload, device, Context.eval_batch_size)
    if path.is_file():
        _record_pass_seconds(path, seconds, workload)
    return seconds


def _timed_teacher_pass(workload: Workload, device: torch.device, batch_size: int) -> tuple[torch.Tensor, float]:
    return timed(lambda: teacher_logits(workload.teacher, workload.data.train, device=device, batch_size=batch_size))


def _record_pass_seconds(cache: Path, seconds: float, workload: Workload) -> None:
    info = {"seconds": seconds, "rows": len(workload.data.train), "threads": torch.get_num_threads()}
    write_atomic(cache.with_suffix(".json"), json.dumps(info))


def cached_analysis(workload: Workload, ctx: Context, baseline_onnx: Path, cache_dir: Path = CACHE_DIR) -> Analysis:
    """The pre-flight analysis of ``workload``'s teacher from the cache (every study of one
    workload on one machine shares it), run and cached on a miss."""
    path = cache_dir / f"analysis-v{ANALYSIS_VERSION}-{fingerprint_hash(workload.fingerprint)}.json"
    try:
        return Analysis.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    analysis = analyze(ctx, baseline_onnx)
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(analysis.to_dict()))
    return analysis


def with_analysis(ctx: Context, analysis: Analysis | None) -> Context:
    """``ctx`` with what the analysis found that stages use (frozen layers, block ranking, cuts)."""
    if analysis is None:
        return ctx
    return dataclasses.replace(
        ctx,
        frozen_layers=tuple(analysis.frozen_layers),
        block_ranking=analysis.block_ranking,
        cuts=analysis.stage_cuts,
    )


def measure_baseline_into(ctx: Context, workdir: Path) -> tuple[Context, dict[str, float]]:
    """Export the teacher as fp32 ONNX under ``workdir`` and measure it: ``ctx`` with that file as
    its ``baseline_onnx`` (what latency ratios are measured against), and the metrics."""
    path, metrics = measure_baseline(ctx, workdir)
    return dataclasses.replace(ctx, baseline_onnx=path), metrics


def trial_context(base: Context, workdir: Path, **changes: object) -> Context:
    """A per-trial copy of ``base`` (shares the data, teacher and logits; no tensor is copied)."""
    return dataclasses.replace(base, workdir=workdir, **changes)  # type: ignore[arg-type]
