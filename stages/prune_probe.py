"""The probe of structural pruning that the pre-flight analysis runs once per study: whether it
applies to a model at all, and which layers it must leave whole (found by pruning copies)."""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from stages._context import Context
from stages._graph import head_layers, out_width, weight_layers
from stages.config import PruneConfig
from stages.errors import StageError
from stages.prune import Prune
from stages.prune_failures import PruneFailure

__all__ = ["PROBE_RATIO", "PROBE_ROUNDS", "StructuralProbe", "probe_structured"]

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

