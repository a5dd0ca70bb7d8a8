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
import statistics
import time
from pathlib import Path
from typing import Protocol

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from objectives import metrics
from stages._context import Context, Split
from stages._graph import count_params_macs

__all__ = [
    "MIN_LATENCY_RUNS",
    "OnnxRunner",
    "file_sizes",
    "interleaved_latency",
    "measure_onnx",
    "measure_torch",
    "onnx_accuracy",
    "onnx_correct",
    "onnx_sizes",
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
    one inter-op thread, sequential execution, all graph optimisations."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, but got {threads}.")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        if threads > 1:
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
    """Median batch-1 latency in ms of ``student`` (and ``teacher``), timed turn about.

    Both are warmed up, then single runs alternate student, teacher, student, ... so drift of
    the machine (clock, other load) hits both alike. Takes ``runs`` runs each, more (up to
    ``3 * runs``) while ``budget_s`` lasts; a model too slow for the budget stops after
    ``MIN_LATENCY_RUNS`` runs once the budget is overrun twice over.
    """
    if runs < 1 or warmup < 0 or budget_s <= 0:
        raise ValueError(
            f"need runs >= 1, warmup >= 0 and budget_s > 0, but got {runs=}, {warmup=}, "
            f"{budget_s=}."
        )
    runners: list[Predictor] = [student] if teacher is None else [student, teacher]
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
    medians = [statistics.median(times) / 1e6 for times in samples]
    return medians[0], (medians[1] if teacher is not None else None)


def measure_onnx(
    path: Path, ctx: Context, *, torch_model: nn.Module | None = None
) -> dict[str, float]:
    """Every final metric of the ONNX file at ``path``, measured in ONNX Runtime on the CPU.

    ``params``/``macs`` are counted on ``torch_model`` (the pruned module the file came from)
    and left out without it. ``teacher_latency_ms`` is measured, interleaved, when
    ``ctx.baseline_onnx`` is set. The file is measured as given, never re-exported.
    """
    runner = OnnxRunner(path, ctx.threads)
    result: dict[str, float] = {
        metrics.VAL_ACC: onnx_accuracy(runner, ctx.data.val, ctx.eval_batch_size),
        metrics.TEST_ACC: onnx_accuracy(runner, ctx.data.test, ctx.eval_batch_size),
        **onnx_sizes(path, ctx, torch_model=torch_model),
        metrics.N_VAL: float(len(ctx.data.val)),
        metrics.N_TEST: float(len(ctx.data.test)),
    }
    teacher = OnnxRunner(ctx.baseline_onnx, ctx.threads) if ctx.baseline_onnx else None
    latency, teacher_latency = interleaved_latency(
        runner,
        teacher,
        ctx.data.example_input(1).numpy(),
        runs=ctx.latency_runs,
        budget_s=ctx.latency_budget_s,
    )
    result[metrics.LATENCY_MS] = latency
    if teacher_latency is not None:
        result[metrics.TEACHER_LATENCY_MS] = teacher_latency
    return result


def onnx_sizes(path: Path, ctx: Context, *, torch_model: nn.Module | None = None) -> dict[str, float]:
    """The size metrics of the ONNX file at ``path`` (bytes, gzip bytes; params and MACs counted
    on ``torch_model`` when given): what an intermediate file is recorded with, unmeasured."""
    size, gzip_size = file_sizes(path)
    result = {metrics.BYTES: float(size), metrics.GZIP_BYTES: float(gzip_size)}
    if torch_model is not None:
        result.update(_params_macs(torch_model, ctx))
    return result


def measure_torch(model: nn.Module, ctx: Context, *, accuracy: bool = True) -> dict[str, float]:
    """Cheap "torch" metrics of a module between stages: validation accuracy of the PyTorch
    module on ``ctx.device`` (skipped with ``accuracy=False``), params, MACs, and the bytes and
    gzip bytes of its fp32 state dict as ``torch.save`` writes it. Not artifact numbers."""
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
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    params, macs = count_params_macs(model, ctx.data.example_input(1).to(device))
    return {metrics.PARAMS: float(params), metrics.MACS: float(macs)}
