"""Pruning: structured (channels physically removed through torch-pruning's dependency graph, so
the model gets smaller and faster) or unstructured (magnitude sparsity, ``stages/sparsity.py``:
the weights become zeros, the shape stays, and only compressed bytes shrink).

Why torch-pruning failed, and where, is worked out in ``stages/prune_failures.py``; the
analysis's probe of what structural pruning can do on a model is ``stages/prune_probe.py``."""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from typing import ClassVar

import torch
import torch_pruning as tp
from torch import nn

from stages._context import Context
from stages._graph import check_forward, find_classifier, head_layers
from stages._transformer import (
    attention_channel_groups,
    attention_layers,
    attention_ratio_caps,
    head_importance,
    remove_heads,
    sync_pruned_widths,
    to_head_attention,
)
from stages.config import PruneConfig
from stages.criteria import CRITERIA
from stages.prune_failures import PRUNER_FAILURES, PruneFailure, step_failure, trace_failure
from stages.sparsity import prune_unstructured

__all__ = ["GRADIENT_BATCHES", "MAX_LAYER_RATIO", "Prune"]

# Over iterative steps, torch-pruning stops pruning a layer that has lost this fraction of its
# initial channels (checked before each step), so global ranking cannot hollow one layer out.
MAX_LAYER_RATIO = 0.95

# Training batches whose loss gradients feed gradient-based criteria.
GRADIENT_BATCHES = 4

# Above any real importance, finite so thresholds that reach it still compare sanely.
_PROTECTED_SCORE = 1e300


class _RankableImportance(tp.importance.Importance):
    """Wraps a criterion so ranking behaves: ties are broken by a tiny seeded jitter, and the
    best channel of every layer in a group ranks above every other score.

    torch-pruning's global step prunes every channel scoring at or below a threshold and skips
    (silently, without pruning) any group in which some layer would lose all its channels. Tied
    scores (fresh batch-norm scales are all 1) would then prune all or nothing, and a group
    spanning a concatenation could lose one whole branch. Protecting each layer's best channel
    keeps every layer at least one channel wide instead.
    """

    def __init__(self, inner: tp.importance.Importance, generator: torch.Generator) -> None:
        self.inner = inner
        self.generator = generator

    def __call__(self, group: tp.Group) -> torch.Tensor | None:
        imp = self.inner(group)
        if imp is None:
            return None
        imp = torch.nan_to_num(imp.detach().double().cpu(), nan=0.0, posinf=0.0, neginf=0.0)
        scale = float(imp.abs().max()) or 1.0
        imp = imp + 1e-9 * scale * torch.rand(imp.shape, generator=self.generator, dtype=imp.dtype)
        protected = {int(imp.argmax())}
        for item in group.items:
            # root_idxs: the positions in ``imp`` this layer's channels map to.
            positions = sorted({r for r in item.root_idxs if r is not None and 0 <= r < len(imp)})
            if positions and len(positions) < len(imp):
                segment = torch.tensor(positions)
                protected.add(int(segment[imp[segment].argmax()]))
        imp[list(protected)] = _PROTECTED_SCORE
        return imp


@dataclasses.dataclass(frozen=True)
class Prune:
    """Remove ``config.ratio`` of the channels (structured) or weights (unstructured).

    The classifier head keeps its output width. Raises ``StageError`` naming the layer when the
    model's graph cannot be pruned (the model may then be half-pruned: discard it); a returned
    model always runs and is in eval mode.
    """

    config: PruneConfig = dataclasses.field(default_factory=PruneConfig)
    name: ClassVar[str] = "prune"

    def run(self, model: nn.Module, ctx: Context) -> nn.Module:
        if self.config.ratio == 0 and (self.config.heads == 0 or not attention_layers(model)):
            return model
        model.to(ctx.device)
        example = ctx.data.example_input().to(ctx.device)
        num_classes = ctx.data.num_classes
        find_classifier(model, num_classes, stage=self.name)  # fail early and clearly when there is no head
        if self.config.ratio > 0 and self.config.method == "structured":
            self._prune_structured(model, ctx, example)
        elif self.config.ratio > 0:
            prune_unstructured(model, self.config.ratio, self.config.scope, num_classes)
        if self.config.heads > 0:
            _remove_heads(model, ctx, self.config.heads)
        model.eval()
        check_forward(model, example, num_classes, self.name)
        return model

    def _prune_structured(self, model: nn.Module, ctx: Context, example: torch.Tensor) -> None:
        config = self.config
        needs_gradients = CRITERIA[config.criterion].needs_gradients
        model.eval()  # tracing must not update batch-norm statistics
        # torch-pruning warns about choices it makes on its own (e.g. the pruning dimension of
        # bare nn.Parameters); they are not the user's to act on.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="torch_pruning")
            pruner = _build_pruner(model, config, ctx, example)
            # The random criterion draws from torch's global generator: seed a fork of it so
            # trials repeat without disturbing the caller's random stream.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(ctx.seed)
                for _ in range(config.steps):
                    if needs_gradients:
                        _accumulate_gradients(model, ctx)
                    _step(pruner, model)
                    sync_pruned_widths(model)
        if needs_gradients:
            model.zero_grad(set_to_none=True)


def _remove_heads(model: nn.Module, ctx: Context, fraction: float) -> None:
    """Remove ``fraction`` of every attention layer's heads, ranked on training batches."""
    layers = to_head_attention(model)
    if not layers:
        return
    batches = itertools.islice(ctx.data.train.batches(ctx.batch_size), GRADIENT_BATCHES)
    remove_heads(layers, head_importance(model, layers, batches, ctx.device), fraction)


def _untraceable(model: nn.Module) -> str | None:
    """Why torch-pruning cannot be given ``model`` at all, or None. torchvision's shifted-window
    attention (Swin) partitions tokens into windows with reshapes and rolls whose index mapping
    torch-pruning's grouping expands without end (measured: past 8 GB on a two-stage Swin at
    8 x 8 before it was stopped), so it is refused up front rather than left to exhaust memory."""
    from torchvision.models.swin_transformer import (
        ShiftedWindowAttention,
        ShiftedWindowAttentionV2,
    )

    for name, module in model.named_modules():
        if isinstance(module, (ShiftedWindowAttention, ShiftedWindowAttentionV2)):
            return (
                f"torch-pruning's dependency grouping does not finish on torchvision's "
                f"shifted-window attention ({name!r}, Swin); prune.method=unstructured still applies."
            )
    return None


def _build_pruner(
    model: nn.Module, config: PruneConfig, ctx: Context, example: torch.Tensor
) -> tp.pruner.MetaPruner:
    """torch-pruning's pruner over the model's dependency graph, classifier heads left whole."""
    why = _untraceable(model)
    if why is not None:
        raise PruneFailure(why)
    try:
        return tp.pruner.MetaPruner(
            model,
            example,
            importance=_RankableImportance(
                CRITERIA[config.criterion].importance(), torch.Generator().manual_seed(ctx.seed)
            ),
            global_pruning=config.scope == "global",
            pruning_ratio=config.ratio,
            max_pruning_ratio=MAX_LAYER_RATIO,
            iterative_steps=config.steps,
            round_to=config.round_to if config.round_to > 1 else None,
            ignored_layers=head_layers(model, ctx.data.num_classes) + _frozen(model, ctx),
            # Attention's embedding width is pruned head by head (see attention_channel_groups).
            out_channel_groups=attention_channel_groups(model),
            pruning_ratio_dict=attention_ratio_caps(model, config.ratio) or None,
        )
    except PRUNER_FAILURES as exc:
        raise trace_failure(exc, model) from exc


def _frozen(model: nn.Module, ctx: Context) -> list[nn.Module]:
    """The layers of ``ctx.frozen_layers`` that ``model`` still has (depth may have removed some)."""
    modules = dict(model.named_modules())
    return [modules[name] for name in ctx.frozen_layers if name in modules]


def _step(pruner: tp.pruner.MetaPruner, model: nn.Module) -> None:
    """One pruning step; a failure names the layer torch-pruning was working on."""
    group = None
    try:
        for group in pruner.step(interactive=True):
            group.prune()
    except PRUNER_FAILURES as exc:
        raise step_failure(exc, pruner, model, group) from exc


def _accumulate_gradients(model: nn.Module, ctx: Context) -> None:
    """Cross-entropy gradients of a few training batches, for gradient-based criteria.

    The model runs in train mode (as when it learns) but its buffers (batch-norm statistics)
    are restored afterwards: scoring channels must not change the model it scores.
    """
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:  # frozen layers are still pruned, so they need scores too
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    model.train()
    try:
        for i, (x, y) in enumerate(ctx.data.train.batches(ctx.batch_size)):
            if i == GRADIENT_BATCHES:
                break
            logits = model(x.to(ctx.device))
            if isinstance(logits, (tuple, list)):  # e.g. main and auxiliary logits in train mode
                logits = logits[0]
            nn.functional.cross_entropy(logits, y.to(ctx.device)).backward()
    finally:
        model.eval()
        for p in frozen:
            p.requires_grad_(False)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])
