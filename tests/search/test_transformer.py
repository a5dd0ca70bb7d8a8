"""Transformers through the same pipeline: ``vit_tiny`` sized to the dataset, attention width
pruned head by head (heads stay whole and aligned), and a torchvision Vision Transformer from a
user model file through ``try`` and a short study end to end."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from search.errors import UserError
from search.study import StudyInfo, open_storage, trial_record
from search.workloads import build_model, check_fits
from search.workloads.vit import patch_size_for
from stages import Context, TaskData
from stages.config import PruneConfig
from stages.prune import Prune
from tests.support import RunCli
from tests.tiny_models import make_tiny_vit

# A user model file: the tests' tiny ViT (digits 8 x 8, patch 2, 2 layers, width 32, 4 heads).
VIT_FILE = """
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer


def build(in_channels, num_classes):
    model = VisionTransformer(image_size=8, patch_size=2, num_layers=2, num_heads=4,
                              hidden_dim=32, mlp_dim=64, num_classes=num_classes)
    model.conv_proj = nn.Conv2d(in_channels, 32, kernel_size=2, stride=2)
    return model
"""

# Small budgets, and the quantization modes that meet a transformer's MatMuls and LayerNorms.
VIT_SPACE = """
"distill.epochs" = 2
"quantize.mode" = ["fp16", "int8-dynamic", "int8-static"]
drop = ["cluster.k", "prune.steps"]
profile_epochs = 2
"""


def test_vit_tiny_is_sized_to_the_images_channels_and_classes() -> None:
    assert patch_size_for(28) == 4 and patch_size_for(8) == 2 and patch_size_for(32) == 8
    for size, channels, classes in ((8, 1, 10), (28, 1, 10), (32, 3, 7)):
        model = build_model("vit_tiny", in_channels=channels, num_classes=classes, image_size=size)
        check_fits(model, torch.zeros(1, channels, size, size), classes, model_name="vit_tiny",
                   dataset="test")
        assert model.patch_size == patch_size_for(size)
        assert model.conv_proj.in_channels == channels
    with pytest.raises(UserError, match="square images"):
        build_model("vit_tiny", in_channels=1, num_classes=10, image_size=None)


@pytest.mark.parametrize("scope", ["global", "uniform"])
def test_attention_width_is_pruned_by_the_same_positions_in_every_head(
    tmp_path: Path, tiny_data: TaskData, scope: str
) -> None:
    model = make_tiny_vit()
    before = model.encoder.pos_embedding.detach().clone()[0, 0]  # distinct random values
    Prune(PruneConfig(ratio=0.5, scope=scope)).run(
        model, Context(data=tiny_data, teacher=nn.Identity(), workdir=tmp_path, batch_size=32)
    )
    width = model.conv_proj.out_channels
    assert width < 32 and model.hidden_dim == width  # the reshape in forward follows the width
    after = model.encoder.pos_embedding[0, 0].detach()
    kept = [int((before == v).nonzero()) for v in after]  # the embedding positions kept
    per_head = [{k % 8 for k in kept if k // 8 == head} for head in range(4)]
    assert all(p == per_head[0] and p for p in per_head)  # each head kept the same positions
    for block in model.encoder.layers:
        attention = block.self_attention
        assert attention.num_heads == 4 and attention.embed_dim == width
        assert attention.head_dim * 4 == width
        assert block.mlp[0].out_features < 64  # the MLP hidden width is pruned too
    with torch.no_grad():
        assert model(tiny_data.val.x[:2]).shape == (2, 10)


@pytest.fixture(scope="module")
def vit_folder(tmp_path_factory: pytest.TempPathFactory, digits_data: TaskData) -> Path:
    """A folder holding the user ViT file and its weights, trained briefly on digits."""
    folder = tmp_path_factory.mktemp("vit")
    (folder / "vit.py").write_text(VIT_FILE)
    model = make_tiny_vit().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(0, len(digits_data.train), (64,), generator=generator)
        x, y = digits_data.train.x[idx], digits_data.train.y[idx]
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.save(model.state_dict(), folder / "vit.pt")
    return folder


@pytest.mark.slow
def test_try_compresses_a_vision_transformer_end_to_end(
    vit_folder: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(vit_folder)
    code, out, err = run_cli([
        "try", "--model", "vit.py:build", "--weights", "vit.pt", "--dataset", "digits",
        "--set", "prune.ratio=0.3", "--set", "quantize.mode=int8-dynamic",
        "--set", "distill.epochs=2", "--threads", "1", "--json",
    ])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["config"]["prune.ratio"] == 0.3
    metrics, teacher = summary["metrics"], summary["teacher"]
    assert metrics["params"] < teacher["params"] and metrics["macs"] < teacher["macs"]
    assert metrics["bytes"] < teacher["bytes"] / 2  # int8 and a narrower model
    assert metrics["val_acc"] > 30  # measured in ONNX Runtime; 10 classes, chance is 10 %
    assert [s["stage"] for s in summary["stages"]][-3:] == ["export", "quantize", "measure"]
    assert (vit_folder / summary["artifact"]).is_file()


@pytest.mark.slow
def test_a_study_searches_a_vision_transformer(
    vit_folder: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(vit_folder)
    (vit_folder / "tiny.toml").write_text(VIT_SPACE)
    code, out, err = run_cli([
        "--model", "vit.py:build", "--weights", "vit.pt", "--dataset", "digits",
        "--space", "tiny.toml", "--study", "vit", "--trials", "3", "--threads", "1",
    ])
    assert code == 0, err
    study = optuna.load_study(study_name="vit", storage=open_storage(None, create=False))
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    # Three trials run (the profiles; the quantization-only configs wait for a later run).
    ran = [t for t in study.trials if t.state != TrialState.WAITING]
    assert len(ran) == 3
    assert len(complete) == 3, [(t.state, trial_record(t).reason) for t in ran]
    for t in complete:
        assert Path(trial_record(t).artifact).is_file()
        assert trial_record(t).metrics["bytes"] > 0
    assert "report:" in out
    # The analysis found the attention layers, so the fitted space searches whole heads.
    info = StudyInfo.load(study)
    assert info.analysis["attention_heads"] == [4, 4]
    assert any(row[0] == "prune.heads" for row in info.space)
    # Removing both encoder layers would leave one answer for every image: depth keeps one.
    assert info.analysis["removable_at_once"] == 1
    assert ("depth.fraction", "0.0 .. 0.74") in [tuple(row[:2]) for row in info.space]


@pytest.mark.slow
def test_try_removes_whole_heads_of_a_vision_transformer(
    vit_folder: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(vit_folder)
    code, out, err = run_cli([
        "try", "--model", "vit.py:build", "--weights", "vit.pt", "--dataset", "digits",
        "--set", "prune.heads=0.5", "--set", "quantize.mode=none", "--set", "distill.epochs=2",
        "--threads", "1", "--json", "--workdir", "heads",
    ])
    assert code == 0, err
    summary = json.loads(out)
    metrics, teacher = summary["metrics"], summary["teacher"]
    # Half the heads of both layers: a quarter of each layer's weights (q, k, v, out) go.
    assert metrics["params"] < teacher["params"] and metrics["macs"] < teacher["macs"]
    assert metrics["val_acc"] > 30


def _tiny_swin() -> nn.Module:
    """torchvision's Swin Transformer for 1 x 8 x 8 inputs: patch 2, two stages, window 2."""
    from torchvision.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    model = SwinTransformer(patch_size=[2, 2], embed_dim=32, depths=[2, 2], num_heads=[2, 4],
                            window_size=[2, 2], num_classes=10)
    model.features[0][0] = nn.Conv2d(1, 32, kernel_size=2, stride=2)
    return model.eval()


@pytest.mark.slow
def test_a_swin_transformer_takes_the_path_torch_pruning_allows(tiny_data: TaskData, tmp_path: Path) -> None:
    from stages.depth import find_removable_blocks
    from stages.export import export_onnx
    from stages.measure import OnnxRunner
    from stages.prune_probe import probe_structured

    model = _tiny_swin()
    ctx = Context(data=tiny_data, teacher=model, workdir=tmp_path, batch_size=32)
    # torch-pruning's grouping never finishes on shifted windows: refused at once, with the reason,
    # so a study searches unstructured sparsity, depth and quantization instead.
    probe = probe_structured(model, ctx)
    assert not probe.possible and "shifted-window attention" in (probe.reason or "")
    # Its blocks are residual and keep their shape: depth can remove them.
    assert find_removable_blocks(model, tiny_data.example_input()) == [
        "features.1.0", "features.1.1", "features.3.0", "features.3.1"]
    Prune(PruneConfig(ratio=0.5, method="unstructured")).run(model, ctx)
    path = export_onnx(model, tiny_data.example_input(), tmp_path / "swin.onnx")
    x = tiny_data.val.x[:8]
    with torch.no_grad():
        expected = model(x).numpy()
    assert abs(OnnxRunner(path).predict(x.numpy()) - expected).max() < 1e-4
