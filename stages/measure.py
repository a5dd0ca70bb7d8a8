"""Measurement: the numbers a trial is judged by.

Final numbers (``measure_onnx``) come from the deployable file run in ONNX Runtime on the CPU:
accuracy on the validation split (the constraint) and the test split (reporting only), file and
gzip size, batch-1 latency measured interleaved with the teacher's so machine drift cancels.
``measure_torch`` gives cheap "torch" numbers for the stages before export (accuracy of the
PyTorch module, size of its serialised fp32 state dict); they are progress notes, not results.
"""

from __future__ import annotations

import gzip
import io
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from objectives import metrics
from stages._context import Context, Split
from stages._graph import count_params_macs, device_of

__all__ = [
    "MIN_LATENCY_RUNS",
    "OnnxRunner",
    "alone_latency",
    "best_latency",
    "file_sizes",
    "interleaved_latency",
    "interleaved_medians",
    "measure_onnx",
    "measure_torch",
    "onnx_accuracy",
    "onnx_correct",
    "onnx_sizes",
    "optimized_op_count",
    "thread_counts",
    "torch_accuracy",
]

# Latency runs per model that are always taken, however slow the model.
MIN_LATENCY_RUNS = 20
# Runs beyond ``runs`` taken while the time budget lasts (more samples, steadier median).
MAX_RUNS_FACTOR = 3
# A slow model stops at MIN_LATENCY_RUNS once the budget is overrun by this factor.
BUDGET_OVERRUN = 2.0


class Predictor(Protocol):
    def predict(self, x: np.ndarray) -> np.ndarray: ...


class OnnxRunner:
    """An ONNX Runtime CPU session set up for repeatable timing: ``threads`` intra-op threads,
    one inter-op thread, sequential execution, all graph optimisations. ``spinning`` keeps ONNX
    Runtime's default of intra-op threads that spin while idle (a deployer's setting; off for
    sessions timed turn about, see below)."""

    def __init__(self, path: Path, threads: int = 1, *, spinning: bool = False) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, but got {threads}.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads > 1 and not spinning:
            # Two sessions are timed turn about; idle pool threads spinning while the other
            # session runs would steal its cores and bias both numbers.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits for a float32 batch ``x`` (N x C x H x W)."""
        feed = {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}
        return self.session.run([self.output_name], feed)[0]


def onnx_correct(runner: Predictor, split: Split, batch_size: int) -> np.ndarray:
    """Per-sample top-1 correctness (bool, in split order) of ``runner`` on ``split``, run in
    batches of ``batch_size``."""
    if len(split) == 0:
        raise ValueError("cannot measure accuracy on an empty split; expected at least 1 sample.")
    parts = [runner.predict(x.numpy()).argmax(axis=1) == y.numpy() for x, y in split.batches(batch_size)]
    return np.concatenate(parts)


def onnx_accuracy(runner: Predictor, split: Split, batch_size: int) -> float:
    """Top-1 accuracy in percent of ``runner`` on ``split``, run in batches of ``batch_size``."""
    correct = onnx_correct(runner, split, batch_size)
    return 100.0 * int(correct.sum()) / len(split)


def file_sizes(path: Path) -> tuple[int, int]:
    """``(bytes, gzip bytes)`` of the file; gzip at level 9 with a fixed header (repeatable)."""
    data = Path(path).read_bytes()
    return len(data), len(gzip.compress(data, compresslevel=9, mtime=0))


def interleaved_latency(
    student: Predictor,
    teacher: Predictor | None,
    example: np.ndarray,
    *,
    runs: int = 100,
    warmup: int = 10,
    budget_s: float = 3.0,
) -> tuple[float, float | None]:
    """Median batch-1 latency in ms of ``student`` (and ``teacher``), timed turn about (see
    ``interleaved_medians``)."""
    medians = interleaved_medians(
        [student] if teacher is None else [student, teacher], example, runs=runs, warmup=warmup, budget_s=budget_s
    )
    return medians[0], (medians[1] if teacher is not None else None)


def interleaved_medians(
    runners: Sequence[Predictor],
    example: np.ndarray,
    *,
    runs: int = 100,
    warmup: int = 10,
    budget_s: float = 3.0,
) -> list[float]:
    """Median batch-1 latency in ms of each runner, timed turn about.

    All are warmed up, then single runs alternate between them (first, second, ..., first, ...)
    so drift of the machine (clock, other load) hits all alike. Takes ``runs`` runs each, more
    (up to ``3 * runs``) while ``budget_s`` lasts; models too slow for the budget stop after
    ``MIN_LATENCY_RUNS`` runs once the budget is overrun twice over.
    """
    if runs < 1 or warmup < 0 or budget_s <= 0 or not runners:
        raise ValueError(
            f"need runs >= 1, warmup >= 0, budget_s > 0 and a runner, but got {runs=}, {warmup=}, "
            f"{budget_s=}, {len(runners)} runners."
        )
    x = np.ascontiguousarray(example, dtype=np.float32)
    for _ in range(warmup):
        for runner in runners:
            runner.predict(x)
    samples: list[list[int]] = [[] for _ in runners]
    min_runs = min(MIN_LATENCY_RUNS, runs)
    budget_ns = budget_s * 1e9
    start = time.perf_counter_ns()
    done = 0
    while True:
        for runner, times in zip(runners, samples):
            t0 = time.perf_counter_ns()
            runner.predict(x)
            times.append(time.perf_counter_ns() - t0)
        done += 1
        elapsed = time.perf_counter_ns() - start
        if (
            done >= MAX_RUNS_FACTOR * runs
            or (done >= runs and elapsed >= budget_ns)
            or (done >= min_runs and elapsed >= BUDGET_OVERRUN * budget_ns)
        ):
            break
    return [statistics.median(times) / 1e6 for times in samples]


def thread_counts() -> tuple[int, ...]:
    """The intra-op thread counts a deployer would try: 1, 2, 4, ... below the cores this
    process may use, and that core count itself."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    counts = {cores}
    t = 1
    while t < cores:
        counts.add(t)
        t *= 2
    return tuple(sorted(counts))


def best_latency(
    student: Path,
    teacher: Path | None,
    example: np.ndarray,
    threads: Sequence[int],
    *,
    runs: int = 100,
    budget_s: float = 3.0,
) -> tuple[tuple[float, int], tuple[float, int] | None]:
    """``((ms, threads), (ms, threads) or None)``: the student's (and teacher's) median batch-1
    latency at its best thread count among ``threads``, every session timed turn about with the
    others in one loop, so the ratio of the two is best against best under the same drift."""
    counts = list(dict.fromkeys(threads))
    runners: list[Predictor] = [OnnxRunner(student, t) for t in counts]
    if teacher is not None:
        runners += [OnnxRunner(teacher, t) for t in counts]
    medians = interleaved_medians(runners, example, runs=runs, budget_s=budget_s)

    def best(part: list[float]) -> tuple[float, int]:
        i = min(range(len(part)), key=part.__getitem__)
        return part[i], counts[i]

    n = len(counts)
    return best(medians[:n]), (best(medians[n:]) if teacher is not None else None)


def alone_latency(
    path: Path, example: np.ndarray, threads: Sequence[int], *, runs: int = 100, budget_s: float = 3.0
) -> tuple[float, int]:
    """``(ms, threads)``: the median batch-1 latency of the file at ``path`` as a deployer sees it,
    at its best thread count among ``threads``: each count timed alone, one session at a time, at
    ONNX Runtime's defaults (intra-op threads spin while idle). The milliseconds a user reads;
    ``best_latency``'s interleaved sessions (spinning off) give the steadier ratio."""
    best: tuple[float, int] | None = None
    for count in dict.fromkeys(threads):
        runner = OnnxRunner(path, count, spinning=True)
        (ms,) = interleaved_medians([runner], example, runs=runs, budget_s=budget_s)
        del runner  # its spinning pool must not share the cores with the next session
        if best is None or ms < best[0]:
            best = (ms, count)
    if best is None:
        raise ValueError(f"need at least one thread count, but got {tuple(threads)}.")
    return best


def optimized_op_count(path: Path) -> int:
    """Nodes in the graph ONNX Runtime runs for the file at ``path`` (all optimisations on)."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return len(onnx.load(options.optimized_model_filepath, load_external_data=False).graph.node)


def measure_onnx(
    path: Path, ctx: Context, *, torch_model: nn.Module | None = None
) -> dict[str, float]:
    """Every final metric of the ONNX file at ``path``, measured in ONNX Runtime on the CPU.

    ``params``/``macs`` are counted on ``torch_model`` (the pruned module the file came from)
    and left out without it. With ``ctx.baseline_onnx`` set, ``val_lost`` and ``val_gained``
    count the validation images only the teacher, or only this file, gets right (the paired
    drop and its confidence interval, ``objectives.PairedDrop``). Latency is the best over ``ctx.latency_threads`` (default: 1, 2, 4,
    ... up to the cores), with the thread count that gave it; ``teacher_latency_ms`` is measured
    the same way, interleaved, when ``ctx.baseline_onnx`` is set. Accuracy runs with
    ``ctx.threads``; test accuracy (``test_acc``, ``n_test``) is left out for a file below
    ``ctx.test_min_val_acc`` on validation. The file is measured as given, never re-exported.
    """
    runner = OnnxRunner(path, ctx.threads)
    val_correct = onnx_correct(runner, ctx.data.val, ctx.eval_batch_size)
    val_acc = 100.0 * int(val_correct.sum()) / len(val_correct)
    result: dict[str, float] = {
        metrics.VAL_ACC: val_acc,
        **onnx_sizes(path, ctx, torch_model=torch_model),
        metrics.N_VAL: float(len(ctx.data.val)),
    }
    if ctx.test_min_val_acc is None or val_acc >= ctx.test_min_val_acc - 1e-9:
        result[metrics.TEST_ACC] = onnx_accuracy(runner, ctx.data.test, ctx.eval_batch_size)
        result[metrics.N_TEST] = float(len(ctx.data.test))
    (latency, threads), teacher = best_latency(
        path,
        ctx.baseline_onnx,
        ctx.data.example_input(1).numpy(),
        ctx.latency_threads or thread_counts(),
        runs=ctx.latency_runs,
        budget_s=ctx.latency_budget_s,
    )
    if ctx.baseline_onnx is not None:
        teacher_correct = _baseline_correct(ctx.baseline_onnx, ctx.data.val, ctx)
        result[metrics.VAL_LOST] = float((teacher_correct & ~val_correct).sum())
        result[metrics.VAL_GAINED] = float((~teacher_correct & val_correct).sum())
    result[metrics.LATENCY_MS] = latency
    result[metrics.LATENCY_THREADS] = float(threads)
    if teacher is not None:
        result[metrics.TEACHER_LATENCY_MS] = teacher[0]
        result[metrics.TEACHER_LATENCY_THREADS] = float(teacher[1])
    result[metrics.OPS] = float(optimized_op_count(path))
    return result


# The teacher's per-image validation results, per baseline file and split object: a worker measures
# them once, not once per trial. The split is held so its id cannot be reused by another object.
_BASELINE_CORRECT: dict[tuple[str, int, int], tuple[Split, np.ndarray]] = {}
_BASELINE_CACHE_SIZE = 4


def _baseline_correct(path: Path, split: Split, ctx: Context) -> np.ndarray:
    """Per-image correctness of the teacher's file at ``path`` on ``split`` (cached)."""
    key = (str(Path(path).resolve()), Path(path).stat().st_mtime_ns, id(split))
    hit = _BASELINE_CORRECT.get(key)
    if hit is not None and hit[0] is split:
        return hit[1]
    correct = onnx_correct(OnnxRunner(path, ctx.threads), split, ctx.eval_batch_size)
    while len(_BASELINE_CORRECT) >= _BASELINE_CACHE_SIZE:
        _BASELINE_CORRECT.pop(next(iter(_BASELINE_CORRECT)))
    _BASELINE_CORRECT[key] = (split, correct)
    return correct


def onnx_sizes(path: Path, ctx: Context, *, torch_model: nn.Module | None = None) -> dict[str, float]:
    """The size metrics of the ONNX file at ``path`` (bytes, gzip bytes; params and MACs counted
    on ``torch_model`` when given): what an intermediate file is recorded with, unmeasured."""
    size, gzip_size = file_sizes(path)
    result = {metrics.BYTES: float(size), metrics.GZIP_BYTES: float(gzip_size)}
    if torch_model is not None:
        result.update(_params_macs(torch_model, ctx))
    return result


def measure_torch(
    model: nn.Module, ctx: Context, *, accuracy: bool = True, gzip_bytes: bool = True
) -> dict[str, float]:
    """Cheap "torch" metrics of a module between stages: validation accuracy of the PyTorch
    module on ``ctx.device`` (skipped with ``accuracy=False``), params, MACs, and the bytes and
    gzip bytes (skipped with ``gzip_bytes=False``: level 9 takes seconds on tens of MB) of its
    fp32 state dict as ``torch.save`` writes it. Not artifact numbers."""
    result: dict[str, float] = {}
    if accuracy:
        result[metrics.VAL_ACC] = torch_accuracy(
            model, ctx.data.val, device=ctx.device, batch_size=ctx.eval_batch_size
        )
        result[metrics.N_VAL] = float(len(ctx.data.val))
    result.update(_params_macs(model, ctx))
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    data = buffer.getvalue()
    result[metrics.BYTES] = float(len(data))
    if gzip_bytes:
        result[metrics.GZIP_BYTES] = float(len(gzip.compress(data, compresslevel=9, mtime=0)))
    return result


def torch_accuracy(
    model: nn.Module, split: Split, *, device: torch.device, batch_size: int
) -> float:
    """Top-1 accuracy in percent of the PyTorch module (eval mode; its mode is restored)."""
    if len(split) == 0:
        raise ValueError("cannot measure accuracy on an empty split; expected at least 1 sample.")
    training = model.training
    model.to(device).eval()
    correct = 0
    try:
        with torch.inference_mode():
            for x, y in split.batches(batch_size):
                logits = model(x.to(device))
                correct += int((logits.argmax(dim=1).cpu() == y).sum())
    finally:
        model.train(training)
    return 100.0 * correct / len(split)


def _params_macs(model: nn.Module, ctx: Context) -> dict[str, float]:
    params, macs = count_params_macs(model, ctx.data.example_input(1).to(device_of(model)))
    return {metrics.PARAMS: float(params), metrics.MACS: float(macs)}
