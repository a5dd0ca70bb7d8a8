"""Unstructured pruning: magnitude sparsity. The smallest weights become zeros and every shape
stays, so only compressed bytes shrink; it applies where structured pruning cannot."""

from __future__ import annotations

import torch
from torch import nn

from stages._graph import head_layers, weight_layers

__all__ = ["prune_unstructured"]


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

