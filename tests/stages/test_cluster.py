"""Cluster stage: per-layer k-means weight sharing leaves at most k values per layer, keeps the
model working and close to the original, keeps pruned zeros, and is fast."""

from __future__ import annotations

import gzip
import io
import time
from pathlib import Path

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch import nn

from stages._context import Context
from stages._graph import weight_layers
from stages.cluster import Cluster, cluster_tensor, kmeans_1d
from stages.config import ClusterConfig, PruneConfig
from stages.prune import Prune
from tests.tiny_models import (
    TINY_MODELS,
    make_tiny_cnn,
    make_tiny_resnet,
    tiny_task_data,
)

torch.set_num_threads(1)

DATA = tiny_task_data()


def _cluster(model: nn.Module, tmp_path: Path, k: int) -> nn.Module:
    ctx = Context(data=DATA, teacher=model, workdir=tmp_path)
    return Cluster(ClusterConfig(k=k)).run(model, ctx)


def _gzip_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(gzip.compress(buffer.getvalue()))


def test_k_zero_returns_the_model_untouched(tmp_path: Path) -> None:
    model = make_tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert _cluster(model, tmp_path, 0) is model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("factory", TINY_MODELS.values(), ids=TINY_MODELS.keys())
@pytest.mark.parametrize("k", [2, 16])
def test_every_layer_has_at_most_k_values_and_the_model_runs(
    tmp_path: Path, factory, k: int
) -> None:
    model = factory()
    shapes = {name: v.shape for name, v in model.state_dict().items()}
    assert _cluster(model, tmp_path, k) is model
    for name, layer in weight_layers(model):
        assert layer.weight.unique().numel() <= k, name
        assert layer.weight.dtype == torch.float32
    assert {name: v.shape for name, v in model.state_dict().items()} == shapes
    assert not model.training
    with torch.no_grad():
        logits = model(DATA.val.x)
    assert logits.shape == (len(DATA.val), 10)
    assert torch.isfinite(logits).all()


def test_k_256_stays_close_to_the_original(tmp_path: Path) -> None:
    model = make_tiny_resnet()
    with torch.no_grad():
        before = model(DATA.val.x)
    _cluster(model, tmp_path, 256)
    with torch.no_grad():
        after = model(DATA.val.x)
    assert (after - before).abs().max() < 0.02 * before.abs().max()
    assert (after.argmax(1) == before.argmax(1)).float().mean() > 0.95


def test_fewer_centroids_mean_larger_error(tmp_path: Path) -> None:
    errors = []
    for k in (4, 16, 64):
        model = make_tiny_cnn()
        original = model.features[3][0].weight.detach().clone()
        _cluster(model, tmp_path, k)
        errors.append(float((model.features[3][0].weight.detach() - original).pow(2).mean()))
    assert errors[0] > errors[1] > errors[2] > 0


def test_gzip_bytes_shrink(tmp_path: Path) -> None:
    model = make_tiny_resnet()
    before = _gzip_bytes(model)
    _cluster(model, tmp_path, 16)
    assert _gzip_bytes(model) < 0.8 * before


def test_pruned_zeros_stay_exact_zeros(tmp_path: Path) -> None:
    model = make_tiny_cnn()
    ctx = Context(data=DATA, teacher=model, workdir=tmp_path)
    Prune(PruneConfig(ratio=0.6, method="unstructured")).run(model, ctx)
    zeros = {name: layer.weight == 0 for name, layer in weight_layers(model)}
    _cluster(model, tmp_path, 8)
    for name, layer in weight_layers(model):
        assert torch.equal(layer.weight == 0, zeros[name]), name
        assert layer.weight.unique().numel() <= 8


def test_clustering_a_million_weights_is_fast() -> None:
    weight = torch.randn(1000, 1000)
    start = time.perf_counter()
    clustered = cluster_tensor(weight, 256)
    assert time.perf_counter() - start < 1.0
    assert clustered.unique().numel() == 256
    assert float((clustered - weight).pow(2).mean()) < 1e-3


def test_kmeans_1d_finds_the_optimal_two_levels_of_a_gaussian() -> None:
    values = torch.randn(200_000, generator=torch.Generator().manual_seed(0))
    centroids = kmeans_1d(values, 2)
    # Lloyd-Max quantizer of N(0, 1) with two levels: +-sqrt(2/pi).
    assert centroids.tolist() == pytest.approx([-0.798, 0.798], abs=0.01)


def test_kmeans_1d_returns_the_values_when_there_are_few() -> None:
    assert kmeans_1d(torch.tensor([3.0, 1.0, 1.0, 2.0]), 8).tolist() == [1.0, 2.0, 3.0]


def test_half_precision_weights_keep_their_dtype() -> None:
    weight = torch.randn(64, 32).half()
    clustered = cluster_tensor(weight, 4)
    assert clustered.dtype == torch.float16
    assert clustered.unique().numel() <= 4


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.floats(-100, 100, allow_nan=False, allow_subnormal=False, width=32) | st.just(0.0), min_size=1, max_size=200
    ),
    k=st.integers(2, 20),
)
# One value left for the non-zeros, and their mean is exactly 0: they share the zero (found by CI).
@example(values=[0.0, 1.0, -1.0], k=2)
def test_every_weight_maps_to_its_nearest_shared_value(values: list[float], k: int) -> None:
    weight = torch.tensor(values, dtype=torch.float32)
    clustered = cluster_tensor(weight, k)
    shared = clustered.unique()
    assert shared.numel() <= k
    assert torch.all(clustered[weight == 0] == 0)  # exact zeros stay zero
    nonzero = weight != 0
    if nonzero.any():
        # The non-zeros' own centroids; 0 among them only where their cluster's mean is 0.
        options = clustered[nonzero].unique()
        distance = (weight[nonzero, None] - options[None, :]).abs()
        chosen = (weight[nonzero] - clustered[nonzero]).abs()
        assert torch.all(chosen <= distance.min(1).values + 1e-4 * (1 + weight[nonzero].abs()))
