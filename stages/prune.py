"""Pruning: structured (channels physically removed through torch-pruning's dependency graph, so
the model gets smaller and faster) or unstructured (magnitude sparsity: the weights become
zeros, the shape stays, and only compressed bytes shrink)."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import traceback
import warnings
from typing import ClassVar

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning.dependency.node import Node

from stages._context import Context
from stages._graph import (
    check_forward,
    count_params_macs,
    find_classifier,
    head_layers,
    module_name,
    out_width,
    weight_layers,
)
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
from stages.errors import StageError

__all__ = [
    "Prune",
    "PruneFailure",
    "StructuralProbe",
    "count_params_macs",
    "find_classifier",
    "probe_structured",
]

# Over iterative steps, torch-pruning stops pruning a layer that has lost this fraction of its
# initial channels (checked before each step), so global ranking cannot hollow one layer out.
MAX_LAYER_RATIO = 0.95

# What torch-pruning raises on graphs it cannot handle (it has no error type of its own):
# index mapping failures, shape mismatches, asserts, divisions by zero in reshape tracking.
_PRUNER_FAILURES = (
    ArithmeticError,
    AssertionError,
    AttributeError,
    LookupError,
    RuntimeError,
    TypeError,
    ValueError,
)

# Training batches whose loss gradients feed gradient-based criteria.
GRADIENT_BATCHES = 4

# Above any real importance, finite so thresholds that reach it still compare sanely.
_PROTECTED_SCORE = 1e300


class PruneFailure(StageError):
    """torch-pruning failed on this model's graph; ``layer`` is the layer it failed on, when
    known (leaving that layer whole, via ``Context.frozen_layers``, may let the rest prune)."""

    def __init__(self, message: str, layer: str | None = None, group: tuple[str, ...] = ()) -> None:
        super().__init__("prune", message)
        self.layer = layer
        self.group = group  # the layers coupled to the failing one (their channels go together)


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
    except _PRUNER_FAILURES as exc:
        site, layer = _failure_site(exc, model)
        where = "" if site is None else f" at {site}"
        raise PruneFailure(
            f"torch-pruning cannot trace this model's dependency graph{where} "
            f"({type(exc).__name__}: {exc}); prune.method=unstructured still applies.",
            layer,
        ) from exc


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
    except _PRUNER_FAILURES as exc:
        site, layer = _failure_site(exc, model)
        if site is None and group is not None:
            layer = module_name(model, group[0].dep.target.module)
            site = f"layer {layer!r}"
        where = site or "a layer"
        raise PruneFailure(
            f"torch-pruning cannot prune {where} in this graph "
            f"({type(exc).__name__}: {exc}); prune.method=unstructured still applies.",
            layer,
            _coupled_layers(pruner, model, group, layer),
        ) from exc


def _coupled_layers(
    pruner: tp.pruner.MetaPruner, model: nn.Module, group: tp.Group | None, layer: str | None
) -> tuple[str, ...]:
    """Names of the layers whose output channels the failing step was removing: those of
    ``group``, or (when the failure came before any group) of every group touching ``layer``."""
    names = {id(m): name for name, m in model.named_modules() if name}
    graph = pruner.DG

    def out_layers(g: tp.Group) -> list[str]:
        return [
            names[id(dep.target.module)]
            for dep, _ in g
            if graph.is_out_channel_pruning_fn(dep.handler) and id(dep.target.module) in names
        ]

    if group is not None:
        return tuple(dict.fromkeys(out_layers(group)))
    if layer is None:
        return ()
    coupled: list[str] = []
    try:
        for g in graph.get_all_groups(root_module_types=(nn.modules.conv._ConvNd, nn.Linear)):
            members = out_layers(g)
            if layer in members or any(names.get(id(dep.target.module)) == layer for dep, _ in g):
                coupled += members
    except _PRUNER_FAILURES:  # the graph cannot even list its groups: nothing more to learn
        return ()
    return tuple(dict.fromkeys(coupled))


def _failure_site(exc: BaseException, model: nn.Module) -> tuple[str | None, str | None]:
    """Where in ``model`` torch-pruning failed (its errors do not say, but the innermost frames
    of the traceback hold the layer or graph node they were working on): a description, and the
    layer's name when the innermost site is a layer."""
    names = {id(m): name for name, m in model.named_modules() if name}
    site, layer = None, None
    for frame, _ in traceback.walk_tb(exc.__traceback__):  # outermost frame first
        layers: list[str] = []
        operations: list[str] = []
        for value in frame.f_locals.values():
            if isinstance(value, Node):
                node, value = value, value.module
                if id(value) not in names:  # a functional op (view, cat, ...) in forward
                    operation = f"operation {type(value).__name__.strip('_')!r}"
                    upstream = _upstream_layer(node, names)
                    if upstream is not None:
                        operation += f" after layer {upstream!r}"
                    operations.append(operation)
                    continue
            if isinstance(value, nn.Module) and id(value) in names:
                layers.append(names[id(value)])
        if layers:
            site, layer = f"layer {layers[0]!r}", layers[0]
        elif operations:
            site, layer = operations[0], None
    return site, layer


def _upstream_layer(node: Node, names: dict[int, str]) -> str | None:
    """Name of the nearest model layer feeding graph node ``node`` (breadth first)."""
    queue, seen = list(node.inputs), {id(node)}
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if id(current.module) in names:
            return names[id(current.module)]
        queue.extend(current.inputs)
    return None


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


@torch.no_grad()
def prune_unstructured(model: nn.Module, ratio: float, scope: str, num_classes: int) -> None:
    """Zero the ``ratio`` smallest-magnitude weights of every Conv/Linear but the classifier.

    ``scope`` "global" ranks all layers together (layers with small weights lose more);
    "uniform" zeroes ``ratio`` of each layer. Plain tensor writes: no masks or hooks stay behind.
    """
    heads = {id(m) for m in head_layers(model, num_classes)}
    weights = [m.weight for _, m in weight_layers(model) if id(m) not in heads]
    if not weights:
        return
    if scope == "global":
        magnitudes = torch.cat([w.detach().abs().flatten().float() for w in weights])
        threshold = _kth_smallest(magnitudes, ratio)
        if threshold is not None:
            for w in weights:
                w.masked_fill_(w.abs() <= threshold, 0)
        return
    for w in weights:
        threshold = _kth_smallest(w.detach().abs().flatten().float(), ratio)
        if threshold is not None:
            w.masked_fill_(w.abs() <= threshold, 0)


def _kth_smallest(values: torch.Tensor, ratio: float) -> torch.Tensor | None:
    """The magnitude at or below which ``ratio`` of ``values`` lie; None when that is none."""
    k = int(ratio * values.numel())
    if k == 0:
        return None
    return torch.kthvalue(values, k).values


# Rounds of probing: each failure on a named layer freezes it and the probe runs again.
PROBE_ROUNDS = 12
# The ratio the probe prunes every layer by (uniform): enough to touch every channel group.
PROBE_RATIO = 0.5


@dataclasses.dataclass(frozen=True)
class StructuralProbe:
    """What structural pruning can do on a model: whether it applies at all (``reason`` says
    why not), which layers it must leave whole and why, and how many layers it thinned."""

    possible: bool
    frozen: dict[str, str]
    pruned_layers: tuple[str, ...]
    reason: str | None = None


def probe_structured(model: nn.Module, ctx: Context) -> StructuralProbe:
    """Prune copies of ``model`` uniformly, freezing each layer torch-pruning fails on, until a
    copy prunes and still runs (or no layer can be blamed, or nothing is left to prune).

    ``model`` is not changed. The result's ``frozen`` goes into ``Context.frozen_layers`` so every
    trial prunes the rest without failing where the probe did.
    """
    frozen: dict[str, str] = dict.fromkeys(ctx.frozen_layers, "frozen by the caller")
    heads = {id(m) for m in head_layers(model, ctx.data.num_classes)}
    before = {name: out_width(m) for name, m in weight_layers(model) if id(m) not in heads}
    config = PruneConfig(ratio=PROBE_RATIO, scope="uniform", criterion="l2")
    for _ in range(PROBE_ROUNDS):
        candidate = copy.deepcopy(model).cpu().eval()
        probe_ctx = dataclasses.replace(ctx, frozen_layers=tuple(frozen), device=torch.device("cpu"))
        try:
            Prune(config).run(candidate, probe_ctx)
        except PruneFailure as exc:
            # Freeze the layer it failed on; if that was frozen already (its channels are
            # pruned as another layer's dependants), the whole group the failing step pruned.
            blamed = [exc.layer] if exc.layer is not None and exc.layer not in frozen else [
                name for name in exc.group if name not in frozen
            ]
            if not blamed:
                return StructuralProbe(False, frozen, (), reason=str(exc))
            for name in blamed:
                frozen[name] = str(exc)
            continue
        except StageError as exc:  # the pruned copy no longer runs: no layer to blame
            return StructuralProbe(False, frozen, (), reason=str(exc))
        after = {name: out_width(m) for name, m in weight_layers(candidate)}
        pruned = tuple(name for name, width in before.items() if after.get(name, width) < width)
        if not pruned:
            return StructuralProbe(False, frozen, (), reason="no layer can be thinned (every channel group is frozen or coupled to the classifier)")
        return StructuralProbe(True, frozen, pruned)
    return StructuralProbe(False, frozen, (), reason=f"torch-pruning failed on {PROBE_ROUNDS} layers in turn")
