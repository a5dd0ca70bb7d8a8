"""Teacher training: a short, sensible recipe on tensors held in memory, and checkpoint writing.

No DataLoader: the data already sits in memory as tensors, so batches are slices of a shuffled
index permutation (fast on CPU, no worker processes to fight the search's parallel trials).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.errors import UserError
from stages import Split, TaskData
from stages.files import atomic_path, write_atomic
from stages.measure import torch_accuracy

OPTIMIZERS = ("sgd", "adamw")
DEFAULT_EPOCHS = 5
DEFAULT_BATCH_SIZE = 128
DEFAULT_LABEL_SMOOTHING = 0.1
# Peak learning rates at batch size 128, scaled linearly with the batch size.
BASE_LR = {"sgd": 0.1, "adamw": 2e-3}
WEIGHT_DECAY = {"sgd": 5e-4, "adamw": 0.05}


def default_lr(optimizer: str, batch_size: int) -> float:
    """The peak learning rate used when ``--lr`` is not given (linear scaling rule)."""
    return BASE_LR[optimizer] * batch_size / DEFAULT_BATCH_SIZE


def evaluate_accuracy(
    model: nn.Module, split: Split, *, device: torch.device | str | None = None, batch_size: int = 512
) -> float:
    """Top-1 accuracy on ``split`` in percent (eval mode; the model's mode is restored)."""
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    if len(split) == 0:
        raise UserError("cannot measure accuracy on an empty split.")
    return torch_accuracy(model, split, device=torch.device(device), batch_size=batch_size)


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Use ``threads`` torch threads for the duration (None leaves the setting alone)."""
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity masks and container limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


class _EpochReporter:
    """A rich progress bar on a terminal, one plain line per epoch otherwise, or nothing."""

    def __init__(self, *, enabled: bool, epochs: int, steps: int) -> None:
        self.epochs = epochs
        self.lines = enabled and not sys.stdout.isatty()
        self.bar = None
        if enabled and not self.lines:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
            )
            self.task = self.bar.add_task(f"epoch 1/{epochs}", total=epochs * steps)

    def __enter__(self) -> _EpochReporter:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def step(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.task)

    def epoch(self, epoch: int, loss: float, val_acc: float, seconds: float) -> None:
        text = f"epoch {epoch}/{self.epochs}  loss {loss:.4f}  val {val_acc:.2f} %"
        if self.bar is not None:
            self.bar.update(self.task, description=text)
        elif self.lines:
            print(f"{text}  ({seconds:.0f} s)", flush=True)


def check_training_settings(
    *, epochs: int, lr: float | None, batch_size: int, optimizer: str, label_smoothing: float
) -> None:
    """A one-line ``UserError`` for a training setting out of range (cheap: the train command
    checks them before loading any data)."""
    if epochs < 1:
        raise UserError(f"--epochs must be >= 1, but got {epochs}.")
    if batch_size < 2:
        raise UserError(f"--batch-size must be >= 2, but got {batch_size}.")
    if optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {optimizer!r}; valid optimizers: {', '.join(OPTIMIZERS)}.")
    if not 0.0 <= label_smoothing < 1.0:
        raise UserError(f"--label-smoothing must lie in [0, 1), but got {label_smoothing}.")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise UserError(f"--lr must be > 0 and finite, but got {lr}.")


def train_teacher(
    model: nn.Module,
    data: TaskData,
    *,
    epochs: int,
    lr: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    optimizer: str = "sgd",
    label_smoothing: float = DEFAULT_LABEL_SMOOTHING,
    device: torch.device | str = "cpu",
    progress: bool = True,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``data.train`` (with ``data.augment``) and leave it in eval mode.

    Recipe: SGD (momentum 0.9, Nesterov, weight decay 5e-4) with a one-cycle schedule, or AdamW
    (weight decay 0.05) with cosine decay; cross-entropy with label smoothing; bfloat16 autocast
    on CUDA. Validation accuracy is measured after every epoch, test accuracy once at the end.
    ``progress`` False prints nothing; otherwise a progress bar on a terminal, else one line per
    epoch. ``threads`` sets torch's CPU threads for the run (None keeps the current setting).

    Returns ``{"val_acc", "test_acc", "epochs", "seconds", ...}`` (accuracies in percent).
    """
    check_training_settings(
        epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, label_smoothing=label_smoothing
    )
    n = len(data.train)
    # A last batch of one sample would break BatchNorm in train mode: it is dropped.
    steps = n // batch_size + (1 if n % batch_size >= 2 else 0)
    if steps == 0:
        raise UserError(f"the training split has {n} sample(s); expected at least 2.")
    peak_lr = lr if lr is not None else default_lr(optimizer, batch_size)
    device = torch.device(device)
    started = time.perf_counter()
    torch.manual_seed(seed)
    order = torch.Generator().manual_seed(seed)

    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    total = epochs * steps
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    if optimizer == "sgd":
        opt = torch.optim.SGD(
            params, lr=peak_lr, momentum=0.9, nesterov=True, weight_decay=WEIGHT_DECAY["sgd"]
        )
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak_lr, total_steps=total)
    else:
        opt = torch.optim.AdamW(params, lr=peak_lr, weight_decay=WEIGHT_DECAY["adamw"])
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    )

    val_acc = 0.0
    loss_value = math.nan
    with _torch_threads(threads), _EpochReporter(enabled=progress, epochs=epochs, steps=steps) as rep:
        for epoch in range(1, epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=order)
            loss_sum = torch.zeros((), device=device)
            for step in range(steps):
                idx = perm[step * batch_size : (step + 1) * batch_size]
                x = data.train.x[idx].to(device, non_blocking=True)
                y = data.train.y[idx].to(device, non_blocking=True)
                if data.augment is not None:
                    x = data.augment(x)
                with autocast:
                    loss = criterion(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.detach().float()
                rep.step()
            loss_value = float(loss_sum) / steps
            if not math.isfinite(loss_value):
                raise UserError(
                    f"training diverged (loss {loss_value}) in epoch {epoch}; "
                    f"try a smaller --lr than {peak_lr:g}."
                )
            val_acc = evaluate_accuracy(model, data.val, device=device)
            rep.epoch(epoch, loss_value, val_acc, time.perf_counter() - started)
        test_acc = evaluate_accuracy(model, data.test, device=device)
    model.eval()
    return {
        "val_acc": val_acc,
        "test_acc": test_acc,
        "epochs": epochs,
        "seconds": round(time.perf_counter() - started, 2),
        "train_loss": loss_value,
        "optimizer": optimizer,
        "lr": peak_lr,
        "batch_size": batch_size,
        "label_smoothing": label_smoothing,
    }


def metrics_path(checkpoint: Path) -> Path:
    """Where the JSON beside a checkpoint lives: same path, ``.json`` suffix."""
    return checkpoint.with_suffix(".json")


def save_checkpoint(model: nn.Module, path: Path, info: dict[str, Any]) -> None:
    """Write ``model``'s state_dict (on CPU) to ``path`` and ``info`` as JSON beside it, atomically."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    text = json.dumps(info, indent=2, sort_keys=True) + "\n"
    write_atomic(metrics_path(path), text)
