"""Depth: remove whole blocks, so the student runs fewer operators, not only thinner ones.

A block is removable when it maps a tensor to a tensor of the same shape (a residual block with an
identity shortcut, a squeeze-excitation gate, a transformer encoder layer): replacing it by the
identity leaves a model that still runs and exports, and distillation from the original teacher
recovers what the block did. Blocks are ranked once per teacher by how much the training loss
rises when each is removed alone; a config removes a fraction of them, least important first.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import operator
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from stages._context import Context
from stages._graph import check_forward, find_classifier, module_name
from stages.config import DepthConfig
from stages.errors import StageError

__all__ = [
    "Depth",
    "cut_stages",
    "find_cuts",
    "find_removable_blocks",
    "is_residual",
    "most_removable",
    "probe_inputs",
    "rank_blocks",
    "reads_its_input",
    "remove_blocks",
]

# Training batches the ranking scores each removal on.
RANKING_BATCHES = 4


def find_removable_blocks(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Qualified names of the residual blocks of ``model``, which can be replaced by the identity.

    A block qualifies when it runs once per forward on one tensor, returns a tensor of the same
    shape, and adds (or multiplies, as a squeeze-excitation gate does) its input to something it
    computed from it (see ``is_residual``). A block inside another qualifying block is left to
    its container. Order: as the forward runs them.
    """
    names = {id(m): name for name, m in model.named_modules() if name}
    calls: dict[str, int] = {}
    same_shape: list[str] = []
    handles = []

    def hook(module: nn.Module, args: tuple, output: object) -> None:
        name = names[id(module)]
        calls[name] = calls.get(name, 0) + 1
        if (
            calls[name] == 1
            and len(args) == 1
            and isinstance(args[0], torch.Tensor)
            and isinstance(output, torch.Tensor)
            and output.shape == args[0].shape
        ):
            same_shape.append(name)

    for name, module in model.named_modules():
        if name and any(True for _ in module.children()) and any(True for _ in module.parameters()):
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    modules = dict(model.named_modules())
    residual = [n for n in same_shape if calls[n] == 1 and is_residual(modules[n])]
    return [n for n in residual if not any(n.startswith(other + ".") for other in residual)]


# Ops that merge a block's input with what the block computed from it.
_MERGES = {operator.add, operator.iadd, operator.mul, operator.imul, torch.add, torch.mul}
# Modules the input may pass through unchanged on its way to the merge (the shortcut).
_PASS_THROUGH = (nn.Identity, nn.Dropout)


def is_residual(block: nn.Module) -> bool:
    """Whether ``block``'s forward merges its input (through the identity) with a value computed
    from that input: ``x + f(x)``, ``x * gate(x)``. Blocks torch.fx cannot trace do not count."""
    if type(block).forward is nn.Sequential.forward:  # a container of blocks, not a block
        return False
    try:
        graph = torch.fx.symbolic_trace(block).graph
    except Exception:  # noqa: BLE001 - data-dependent control flow etc.: not a plain block
        return False
    inputs = [node for node in graph.nodes if node.op == "placeholder"]
    if len(inputs) != 1:
        return False
    shortcut = {inputs[0]}
    derived = {inputs[0]}  # every node computed from the input
    for node in graph.nodes:
        if node.op == "placeholder":
            continue
        args = [a for a in node.all_input_nodes]
        if not any(a in derived for a in args):
            continue
        derived.add(node)
        if node.op == "call_module" and isinstance(block.get_submodule(str(node.target)), _PASS_THROUGH):
            if args and args[0] in shortcut:
                shortcut.add(node)
            continue
        if node.op == "call_function" and node.target in _MERGES and len(args) == 2:
            a, b = args
            if (a in shortcut and b in derived and b not in shortcut) or (
                b in shortcut and a in derived and a not in shortcut
            ):
                return True
    return False


def remove_blocks(model: nn.Module, blocks: Sequence[str]) -> None:
    """Replace each named block of ``model`` by ``nn.Identity`` (in place).

    An identity hands on the very tensor it gets, so an in-place activation that used to read a
    block's fresh output may now overwrite one that autograd saved (a ReLU after a removed
    squeeze-excitation gate, rewriting the ReLU output before it): every ``inplace`` module of
    the model is made out-of-place. The exported graph is the same."""
    for name in blocks:
        try:
            model.set_submodule(name, nn.Identity(), strict=True)
        except AttributeError:
            raise StageError("depth", f"the model has no block {name!r} to remove.") from None
    for module in model.modules():
        if isinstance(getattr(module, "inplace", None), bool):
            module.inplace = False


@torch.no_grad()
def reads_its_input(model: nn.Module, inputs: torch.Tensor) -> bool:
    """Whether ``model`` (in eval mode) gives different outputs for the different samples of
    ``inputs`` (at least two). A Vision Transformer without encoder layers does not: its class
    token never sees a patch, so it says the same for every image."""
    was_training = model.training
    try:
        out = model.eval()(inputs)
    finally:
        model.train(was_training)
    return not torch.allclose(out[:1].expand_as(out), out)


def probe_inputs(ctx: Context) -> torch.Tensor:
    """Two different inputs to tell a model that reads its input: the first two training
    samples (the first and seeded noise where the split has one)."""
    x = ctx.data.train.x[:2]
    if x.shape[0] < 2:
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(ctx.seed))
        x = torch.cat([x, noise])
    return x.to(ctx.device)


def most_removable(model: nn.Module, ranking: Sequence[str], inputs: torch.Tensor) -> int:
    """How many of ``ranking``'s blocks, least important first, can go together while the model
    still reads its input (``reads_its_input``): all of them when ``model`` itself does not (an
    untrained one, say: nothing to tell). ``model`` is not changed."""
    if not reads_its_input(model, inputs):
        return len(ranking)
    student = copy.deepcopy(model)
    for count, name in enumerate(ranking):
        remove_blocks(student, [name])
        try:
            reads = reads_its_input(student, inputs)
        except Exception:  # noqa: BLE001 - a block the model cannot run without (ranked last)
            return count
        if not reads:
            return count
    return len(ranking)


@torch.no_grad()
def rank_blocks(model: nn.Module, ctx: Context, blocks: Sequence[str] | None = None) -> list[tuple[str, float]]:
    """``(block, loss increase)`` for each removable block of ``model``, least important first:
    the rise of the cross-entropy on a few training batches when that block alone is removed."""
    if blocks is None:
        blocks = find_removable_blocks(model, ctx.data.example_input().to(ctx.device))
    batches = []
    for i, (x, y) in enumerate(ctx.data.train.batches(ctx.batch_size)):
        if i == RANKING_BATCHES:
            break
        batches.append((x.to(ctx.device), y.to(ctx.device)))
    was_training = model.training
    model.eval()

    def loss() -> float:
        total = sum(float(nn.functional.cross_entropy(model(x), y, reduction="sum")) for x, y in batches)
        return total / max(1, sum(len(y) for _, y in batches))

    try:
        base = loss()
        scores = []
        for name in blocks:
            block = model.get_submodule(name)
            model.set_submodule(name, nn.Identity())
            try:
                increase = loss() - base
            except Exception:  # noqa: BLE001 - a block the model cannot run without ranks last
                increase = math.inf
            finally:
                model.set_submodule(name, block)
            scores.append((name, increase if math.isfinite(increase) else math.inf))
    finally:
        model.train(was_training)
    return sorted(scores, key=lambda item: item[1])


def find_cuts(model: nn.Module, example: torch.Tensor, num_classes: int) -> list[tuple[str, ...]]:
    """The trailing stages ``model`` can lose, as cuts: ``cuts[k]`` names the stages that cutting
    ``k + 1`` deep replaces by the identity (the last stage first), each cut checked to run
    with a new classifier sized to what is left.

    Stages are the modules with parameters whose output is an N x C x H x W feature map, among
    the model's children and the children of a top-level ``nn.Sequential`` trunk (torchvision's
    ``layer1.0``..``layer4.1``, MobileNetV2's ``features.N``), in the order the forward runs
    them. A cut ends after a block (a stage with submodules: a single conv or norm layer is no
    place for a head) and removes every stage after it. The classifier must be an ``nn.Linear``
    reading pooled features (global pooling keeps the model valid whatever spatial size is left).
    """
    classifier = find_classifier(model, num_classes, stage="depth")
    if not isinstance(classifier, nn.Linear):
        return []
    candidates: dict[int, str] = {}
    for name, child in model.named_children():
        if type(child).forward is nn.Sequential.forward:
            for sub, grandchild in child.named_children():
                candidates[id(grandchild)] = f"{name}.{sub}"
        elif child is not classifier:
            candidates[id(child)] = name
    order: list[tuple[str, int, bool]] = []  # (stage, channels, is a block) as the forward runs
    modules = {id(m): m for m in model.modules()}

    def hook(module: nn.Module, args: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor) and output.ndim == 4 and any(True for _ in module.parameters()):
            is_block = any(True for _ in module.children())
            order.append((candidates[id(module)], int(output.shape[1]), is_block))

    handles = [modules[i].register_forward_hook(hook) for i in candidates]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for handle in handles:
            handle.remove()
    names = [name for name, _, _ in order]
    if len(set(names)) != len(names):  # a stage run twice: not a plain trunk
        return []
    cuts = []
    # The new head attaches after a block (a single conv or norm layer is no stage to end on);
    # everything with parameters after it goes.
    for end in range(len(order) - 2, -1, -1):
        if not order[end][2]:
            continue
        cut = tuple(reversed(names[end + 1:]))
        trial = copy.deepcopy(model)
        try:
            cut_stages(trial, cut, order[end][1], num_classes)
            check_forward(trial, example, num_classes, "depth")
        except Exception:  # noqa: BLE001 - this depth of cut leaves a model that does not run
            break
        cuts.append(cut)
    return cuts


def cut_stages(model: nn.Module, stages: Sequence[str], channels: int, num_classes: int) -> None:
    """Replace ``stages`` by the identity and the classifier by a new ``nn.Linear`` reading
    ``channels`` features (in place); the new head learns in distillation."""
    remove_blocks(model, stages)
    head = find_classifier(model, num_classes, stage="depth")
    new = nn.Linear(channels, num_classes, bias=head.bias is not None)
    model.set_submodule(module_name(model, head), new.to(head.weight.device))


@dataclasses.dataclass(frozen=True)
class Depth:
    """Cut ``config.cut`` trailing stages (a new classifier reads what is left), then remove
    ``config.fraction`` of the remaining removable blocks (rounded), least important first.

    Uses the cuts and block ranking the study's analysis stored in ``ctx`` or finds them now.
    Returns a model that runs (``StageError`` otherwise) in eval mode.
    """

    config: DepthConfig = dataclasses.field(default_factory=DepthConfig)
    name: ClassVar[str] = "depth"

    def run(self, model: nn.Module, ctx: Context) -> nn.Module:
        if self.config.fraction == 0 and self.config.cut == 0:
            return model
        model.to(ctx.device).eval()
        example = ctx.data.example_input().to(ctx.device)
        if self.config.cut > 0:
            cuts = ctx.cuts if ctx.cuts is not None else find_cuts(model, example, ctx.data.num_classes)
            if cuts:
                cut = cuts[min(self.config.cut, len(cuts)) - 1]
                channels = _channels_before(model, example, cut)
                cut_stages(model, cut, channels, ctx.data.num_classes)
        ranking = ctx.block_ranking
        if ranking is None:
            ranking = tuple(name for name, _ in rank_blocks(model, ctx))
        present = set(dict(model.named_modules()))
        ranking = tuple(name for name in ranking if name in present)
        count = round(self.config.fraction * len(ranking))
        probe = probe_inputs(ctx)
        reads = count > 0 and reads_its_input(model, probe)
        if count:
            remove_blocks(model, ranking[:count])
        check_forward(model, example, ctx.data.num_classes, self.name)
        if reads and not reads_its_input(model, probe):
            raise StageError(
                "depth",
                f"removing {count} of the {len(ranking)} removable blocks leaves a model "
                "whose output does not depend on its input; remove fewer (a lower depth.fraction)."
            )
        return model


def _channels_before(model: nn.Module, example: torch.Tensor, cut: Sequence[str]) -> int:
    """Channels of the feature map entering the first stage of ``cut`` (what the new head reads)."""
    first = model.get_submodule(cut[-1])
    seen: list[int] = []
    handle = first.register_forward_pre_hook(lambda module, args: seen.append(int(args[0].shape[1])))
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        handle.remove()
    return seen[0]
