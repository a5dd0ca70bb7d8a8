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
from search.workloads.recipes import (
    OPTIMIZERS,
    RECIPES,
    Recipe,
    batch_size_for,
    regularisation_scale,
    scale_regularisation,
)
from stages import Split, TaskData, device_of
from stages.distill import cosine_lr, param_groups
from stages.files import atomic_path, write_atomic
from stages.measure import torch_accuracy

DEFAULT_EPOCHS = 5
# Five epochs of a small training set are few optimizer steps (170 on digits), too few to train a
# net from scratch: MobileNetV2 on digits (34 steps an epoch at batch 32) reached 65-82 % validation
# in 5 epochs (five seeds) and 98.6 % in 36. Without --epochs, training runs at least this many steps...
MIN_DEFAULT_STEPS = 1_200
# ...in at most this many epochs.
MAX_DEFAULT_EPOCHS = 50
# When the training loss has neither fallen below this share of ln(classes) (a uniform guess) nor
# by ``STALLED_FALL`` of the first epoch's loss by ``Recipe.stall_check_epoch``, training restarts
# from the initial weights at a tenth of the learning rate, at most ``LR_RETRIES`` times; so does a
# loss that is not finite. (A net stuck at chance holds its loss within a percent; a small one that
# learns slowly has lost 5 % by then.)
STALLED_LOSS_SHARE = 0.9
STALLED_FALL = 0.03
LR_RETRIES = 2


def evaluate_accuracy(
    model: nn.Module, split: Split, *, device: torch.device | str | None = None, batch_size: int = 512
) -> float:
    """Top-1 accuracy on ``split`` in percent (eval mode; the model's mode is restored)."""
    if device is None:
        device = device_of(model)
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
    *,
    epochs: int | None,
    lr: float | None,
    batch_size: int | None,
    optimizer: str | None,
    label_smoothing: float | None,
) -> None:
    """A one-line ``UserError`` for a training setting out of range (cheap: the train command
    checks them before loading any data). ``None`` means: the default (``default_epochs``, the
    recipe's value)."""
    if epochs is not None and epochs < 1:
        raise UserError(f"--epochs must be >= 1, but got {epochs}.")
    if batch_size is not None and batch_size < 2:
        raise UserError(f"--batch-size must be >= 2, but got {batch_size}.")
    if optimizer is not None and optimizer not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {optimizer!r}; valid optimizers: {', '.join(OPTIMIZERS)}.")
    if label_smoothing is not None and not 0.0 <= label_smoothing < 1.0:
        raise UserError(f"--label-smoothing must lie in [0, 1), but got {label_smoothing}.")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise UserError(f"--lr must be > 0 and finite, but got {lr}.")


def steps_per_epoch(samples: int, batch_size: int) -> int:
    """Optimizer steps in an epoch of ``samples`` at ``batch_size``: a last batch of one sample
    would break BatchNorm in train mode, so it is dropped."""
    return samples // batch_size + (1 if samples % batch_size >= 2 else 0)


def training_batch(recipe: Recipe, samples: int, batch_size: int | None) -> int:
    """The batch size training runs at: ``batch_size`` (``--batch-size``), else the recipe's for
    ``samples`` training samples (``batch_size_for``)."""
    return batch_size if batch_size is not None else batch_size_for(recipe, samples)


def default_epochs(recipe: Recipe, train_samples: int, *, batch_size: int | None = None) -> int:
    """The epochs ``train`` runs without ``--epochs``: ``DEFAULT_EPOCHS``, or on a small training
    set as many as make ``MIN_DEFAULT_STEPS`` optimizer steps, at most ``MAX_DEFAULT_EPOCHS``
    (digits' 1,077 training images at batch 32: 36 epochs; Fashion-MNIST's 54,000 at batch 128:
    5). ``batch_size`` is the one ``--batch-size`` asks for (default: the recipe's, as
    ``train_teacher`` picks it)."""
    steps = max(1, steps_per_epoch(train_samples, training_batch(recipe, train_samples, batch_size)))
    return max(DEFAULT_EPOCHS, min(MAX_DEFAULT_EPOCHS, math.ceil(MIN_DEFAULT_STEPS / steps)))


def train_teacher(
    model: nn.Module,
    data: TaskData,
    *,
    epochs: int,
    recipe: Recipe | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    optimizer: str | None = None,
    label_smoothing: float | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train ``model`` in place on ``data.train`` (with ``data.augment``) and leave it in eval mode.

    ``recipe`` (default: ``RECIPES["default"]``, SGD with one-cycle) sets the optimizer, schedule,
    learning rate, weight decay and label smoothing; ``lr``, ``batch_size``, ``optimizer`` and
    ``label_smoothing`` override it. Without ``batch_size``, the recipe's is halved until an epoch
    has enough steps (``batch_size_for``). The model's dropout and stochastic depth are scaled to
    the data (``regularisation_scale``). If the loss does not fall (``STALLED_LOSS_SHARE``,
    ``STALLED_FALL``) or is not finite, training restarts from the initial weights at a tenth of the learning rate.
    Validation accuracy is measured after every epoch, test accuracy once at the end; bfloat16
    autocast on CUDA. ``progress`` False prints nothing; otherwise a progress bar on a terminal,
    else one line per epoch. ``threads`` sets torch's CPU threads (None keeps the setting).

    Returns ``{"val_acc", "test_acc", "epochs", "seconds", ...}`` (accuracies in percent).
    """
    check_training_settings(
        epochs=epochs, lr=lr, batch_size=batch_size, optimizer=optimizer, label_smoothing=label_smoothing
    )
    recipe = (recipe or RECIPES["default"]).with_overrides(
        optimizer=optimizer, label_smoothing=label_smoothing
    )
    n = len(data.train)
    batch = training_batch(recipe, n, batch_size)
    steps = steps_per_epoch(n, batch)
    if steps == 0:
        raise UserError(f"the training split has {n} sample(s); expected at least 2.")
    peak_lr = lr if lr is not None else recipe.peak_lr(batch)
    device = torch.device(device)
    started = time.perf_counter()
    scale_regularisation(model, regularisation_scale(n))
    model.to(device)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stalled_below = STALLED_LOSS_SHARE * math.log(max(2, data.num_classes))
    check_epoch = recipe.stall_check_epoch(epochs)
    restarts: list[str] = []
    val_acc = loss_value = math.nan
    with _torch_threads(threads):
        for attempt in range(LR_RETRIES + 1):
            if attempt:
                model.load_state_dict(initial)
            run = _Run(
                model, data, recipe, epochs=epochs, batch=batch, steps=steps, lr=peak_lr,
                device=device, seed=seed,
            )  # fmt: skip
            first_loss = math.inf
            with _EpochReporter(enabled=progress, epochs=epochs, steps=steps) as rep:
                for epoch in range(1, epochs + 1):
                    loss_value = run.epoch(rep)
                    first_loss = min(first_loss, loss_value) if epoch == 1 else first_loss
                    stalled = not math.isfinite(loss_value) or (
                        epoch == check_epoch
                        and loss_value > stalled_below
                        and loss_value > (1 - STALLED_FALL) * first_loss
                    )
                    if stalled:
                        break
                    val_acc = run.val_acc()
                    rep.epoch(epoch, loss_value, val_acc, time.perf_counter() - started)
            if not stalled:
                break
            why = "diverged" if not math.isfinite(loss_value) else f"stalled at {loss_value:.3f}"
            restarts.append(f"lr {peak_lr:g}: loss {why} in epoch {epoch}")
            if attempt == LR_RETRIES:
                raise UserError(
                    f"training did not learn ({'; '.join(restarts)}); try another --lr, "
                    "--optimizer or more --epochs."
                )
            if progress:
                print(
                    f"loss {why} in epoch {epoch} at lr {peak_lr:g}; restarting at lr {peak_lr / 10:g}",
                    flush=True,
                )
            peak_lr /= 10
        test_acc = evaluate_accuracy(model, data.test, device=device)
    model.eval()
    return {
        "val_acc": val_acc,
        "test_acc": test_acc,
        "epochs": epochs,
        "seconds": round(time.perf_counter() - started, 2),
        "train_loss": loss_value,
        "optimizer": recipe.optimizer,
        "schedule": recipe.schedule,
        "lr": peak_lr,
        "weight_decay": recipe.weight_decay,
        "batch_size": batch,
        "label_smoothing": recipe.label_smoothing,
        "lr_restarts": restarts,
    }


class _Run:
    """One training attempt: the optimizer, its schedule and the shuffling, epoch by epoch."""

    def __init__(
        self,
        model: nn.Module,
        data: TaskData,
        recipe: Recipe,
        *,
        epochs: int,
        batch: int,
        steps: int,
        lr: float,
        device: torch.device,
        seed: int,
    ) -> None:
        self.model, self.data, self.recipe = model, data, recipe
        self.batch, self.steps, self.device = batch, steps, device
        torch.manual_seed(seed)
        self.order = torch.Generator().manual_seed(seed)
        groups = param_groups(model, recipe.weight_decay)
        self.opt: torch.optim.Optimizer
        if recipe.optimizer == "sgd":
            self.opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
        else:
            self.opt = torch.optim.AdamW(groups, lr=lr)
        total = epochs * steps
        self.sched: torch.optim.lr_scheduler.LRScheduler
        if recipe.schedule == "onecycle":
            self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=lr, total_steps=total)
        else:
            self.sched = torch.optim.lr_scheduler.LambdaLR(
                self.opt,
                lambda step: cosine_lr(1.0, min(step, total - 1), total, warmup_fraction=recipe.warmup),
            )
        self.criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
        )

    def epoch(self, rep: _EpochReporter) -> float:
        """Train one epoch; the mean training loss (not finite when training diverged)."""
        model, train, device = self.model, self.data.train, self.device
        model.train()
        perm = torch.randperm(len(train), generator=self.order)
        loss_sum = torch.zeros((), device=device)
        for step in range(self.steps):
            idx = perm[step * self.batch : (step + 1) * self.batch]
            x = train.x[idx].to(device, non_blocking=True)
            y = train.y[idx].to(device, non_blocking=True)
            if self.data.augment is not None:
                x = self.data.augment(x)
            with self.autocast:
                loss = self.criterion(model(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.recipe.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), self.recipe.grad_clip)
            self.opt.step()
            self.sched.step()
            loss_sum += loss.detach().float()
            rep.step()
        return float(loss_sum) / self.steps

    def val_acc(self) -> float:
        return evaluate_accuracy(self.model, self.data.val, device=self.device)


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
