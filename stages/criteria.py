"""Pruning criteria: how structured pruning ranks channels, one entry per ``prune.criterion``.

``PruneConfig`` accepts exactly the names of ``CRITERIA`` and the default search space offers
them all, so a new criterion is one entry here plus its tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch_pruning as tp

__all__ = ["CRITERIA", "Criterion"]


@dataclasses.dataclass(frozen=True)
class Criterion:
    """A channel-ranking rule: ``importance()`` builds a fresh scorer per run (some keep
    state); ``needs_gradients`` asks for loss gradients of a few batches before each step."""

    importance: Callable[[], tp.importance.Importance]
    description: str
    needs_gradients: bool = False


CRITERIA: dict[str, Criterion] = {
    "l1": Criterion(lambda: tp.importance.GroupMagnitudeImportance(p=1), "L1 norm of the weights"),
    "l2": Criterion(lambda: tp.importance.GroupMagnitudeImportance(p=2), "L2 norm of the weights"),
    "random": Criterion(lambda: tp.importance.RandomImportance(), "random (a baseline)"),
    "bn-scale": Criterion(lambda: tp.importance.BNScaleImportance(), "batch-norm scale"),
    "lamp": Criterion(lambda: tp.importance.LAMPImportance(p=2), "layer-adaptive magnitude"),
    "taylor": Criterion(
        lambda: tp.importance.GroupTaylorImportance(),
        "first-order Taylor estimate of the loss change",
        needs_gradients=True,
    ),
    "fpgm": Criterion(lambda: tp.importance.FPGMImportance(), "distance to the geometric median"),
}

