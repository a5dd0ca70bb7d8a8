"""Depth: remove whole blocks, so the student runs fewer operators, not only thinner ones.

A block is removable when it maps a tensor to a tensor of the same shape (a residual block with an
identity shortcut, a squeeze-excitation gate, a transformer encoder layer): replacing it by the
identity leaves a model that still runs and exports, and distillation from the original teacher
recovers what the block did. Blocks are ranked once per teacher by how much the training loss
rises when each is removed alone; a config removes a fraction of them, least important first.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn

from stages._context import Context
from stages._graph import check_forward
from stages.config import DepthConfig
from stages.errors import StageError

__all__ = ["Depth", "find_removable_blocks", "is_residual", "rank_blocks", "remove_blocks"]

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
    """Replace each named block of ``model`` by ``nn.Identity`` (in place)."""
    for name in blocks:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if child not in parent._modules:
            raise StageError(f"depth: the model has no block {name!r} to remove.")
        parent._modules[child] = nn.Identity()


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
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            block = parent._modules[child]
            parent._modules[child] = nn.Identity()
            try:
                increase = loss() - base
            except Exception:  # noqa: BLE001 - a block the model cannot run without ranks last
                increase = math.inf
            finally:
                parent._modules[child] = block
            scores.append((name, increase if math.isfinite(increase) else math.inf))
    finally:
        model.train(was_training)
    return sorted(scores, key=lambda item: item[1])


@dataclasses.dataclass(frozen=True)
class Depth:
    """Remove ``config.fraction`` of the removable blocks (rounded), least important first.

    Uses the ranking in ``ctx.block_ranking`` (made once per study) or ranks the blocks now.
    Returns a model that runs (``StageError`` otherwise) in eval mode.
    """

    config: DepthConfig = dataclasses.field(default_factory=DepthConfig)
    name: ClassVar[str] = "depth"

    def run(self, model: nn.Module, ctx: Context) -> nn.Module:
        if self.config.fraction == 0:
            return model
        model.to(ctx.device).eval()
        ranking = ctx.block_ranking
        if ranking is None:
            ranking = tuple(name for name, _ in rank_blocks(model, ctx))
        count = round(self.config.fraction * len(ranking))
        if count == 0:
            return model
        remove_blocks(model, ranking[:count])
        check_forward(model, ctx.data.example_input().to(ctx.device), ctx.data.num_classes, self.name)
        return model
