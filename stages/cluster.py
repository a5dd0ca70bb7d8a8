"""Weight sharing: every Conv/Linear weight is replaced by the nearest of ``k`` per-layer
k-means centroids. The model keeps its shape and dtype; what shrinks is the entropy of its
weights, hence its compressed (gzip) bytes, and int8 quantization then loses less."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch
from torch import nn

from stages._context import Context
from stages._graph import check_forward, device_of, weight_layers
from stages.config import ClusterConfig

__all__ = ["Cluster", "cluster_tensor", "kmeans_1d"]

# Lloyd iterations stop earlier once the assignment no longer changes.
MAX_ITERATIONS = 30


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Share ``config.k`` values per Conv/Linear weight (k = 0 leaves the model untouched).

    Exact zeros (from unstructured pruning) stay exact zeros: they keep a centroid of their own.
    """

    config: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)
    name: ClassVar[str] = "cluster"

    def run(self, model: nn.Module, ctx: Context) -> nn.Module:
        if self.config.k == 0:
            return model
        with torch.no_grad():
            for _, layer in weight_layers(model):
                layer.weight.copy_(cluster_tensor(layer.weight, self.config.k))
        model.eval()
        example = ctx.data.example_input().to(device_of(model))
        check_forward(model, example, ctx.data.num_classes, self.name)
        return model


@torch.no_grad()
def cluster_tensor(weight: torch.Tensor, k: int) -> torch.Tensor:
    """``weight`` with every value replaced by its nearest of at most ``k`` centroids (same
    shape, dtype and device). Exact zeros stay zero and use up one of the ``k`` values."""
    values = weight.detach().flatten().double()
    nonzero = values != 0
    has_zeros = not bool(nonzero.all())
    budget = k - 1 if has_zeros else k
    targets = values[nonzero] if has_zeros else values
    if targets.numel() == 0 or budget < 1:
        return torch.zeros_like(weight)
    centroids = kmeans_1d(targets, budget)
    clustered = centroids[_assign(values, centroids)]
    if has_zeros:
        clustered = torch.where(nonzero, clustered, torch.zeros_like(clustered))
    return clustered.to(weight.dtype).view_as(weight)


def kmeans_1d(values: torch.Tensor, k: int, iterations: int = MAX_ITERATIONS) -> torch.Tensor:
    """At most ``k`` sorted centroids minimising the squared distance of 1-D ``values``.

    Initialised at the quantiles, then Lloyd iterations. In 1-D, clusters are runs of the sorted
    values split at the centroid midpoints, so one sort plus a prefix sum makes each iteration
    a ``searchsorted`` of k midpoints: O(n log n) once, then O(k log n) per iteration.
    """
    ordered = torch.sort(values.flatten().double()).values
    n = ordered.numel()
    distinct = torch.unique_consecutive(ordered)
    if distinct.numel() <= k:
        return distinct
    prefix = torch.cat([ordered.new_zeros(1), torch.cumsum(ordered, 0)])
    positions = ((torch.arange(k, dtype=torch.float64, device=ordered.device) + 0.5) * n / k).long()
    centroids = torch.unique_consecutive(ordered[positions.clamp_(max=n - 1)])
    bounds = None
    for _ in range(iterations):
        midpoints = (centroids[1:] + centroids[:-1]) / 2
        # Cluster i holds the sorted values in (midpoint[i-1], midpoint[i]], as bucketize does.
        new_bounds = torch.searchsorted(ordered, midpoints, right=True)
        if bounds is not None and torch.equal(new_bounds, bounds):
            break
        bounds = new_bounds
        edges = torch.cat([bounds.new_zeros(1), bounds, bounds.new_full((1,), n)])
        counts = edges[1:] - edges[:-1]
        sums = prefix[edges[1:]] - prefix[edges[:-1]]
        # An emptied cluster keeps its centroid; later midpoints may hand it values again.
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
    return torch.unique_consecutive(centroids)


def _assign(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centroid for every value (``centroids`` sorted)."""
    midpoints = (centroids[1:] + centroids[:-1]) / 2
    return torch.bucketize(values, midpoints)
