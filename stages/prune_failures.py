"""Why torch-pruning failed on a model, and where. Its errors do not say; the innermost frames of
their tracebacks hold the layer or graph node it was working on. ``PruneFailure`` names that
layer and the layers coupled to it, so the probe can leave them whole and prune the rest."""

from __future__ import annotations

import traceback

import torch_pruning as tp
from torch import nn
from torch_pruning.dependency.node import Node

from stages._graph import module_name
from stages.errors import StageError

__all__ = ["PRUNER_FAILURES", "PruneFailure", "step_failure", "trace_failure"]

# What torch-pruning raises on graphs it cannot handle (it has no error type of its own):
# index mapping failures, shape mismatches, asserts, divisions by zero in reshape tracking.
PRUNER_FAILURES = (
    ArithmeticError,
    AssertionError,
    AttributeError,
    LookupError,
    RuntimeError,
    TypeError,
    ValueError,
)


class PruneFailure(StageError):
    """torch-pruning failed on this model's graph; ``layer`` is the layer it failed on, when
    known (leaving that layer whole, via ``Context.frozen_layers``, may let the rest prune)."""

    def __init__(self, message: str, layer: str | None = None, group: tuple[str, ...] = ()) -> None:
        super().__init__("prune", message)
        self.layer = layer
        self.group = group  # the layers coupled to the failing one (their channels go together)


def trace_failure(exc: BaseException, model: nn.Module) -> PruneFailure:
    """The failure ``exc`` of tracing ``model``'s dependency graph, named by where it happened."""
    site, layer = _failure_site(exc, model)
    where = "" if site is None else f" at {site}"
    return PruneFailure(
        f"torch-pruning cannot trace this model's dependency graph{where} "
        f"({type(exc).__name__}: {exc}); prune.method=unstructured still applies.",
        layer,
    )


def step_failure(
    exc: BaseException, pruner: tp.pruner.MetaPruner, model: nn.Module, group: tp.Group | None
) -> PruneFailure:
    """The failure ``exc`` of a pruning step (``group``: the group it was pruning, if any),
    naming the layer torch-pruning was working on and the layers coupled to it."""
    site, layer = _failure_site(exc, model)
    if site is None and group is not None:
        layer = module_name(model, group[0].dep.target.module)
        site = f"layer {layer!r}"
    where = site or "a layer"
    return PruneFailure(
        f"torch-pruning cannot prune {where} in this graph "
        f"({type(exc).__name__}: {exc}); prune.method=unstructured still applies.",
        layer,
        _coupled_layers(pruner, model, group, layer),
    )


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
    except PRUNER_FAILURES:  # the graph cannot even list its groups: nothing more to learn
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

