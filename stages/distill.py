"""Fine-tuning with knowledge distillation from the cached teacher logits, optionally with a
feature term (the teacher run on each batch) and quantization-aware (fake-quantized weights and
activations, see ``stages.qat``)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from stages._context import Context
from stages._graph import count_params_macs, device_of, on_device_in_eval
from stages.config import DistillConfig
from stages.errors import StageError
from stages.files import atomic_path, write_atomic
from stages.measure import torch_accuracy
from stages.qat import FakeQuantized, prepare_qat, strip_qat
from stages.teacher import teacher_logits

MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
# Linear warm-up over this fraction of the steps (only when that is at least one step): the
# student starts from weights the prune stage just disturbed, and QAT from new rounding.
WARMUP_FRACTION = 0.05


def distill_loss(
    student: torch.Tensor,
    teacher: torch.Tensor | None,
    labels: torch.Tensor | None,
    *,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """``alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE``.

    The T^2 factor keeps the soft-target gradients on the scale of the hard-target ones as T
    grows. With ``alpha == 0`` the teacher is not needed, with ``alpha == 1`` the labels are not.
    """
    loss = student.new_zeros(())
    if alpha > 0:
        if teacher is None:
            raise ValueError(f"distill_loss with alpha={alpha} > 0 needs teacher logits.")
        kl = F.kl_div(
            F.log_softmax(student / temperature, dim=1),
            F.log_softmax(teacher / temperature, dim=1),
            log_target=True,
            reduction="batchmean",
        )
        loss = loss + alpha * temperature**2 * kl
    if alpha < 1:
        if labels is None:
            raise ValueError(f"distill_loss with alpha={alpha} < 1 needs labels.")
        loss = loss + (1 - alpha) * F.cross_entropy(student, labels)
    return loss


def cosine_lr(base: float, step: int, total: int, *, warmup_fraction: float = WARMUP_FRACTION) -> float:
    """Learning rate of 0-based ``step`` of ``total``: linear warm-up over ``warmup_fraction`` of
    the steps, then cosine decay to 0."""
    warmup = int(total * warmup_fraction)
    factor = 0.5 * (1 + math.cos(math.pi * step / total))
    if step < warmup:
        factor *= (step + 1) / warmup
    return base * factor


def param_groups(model: nn.Module, weight_decay: float = WEIGHT_DECAY) -> list[dict[str, Any]]:
    """Weight decay on conv / linear weights only; none on BN scales and biases (decaying those
    just shrinks activations without regularising anything)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() > 1 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def checkpointed_step(path: Path | None, total: int | None = None) -> int:
    """The step a rung checkpoint at ``path`` resumes a ``total``-step run from (0: none there,
    or one of another budget; ``total`` None: a run of any budget). The step is read from the
    small JSON written beside it last, so a checkpoint cut off while being written is never
    trusted."""
    if path is None:
        return 0
    try:
        info = json.loads(path.with_suffix(".json").read_text())
        step, saved_total = int(info["step"]), int(info["total"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    fits = total is None or saved_total == total
    return step if fits and 0 < step < saved_total and path.is_file() else 0


def remove_rung_checkpoint(path: Path | None) -> None:
    """Delete the rung checkpoint at ``path`` and its JSON (a run that will not continue)."""
    if path is not None:
        path.with_suffix(".json").unlink(missing_ok=True)
        path.unlink(missing_ok=True)


def _save_rung(
    path: Path, step: int, total: int, model: nn.Module, optimizer: torch.optim.Optimizer,
    features: FeatureLoss | None,
) -> None:
    """The state a run continues from at ``step``: student, optimizer, feature projection, step
    and the global RNG (dropout draws); the data order is replayed from the seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "projection": features.projection.state_dict() if features is not None else None,
        "rng": torch.get_rng_state(),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    mark_rung_checkpoint(path, step, total)


def mark_rung_checkpoint(path: Path, step: int, total: int) -> None:
    """Say that the checkpoint file at ``path`` holds step ``step`` of a ``total``-step run (the
    JSON ``checkpointed_step`` reads), once the file is complete: after ``_save_rung`` writes it,
    or once a copy fetched from another machine is in place."""
    write_atomic(path.with_suffix(".json"), json.dumps({"step": step, "total": total}))


def _load_rung(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, features: FeatureLoss | None
) -> bool:
    """Restore what ``_save_rung`` wrote into ``model`` and ``optimizer``; False (nothing
    restored) when the checkpoint does not fit this student (another config's)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    own, saved = model.state_dict(), state["model"]
    if own.keys() != saved.keys() or any(own[k].shape != saved[k].shape for k in own):
        return False  # checked first: a failing load_state_dict has copied what did fit
    try:
        model.load_state_dict(saved)
        optimizer.load_state_dict(state["optimizer"])
        if features is not None and state["projection"] is not None:
            features.projection.load_state_dict(state["projection"])
    except (RuntimeError, ValueError, KeyError):
        return False
    torch.set_rng_state(state["rng"])
    return True


def _batch_indices(
    n: int, batch_size: int, steps: int, gen: torch.Generator
) -> Iterator[torch.Tensor]:
    """Index tensors of ``steps`` batches: full batches of fresh permutations, epoch after epoch
    (a ragged last batch is dropped: a batch of one breaks BatchNorm in training mode)."""
    per_epoch = n // batch_size
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=gen)
        for i in range(min(per_epoch, steps - done)):
            yield perm[i * batch_size : (i + 1) * batch_size]
        done += per_epoch


def _linear(module: nn.Module) -> nn.Linear | None:
    """``module`` if it is an ``nn.Linear``, the one it fake-quantizes if it wraps one (QAT)."""
    inner = module.module if isinstance(module, FakeQuantized) else module
    return inner if isinstance(inner, nn.Linear) else None


def classifier(model: nn.Module, x: torch.Tensor) -> nn.Module | None:
    """The ``nn.Linear`` (or its QAT wrapper) that produces ``model``'s output on ``x`` (the last
    one called whose output has the model's output shape), found by running ``x`` through it in
    eval mode; None if no linear layer does (a convolutional classifier)."""
    called: list[tuple[nn.Module, tuple[int, ...]]] = []
    handles = [
        module.register_forward_hook(lambda mod, _, out: called.append((mod, tuple(out.shape))))
        for module in model.modules()
        if _linear(module) is not None
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            shape = tuple(model.eval()(x).shape)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    matching = [module for module, out in called if out == shape]
    return matching[-1] if matching else None


class FeatureLoss:
    """The feature term of ``distill.features``, as a context: the teacher's and the student's
    classifier inputs captured by forward hooks, the student's mapped to the teacher's width by a
    learned linear projection (pruning narrows it; ``projection`` trains with the student),
    compared by mean squared error over the teacher features' variance (so the weight means the
    same for any model). The teacher runs on the student's device in eval mode; its place and mode
    are put back on exit, since the same teacher is the trials' baseline."""

    def __init__(self, teacher: nn.Module, student: nn.Module, probe: torch.Tensor) -> None:
        self.teacher, self.student, self.probe = teacher, student, probe
        self._seen: dict[str, torch.Tensor] = {}
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> FeatureLoss:
        with contextlib.ExitStack() as stack:
            stack.enter_context(on_device_in_eval(self.teacher, self.probe.device))
            heads = classifier(self.teacher, self.probe), classifier(self.student, self.probe)
            if heads[0] is None or heads[1] is None:
                raise StageError(
                    "distill",
                    "distill.features needs a model whose output comes from an nn.Linear "
                    "classifier (its input is the feature compared); set distill.features=0."
                )
            for key, head in zip(("teacher", "student"), heads, strict=True):
                stack.callback(head.register_forward_hook(self._keeper(key)).remove)
            self._stack = stack.pop_all()
        widths = [linear.in_features for linear in map(_linear, heads) if linear is not None]
        self.projection = nn.Linear(widths[1], widths[0], bias=False)
        if widths[1] == widths[0]:
            nn.init.eye_(self.projection.weight)
        self.projection.to(self.probe.device)
        return self

    def _keeper(self, key: str) -> Any:
        def keep(_: nn.Module, args: tuple[torch.Tensor, ...], __: torch.Tensor) -> None:
            self._seen[key] = args[0]

        return keep

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The feature loss of the student's forward pass just run on the batch ``x``."""
        with torch.no_grad():
            self.teacher(x)
        target, feature = self._seen.pop("teacher").float().flatten(1), self._seen.pop("student").flatten(1)
        return F.mse_loss(self.projection(feature), target) / target.var().clamp_min(1e-8)

    def __exit__(self, *_: object) -> None:
        self._stack.close()


def trained_epochs(cfg: DistillConfig, student: nn.Module, ctx: Context) -> float:
    """The epochs ``student`` distils for: ``cfg.epochs``, times ``teacher MACs / student MACs``
    capped at ``cfg.size_boost`` (so never fewer than ``cfg.epochs``; 1 leaves them as set).

    The teacher's logits are cached, so a step costs about the student's forward and backward
    pass: a student with k times fewer MACs runs an epoch several times faster (less than k times:
    per-step costs do not shrink with it), and a boosted trial costs about what ``cfg.epochs`` of
    a student the teacher's size would."""
    if cfg.size_boost <= 1 or cfg.epochs <= 0:
        return cfg.epochs
    x = ctx.data.example_input()
    _, teacher_macs = count_params_macs(ctx.teacher, x.to(device_of(ctx.teacher)))
    _, student_macs = count_params_macs(student, x.to(device_of(student)))
    return cfg.epochs * min(cfg.size_boost, max(1.0, teacher_macs / max(1, student_macs)))


def training_plan(cfg: DistillConfig, student: nn.Module, ctx: Context) -> tuple[int, int]:
    """The optimizer steps and the batch size ``student`` distils with under ``cfg``: steps for
    ``trained_epochs`` of the training split in full batches (at least one), so ``steps *
    batch_size`` is the training samples it sees, the compute a search spends on it; (0, 0)
    when ``cfg`` trains nothing."""
    n = int(ctx.data.train.x.shape[0])  # not len(train): with alpha == 1 the labels are never read
    if cfg.epochs <= 0 or n == 0:
        return 0, 0
    batch_size = min(ctx.batch_size, n)
    return max(1, round(trained_epochs(cfg, student, ctx) * (n // batch_size))), batch_size


@dataclasses.dataclass(frozen=True)
class Distill:
    """Fine-tunes the (pruned) student against ``ctx.teacher_logits`` and the labels.

    ``qat=True`` fake-quantizes the student while it trains (``stages.qat``) and strips the
    fake quantization afterwards, leaving fp32 weights adapted to int8 rounding. Training uses
    no augmentation because the cached teacher logits belong to the un-augmented inputs.
    """

    name: ClassVar[str] = "distill"

    config: DistillConfig
    qat: bool = dataclasses.field(default=False, kw_only=True)

    def run(self, model: nn.Module, ctx: Context) -> nn.Module:
        cfg = self.config
        if cfg.epochs <= 0:
            return model.eval()
        n = int(ctx.data.train.x.shape[0])
        if n == 0:
            raise StageError("distill", "the training split is empty; expected at least one sample.")
        steps, batch_size = training_plan(cfg, model, ctx)

        soft = self._teacher_logits(ctx, n) if cfg.alpha > 0 else None
        model.to(ctx.device)
        if self.qat:
            prepare_qat(model)
        if cfg.features > 0:
            with FeatureLoss(ctx.teacher, model, ctx.data.train.x[:2].to(ctx.device)) as features:
                self._train(model, ctx, soft, steps, batch_size, features)
        else:
            self._train(model, ctx, soft, steps, batch_size, None)
        if self.qat:
            strip_qat(model)
        return model.eval()

    def _train(
        self,
        model: nn.Module,
        ctx: Context,
        soft: torch.Tensor | None,
        steps: int,
        batch_size: int,
        features: FeatureLoss | None,
    ) -> None:
        cfg, train = self.config, ctx.data.train
        groups = param_groups(model)
        if features is not None:
            groups.append({"params": list(features.projection.parameters()), "weight_decay": 0.0})
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=MOMENTUM, nesterov=True)
        report_at = {max(1, round(f * steps)) for f in ctx.report_fractions}
        gen = torch.Generator().manual_seed(ctx.seed)
        # One cosine over the whole budget, rungs or not: a run stopped at a rung and continued
        # is exactly the straight run (same learning rate at every step), so a promoted trial's
        # final model is the full-budget one, and the rung->final calibration absorbs that a
        # rung's model is evaluated mid-schedule.
        start = checkpointed_step(ctx.rung_checkpoint, steps)
        if start and not _load_rung(ctx.rung_checkpoint, model, optimizer, features):  # type: ignore[arg-type]
            start = 0
        rungs = {r for r in ctx.rungs if start < r < steps}

        model.train()
        for step, idx in enumerate(_batch_indices(int(train.x.shape[0]), batch_size, steps, gen)):
            if step < start:  # replay the data order up to the checkpoint; trained there already
                continue
            lr = cosine_lr(cfg.lr, step, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = train.x[idx].to(ctx.device, non_blocking=True)
            out = model(x)
            labels = train.y[idx].to(ctx.device, non_blocking=True) if cfg.alpha < 1 else None
            targets = soft[idx.to(soft.device)] if soft is not None else None
            if targets is not None and targets.shape != out.shape:
                raise StageError(
                    "distill",
                    f"the student outputs {tuple(out.shape[1:])} per sample but the "
                    f"teacher logits have {tuple(targets.shape[1:])}; they must match."
                )
            loss = distill_loss(out, targets, labels, alpha=cfg.alpha, temperature=cfg.temperature)
            if features is not None:
                loss = loss + cfg.features * features(x)
            if not torch.isfinite(loss):
                kind = "NaN" if torch.isnan(loss) else "inf"
                raise StageError(
                    "distill",
                    f"loss became {kind} at step {step} (lr={lr:.3g}); "
                    f"expected a finite loss, try a lower distill.lr."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done = step + 1
            reported = done in report_at and ctx.on_progress is not None
            # With rungs the end of the budget is the last rung (heard, never judged).
            rung_end = done in rungs or (bool(ctx.rungs) and done == steps)
            if not (reported or rung_end):
                continue
            val_acc = torch_accuracy(model, ctx.data.val, device=ctx.device, batch_size=ctx.eval_batch_size)
            if rung_end:
                self._rung_end(model, ctx, optimizer, features, done, steps, val_acc)
            if reported:
                ctx.report(self.name, done / steps, val_acc)

    def _rung_end(
        self,
        model: nn.Module,
        ctx: Context,
        optimizer: torch.optim.Optimizer,
        features: FeatureLoss | None,
        done: int,
        steps: int,
        val_acc: float,
    ) -> None:
        """Checkpoint the student at a rung (before the rung's callback may stop the run: a
        finished rung is never lost; not at the end, which nothing continues) and tell
        ``ctx.on_rung`` its validation accuracy ``val_acc``."""
        if ctx.rung_checkpoint is not None and done < steps:
            _save_rung(ctx.rung_checkpoint, done, steps, model, optimizer, features)
        if ctx.on_rung is not None:
            ctx.on_rung(self.name, done, steps, val_acc)

    @staticmethod
    def _teacher_logits(ctx: Context, n: int) -> torch.Tensor:
        """``ctx.teacher_logits`` on ``ctx.device``, computed here when the context holds none
        (the pipeline and the search fill them once, so every trial reuses them)."""
        logits = ctx.teacher_logits
        if logits is None:
            logits = teacher_logits(
                ctx.teacher, ctx.data.train, device=ctx.device, batch_size=ctx.eval_batch_size
            )
        if logits.shape[0] != n:
            raise StageError(
                "distill",
                f"ctx.teacher_logits has {logits.shape[0]} rows but the "
                f"training split has {n}; they must be the teacher's outputs on data.train."
            )
        return logits.to(ctx.device)
