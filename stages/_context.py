"""What every stage receives: the task's data held as tensors, the teacher, and where to write."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class Split:
    """One data split held in memory: ``x`` float32 N x C x H x W (normalised), ``y`` int64 N."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y)`` slices in order (no shuffling, no copies)."""
        for start in range(0, len(self), batch_size):
            yield self.x[start : start + batch_size], self.y[start : start + batch_size]


@dataclasses.dataclass(frozen=True)
class TaskData:
    """Train / validation / test splits of a classification task.

    The validation split is carved from the training data; the test split is for reporting only.
    ``preprocessing`` says how raw inputs become ``x`` (recorded in export sidecars).
    ``augment`` is an optional batch-level tensor augmentation used when training teachers.
    """

    train: Split
    val: Split
    test: Split
    num_classes: int
    preprocessing: dict[str, Any] = dataclasses.field(default_factory=dict)
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, C x H x W."""
        return tuple(self.train.x.shape[1:])

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return self.train.x[:batch].clone()


# Called while a stage trains: (stage name, fraction of its budget done, validation accuracy in %).
# The search passes one that raises to stop a hopeless trial early.
ProgressCallback = Callable[[str, float, float], None]

# Called at each rung a training stage stops at: (stage name, steps done, steps of its whole
# budget, validation accuracy in %). Successive halving passes one that raises to stop a trial
# the promotion rule does not promote.
RungCallback = Callable[[str, int, int, float], None]


@dataclasses.dataclass(frozen=True)
class Context:
    """Everything a stage may use besides the model it transforms (frozen: a stage or a trial that
    needs other settings makes a copy with ``dataclasses.replace``, which copies no tensor).

    ``teacher`` is never modified. ``teacher_logits`` are the teacher's outputs on ``data.train``
    computed once per workload and shared by every trial (see ``stages.teacher_logits``).
    ``baseline_onnx`` is the teacher's exported fp32 artifact; latency ratios are measured against
    it, interleaved, in the same process. ``threads`` is the ONNX Runtime / torch thread count.
    ``on_progress`` (when set) hears a training stage's validation accuracy at each of
    ``report_fractions`` of its budget.
    """

    data: TaskData
    teacher: nn.Module
    workdir: Path
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    threads: int = 1
    seed: int = 0
    batch_size: int = 128
    eval_batch_size: int = 512
    teacher_logits: torch.Tensor | None = None
    baseline_onnx: Path | None = None
    on_progress: ProgressCallback | None = None
    # Fractions of its budget at which a training stage reports validation accuracy to
    # ``on_progress`` (each report is one pass over the validation split).
    report_fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    latency_runs: int = 100
    latency_budget_s: float = 3.0
    # Intra-op thread counts latency is measured at (each model's best is kept); None: 1, 2, 4,
    # ... up to the cores (``stages.measure.thread_counts``).
    latency_threads: tuple[int, ...] | None = None
    # The final file's test accuracy is measured only when its validation accuracy reaches this
    # (a search sets its accuracy bound: a trial that misses it is never picked, so the test
    # split is spent on candidates alone); None: always measured.
    test_min_val_acc: float | None = None
    # What the pre-flight analysis of the teacher found, so no trial probes it again: layers
    # structural pruning must leave whole (it breaks on them), and the removable blocks ranked
    # least important first (None: the depth stage ranks them itself).
    frozen_layers: tuple[str, ...] = ()
    block_ranking: tuple[str, ...] | None = None
    # The trailing stages each depth of cut removes (None: the depth stage finds them itself).
    cuts: tuple[tuple[str, ...], ...] | None = None
    # Successive halving: the optimizer steps at which a training stage stops, is evaluated on
    # validation (``on_rung`` hears it) and checkpoints its state in ``rung_checkpoint`` (student,
    # optimizer, step, RNG), which a later run of the same config resumes from.
    rungs: tuple[int, ...] = ()
    on_rung: RungCallback | None = None
    rung_checkpoint: Path | None = None

    def report(self, stage: str, fraction: float, val_acc: float) -> None:
        if self.on_progress is not None:
            self.on_progress(stage, fraction, val_acc)

