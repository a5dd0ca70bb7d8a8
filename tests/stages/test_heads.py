"""Whole attention heads removed (``prune.heads``): the rebuilt attention computes what
``nn.MultiheadAttention`` did, the least important heads go first, the model still exports to
ONNX and runs the same in ONNX Runtime, and MACs count the attention products."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from stages import Context, TaskData
from stages._graph import count_params_macs
from stages._transformer import (
    HeadAttention,
    head_importance,
    remove_heads,
    to_head_attention,
)
from stages.config import PruneConfig
from stages.errors import StageError
from stages.export import export_onnx
from stages.measure import OnnxRunner
from stages.prune import Prune
from tests.tiny_models import make_tiny_cnn, make_tiny_vit

torch.set_num_threads(1)


def _vit(seed: int = 0) -> nn.Module:
    """The tests' tiny ViT with a random classifier (torchvision starts it at zero, so no loss
    gradient would reach the heads)."""
    model = make_tiny_vit(seed=seed)
    torch.manual_seed(seed + 1)
    nn.init.normal_(model.heads.head.weight, std=0.5)
    return model


def _ctx(data: TaskData, tmp_path: Path) -> Context:
    return Context(data=data, teacher=nn.Identity(), workdir=tmp_path, batch_size=32)


def test_rebuilt_attention_computes_what_multihead_attention_did(tiny_data: TaskData) -> None:
    model = _vit()
    x = tiny_data.val.x[:16]
    with torch.no_grad():
        before = model(x)
    layers = to_head_attention(model)
    assert len(layers) == 2 and not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    assert all(layer.num_heads == 4 and layer.head_dim == 8 for layer in layers)
    with torch.no_grad():
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)


def test_only_batch_first_self_attention_is_rebuilt() -> None:
    with pytest.raises(StageError, match="batch-first"):
        HeadAttention.from_mha(nn.MultiheadAttention(16, 2, batch_first=False))


def test_the_head_that_contributes_nothing_is_removed_first(tiny_data: TaskData) -> None:
    model = _vit()
    layers = to_head_attention(model)
    with torch.no_grad():  # head 2 of the first layer writes nothing to the residual stream
        layers[0].out_proj.weight[:, 16:24] = 0
    batches = list(tiny_data.train.batches(64))[:2]
    scores = head_importance(model, layers, batches, torch.device("cpu"))
    assert int(scores[0].argmin()) == 2 and float(scores[0][2]) == 0.0
    assert all(float(s.norm()) == pytest.approx(1.0) for s in scores)
    assert not layers[0].head_mask.requires_grad  # the mask is left as it was
    kept_weight = layers[0].q_proj.weight[[*range(0, 16), *range(24, 32)]].detach().clone()
    assert remove_heads(layers, scores, 0.25) == 2  # one head of each layer
    assert [layer.num_heads for layer in layers] == [3, 3]
    torch.testing.assert_close(layers[0].q_proj.weight, kept_weight)
    # Removing the head that contributed nothing leaves the model's outputs as they were.
    with torch.no_grad():
        reference = _vit()
        ref_layers = to_head_attention(reference)
        ref_layers[0].out_proj.weight[:, 16:24] = 0
        remove_heads(ref_layers[1:], scores[1:], 0.25)
        x = tiny_data.val.x[:8]
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)


def test_every_layer_keeps_a_head() -> None:
    layers = to_head_attention(_vit())
    assert remove_heads(layers, [torch.rand(4), torch.rand(4)], 0.95) == 6
    assert [layer.num_heads for layer in layers] == [1, 1]


def test_prune_heads_shrinks_the_model_exports_and_runs_the_same_in_onnx_runtime(
    tiny_data: TaskData, tmp_path: Path
) -> None:
    model = _vit()
    example = tiny_data.example_input(1)
    params_before, macs_before = count_params_macs(model, example)
    Prune(PruneConfig(ratio=0.5, scope="uniform", heads=0.5)).run(model, _ctx(tiny_data, tmp_path))
    heads = [m for m in model.modules() if isinstance(m, HeadAttention)]
    assert [m.num_heads for m in heads] == [2, 2]
    assert all(m.head_dim < 8 for m in heads)  # the width pruning came first, head by head
    params, macs = count_params_macs(model, example)
    assert params < params_before and macs < macs_before
    # MACs include the attention products the counter does not see inside HeadAttention.
    tokens, inner = 17, 2 * heads[0].head_dim
    assert macs >= 2 * tokens * tokens * inner
    path = export_onnx(model, tiny_data.example_input(), tmp_path / "heads.onnx")
    x = tiny_data.val.x[:16]
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(OnnxRunner(path).predict(x.numpy()), expected, rtol=1e-4, atol=1e-4)


def test_heads_on_a_model_without_attention_change_nothing(tiny_data: TaskData, tmp_path: Path) -> None:
    model = make_tiny_cnn()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert Prune(PruneConfig(heads=0.5)).run(model, _ctx(tiny_data, tmp_path)) is model
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
