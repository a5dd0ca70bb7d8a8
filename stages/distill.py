"""Fine-tuning with knowledge distillation from the cached teacher logits, optionally
quantization-aware (fake-quantized weights and activations, see ``stages.qat``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from stages._context import Context
from stages.config import DistillConfig
from stages.errors import StageError
from stages.measure import torch_accuracy
from stages.qat import prepare_qat, strip_qat
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
        train = ctx.data.train
        n = int(train.x.shape[0])  # not len(train): with alpha == 1 the labels are never read
        if n == 0:
            raise StageError("distill: the training split is empty; expected at least one sample.")
        batch_size = min(ctx.batch_size, n)
        steps = max(1, round(cfg.epochs * (n // batch_size)))

        soft = self._teacher_logits(ctx, n) if cfg.alpha > 0 else None
        model.to(ctx.device)
        if self.qat:
            prepare_qat(model)
        optimizer = torch.optim.SGD(
            param_groups(model), lr=cfg.lr, momentum=MOMENTUM, nesterov=True
        )
        report_at = {max(1, round(f * steps)) for f in ctx.report_fractions}
        gen = torch.Generator().manual_seed(ctx.seed)

        model.train()
        for step, idx in enumerate(_batch_indices(n, batch_size, steps, gen)):
            lr = cosine_lr(cfg.lr, step, steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            out = model(train.x[idx].to(ctx.device, non_blocking=True))
            labels = train.y[idx].to(ctx.device, non_blocking=True) if cfg.alpha < 1 else None
            targets = soft[idx.to(soft.device)] if soft is not None else None
            if targets is not None and targets.shape != out.shape:
                raise StageError(
                    f"distill: the student outputs {tuple(out.shape[1:])} per sample but the "
                    f"teacher logits have {tuple(targets.shape[1:])}; they must match."
                )
            loss = distill_loss(out, targets, labels, alpha=cfg.alpha, temperature=cfg.temperature)
            if not torch.isfinite(loss):
                kind = "NaN" if torch.isnan(loss) else "inf"
                raise StageError(
                    f"distill: loss became {kind} at step {step} (lr={lr:.3g}); "
                    f"expected a finite loss, try a lower distill.lr."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if step + 1 in report_at and ctx.on_progress is not None:
                val_acc = torch_accuracy(
                    model, ctx.data.val, device=ctx.device, batch_size=ctx.eval_batch_size
                )
                ctx.report(self.name, (step + 1) / steps, val_acc)

        if self.qat:
            strip_qat(model)
        return model.eval()

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
                f"distill: ctx.teacher_logits has {logits.shape[0]} rows but the "
                f"training split has {n}; they must be the teacher's outputs on data.train."
            )
        return logits.to(ctx.device)
