"""Depth: residual blocks are found by what their forward does, ranked by the loss their removal
costs, removed least important first; the result runs and exports. And the structural-pruning
probe freezes the layers torch-pruning breaks on, so the rest still prunes."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from stages import Context, Export, ExportConfig, PipelineConfig, run_pipeline
from stages._graph import count_params_macs
from stages.config import DepthConfig
from stages.depth import (
    Depth,
    find_cuts,
    find_removable_blocks,
    is_residual,
    most_removable,
    rank_blocks,
    reads_its_input,
    remove_blocks,
)
from stages.errors import ConfigError, StageError
from stages.prune_probe import probe_structured
from tests.tiny_models import (
    _BasicBlock,
    _SqueezeExcite,
    make_concat_depthwise_se,
    make_tiny_vit,
    tiny_task_data,
    train_briefly,
)

DATA = tiny_task_data()


class _Stacked(nn.Module):
    """A stem, three identity-shortcut blocks, a downsampling block and a plain conv that keeps
    its input's shape (not residual: removing it is not block removal)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.blocks = nn.Sequential(_BasicBlock(8, 8), _BasicBlock(8, 8), _BasicBlock(8, 8))
        self.down = _BasicBlock(8, 16, stride=2)
        self.plain = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.plain(self.down(self.blocks(self.stem(x))))
        return self.fc(x.mean((2, 3)))


def _ctx(tmp_path: Path, model: nn.Module, data=DATA) -> Context:
    return Context(data=data, teacher=model, workdir=tmp_path, batch_size=32)


def test_residual_blocks_are_found_and_containers_and_plain_layers_are_not() -> None:
    model = _Stacked().eval()
    # The Sequential holding the blocks keeps its shape too, but it is a container, not a block;
    # the downsampling block changes the shape; the plain conv has no shortcut.
    assert find_removable_blocks(model, DATA.example_input()) == ["blocks.0", "blocks.1", "blocks.2"]
    assert is_residual(_SqueezeExcite(8, 2))  # x * gate(x) counts
    assert not is_residual(nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU()))


def test_torchvision_blocks_are_the_identity_shaped_ones() -> None:
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    assert find_removable_blocks(resnet, x) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    mobilenet = torchvision.models.mobilenet_v2(num_classes=10).eval()
    found = find_removable_blocks(mobilenet, x)
    # Exactly the inverted residuals that use their shortcut.
    assert found == [f"features.{i}" for i, m in enumerate(mobilenet.features) if getattr(m, "use_res_connect", False)]


def test_blocks_rank_by_the_loss_their_removal_costs(tmp_path: Path) -> None:
    model = train_briefly(_Stacked(), DATA, steps=60)
    # Make blocks.1 do nothing: its residual branch is zeroed, so removing it costs nothing.
    with torch.no_grad():
        model.blocks[1].bn2.weight.zero_()
        model.blocks[1].bn2.bias.zero_()
    ranking = rank_blocks(model, _ctx(tmp_path, model))
    scores = dict(ranking)
    assert set(scores) == {"blocks.0", "blocks.1", "blocks.2"}
    # Its input is already non-negative (after a ReLU): without its branch the block is exactly
    # the identity, so removing it changes nothing.
    assert scores["blocks.1"] == pytest.approx(0.0, abs=1e-6)
    assert [score for _, score in ranking] == sorted(scores.values())
    # Ranking leaves the model as it was: every block back in place, same outputs.
    assert all(isinstance(block, _BasicBlock) for block in model.blocks)
    with torch.no_grad():
        before = model(DATA.val.x)
        rank_blocks(model, _ctx(tmp_path, model))
        assert torch.equal(model(DATA.val.x), before)


def test_depth_removes_the_fraction_least_important_first_and_the_model_exports(tmp_path: Path) -> None:
    model = _Stacked().eval()
    ctx = _ctx(tmp_path, model)
    ctx = Context(**{**ctx.__dict__, "block_ranking": ("blocks.2", "blocks.0", "blocks.1")})
    before = count_params_macs(model, DATA.example_input())
    out = Depth(DepthConfig(fraction=0.67)).run(model, ctx)  # round(0.67 * 3) = 2 blocks
    assert isinstance(out.blocks[2], nn.Identity) and isinstance(out.blocks[0], nn.Identity)
    assert isinstance(out.blocks[1], _BasicBlock)
    after = count_params_macs(out, DATA.example_input())
    assert after[0] < before[0] and after[1] < before[1]
    exported = Export(ExportConfig()).run(out, ctx)
    assert exported.path.stat().st_size > 0


def test_a_pipeline_with_depth_records_the_stage_and_measures_the_artifact(tmp_path: Path) -> None:
    model = train_briefly(_Stacked(), DATA, steps=30)
    config = PipelineConfig.from_flat({"depth.fraction": 1.0, "distill.epochs": 0.5})
    result = run_pipeline(config, _ctx(tmp_path, model), torch_artifact=False)
    assert [r.stage for r in result.stages][:2] == ["depth", "distill"]
    depth = result.stages[0].metrics
    assert depth["params"] < count_params_macs(model, DATA.example_input())[0]
    assert result.metrics["val_acc"] >= 0 and result.artifact.is_file()


def _answering(vit: nn.Module) -> nn.Module:
    """``vit`` with a random head instead of torchvision's zeros, so its answer depends on the image."""
    torch.manual_seed(0)
    nn.init.normal_(vit.heads.head.weight)
    return vit


def test_a_vision_transformer_keeps_an_encoder_layer_a_cnn_can_lose_every_removable_block(
    tmp_path: Path,
) -> None:
    data = tiny_task_data(size=8)
    vit = _answering(make_tiny_vit(size=8))  # 2 encoder layers, both removable
    ranking = [name for name, _ in rank_blocks(vit, _ctx(tmp_path, vit, data))]
    assert len(ranking) == 2 and reads_its_input(vit, data.train.x[:2])
    # Without encoder layers the class token never sees a patch: one answer for every image.
    assert most_removable(vit, ranking, data.train.x[:2]) == 1
    with pytest.raises(StageError, match="removing 2 of the 2 removable blocks leaves a model whose output does not depend on its input"):
        Depth(DepthConfig(fraction=1.0)).run(copy.deepcopy(vit), _ctx(tmp_path, vit, data))
    assert reads_its_input(Depth(DepthConfig(fraction=0.5)).run(vit, _ctx(tmp_path, vit, data)), data.train.x[:2])
    # torchvision starts a ViT's head at zero: one answer for every image before training, so
    # there is nothing to tell and nothing is refused.
    untrained = make_tiny_vit(size=8)
    assert not reads_its_input(untrained, data.train.x[:2])
    assert most_removable(untrained, ranking, data.train.x[:2]) == 2
    Depth(DepthConfig(fraction=1.0)).run(untrained, _ctx(tmp_path, untrained, data))

    cnn = _Stacked().eval()
    blocks = find_removable_blocks(cnn, DATA.example_input())
    assert most_removable(cnn, blocks, DATA.train.x[:2]) == len(blocks) == 3
    # A block the model cannot run without (the analysis ranks it last) ends the count there.
    assert most_removable(cnn, [*blocks[:2], "down"], DATA.train.x[:2]) == 2
    assert reads_its_input(Depth(DepthConfig(fraction=1.0)).run(cnn, _ctx(tmp_path, cnn)), DATA.train.x[:2])


def test_depth_fraction_is_validated_and_unknown_blocks_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"depth.fraction must lie in \[0.0, 1.0\]"):
        DepthConfig(fraction=1.5)
    with pytest.raises(Exception, match="no block 'blocks.9'"):
        remove_blocks(_Stacked(), ["blocks.9"])


class _GroupedMerge(nn.Module):
    """Two branches concatenated, merged by a grouped 1x1 conv (torch-pruning's index mapping
    breaks on it), then a plain conv torch-pruning handles."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(1, 8, 3, padding=1)
        self.merge = nn.Conv2d(16, 16, 1, groups=2)
        self.tail = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.tail(torch.relu(self.merge(torch.cat([self.a(x), self.b(x)], 1))))
        return self.fc(x.mean((2, 3)))


def test_probe_freezes_what_breaks_and_the_rest_prunes_in_every_trial(tmp_path: Path) -> None:
    model = _GroupedMerge().eval()
    probe = probe_structured(model, _ctx(tmp_path, model))
    assert probe.possible and "merge" in probe.frozen
    assert "INDICES element is out of DATA bounds" in probe.frozen["merge"]
    assert "tail" in probe.pruned_layers
    # With the frozen layers in the context, pruning at other settings works too.
    for scope in ("global", "uniform"):
        pruned = _GroupedMerge().eval()
        ctx = Context(**{**_ctx(tmp_path, pruned).__dict__, "frozen_layers": tuple(probe.frozen)})
        config = PipelineConfig.from_flat({"prune.ratio": 0.5, "prune.scope": scope, "distill.epochs": 0})
        result = run_pipeline(config, ctx, torch_artifact=False)
        assert result.stages[0].metrics["params"] < count_params_macs(model, DATA.example_input())[0]


def test_probe_says_why_when_nothing_can_be_pruned_structurally(tmp_path: Path) -> None:
    data = tiny_task_data(n_train=8, n_val=8, n_test=8, channels=3, size=32)
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    probe = probe_structured(model, _ctx(tmp_path, model, data))
    assert not probe.possible and "ReshapeOp" in (probe.reason or "")
    ok = probe_structured(make_concat_depthwise_se(), _ctx(tmp_path, make_concat_depthwise_se()))
    assert ok.possible and not ok.frozen


def test_trailing_stages_are_cut_with_a_new_head_and_the_model_exports(tmp_path: Path) -> None:
    model = _Stacked().eval()
    cuts = find_cuts(model, DATA.example_input(), 10)
    # Stages: stem.0, blocks.0..2, down, plain.0; a head attaches after a block (blocks.N, down),
    # never after the single conv of the stem.
    assert cuts == [
        ("plain.0",), ("plain.0", "down"), ("plain.0", "down", "blocks.2"), ("plain.0", "down", "blocks.2", "blocks.1"),
    ]
    ctx = Context(**{**_ctx(tmp_path, model).__dict__, "cuts": tuple(cuts), "block_ranking": ("blocks.2", "blocks.0")})
    out = Depth(DepthConfig(cut=2, fraction=0.5)).run(model, ctx)
    assert isinstance(out.plain[0], nn.Identity) and isinstance(out.down, nn.Identity)
    assert out.fc.in_features == 8  # the new head reads the blocks' 8 channels
    # Blocks are then removed among those left: round(0.5 * 2) = 1, the least important.
    assert isinstance(out.blocks[2], nn.Identity) and isinstance(out.blocks[0], _BasicBlock)
    assert Export(ExportConfig()).run(out, ctx).path.stat().st_size > 0


def test_a_pipeline_that_cuts_stages_distils_the_new_head(tmp_path: Path) -> None:
    model = train_briefly(_Stacked(), DATA, steps=40)
    config = PipelineConfig.from_flat({"depth.cut": 2, "distill.epochs": 10, "distill.lr": 0.05})
    result = run_pipeline(config, _ctx(tmp_path, model), torch_artifact=False)
    depth, distill = result.stages[0].metrics, result.stages[1].metrics
    assert depth["macs"] < count_params_macs(model, DATA.example_input())[1]
    assert distill["val_acc"] > 30.0  # the new head learned (chance is 10 %)


def test_torchvision_cuts_end_at_whole_stages() -> None:
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    cuts = find_cuts(resnet, torch.randn(1, 3, 32, 32), 10)
    assert cuts[1] == ("layer4.1", "layer4.0")  # "truncate after layer3"
    assert cuts[-1][-1] == "layer1.1" and len(cuts) == 7  # the head needs a block before it
    from search.workloads import DemoCNN

    assert find_cuts(DemoCNN().eval(), torch.randn(1, 1, 8, 8), 10) == []  # a chain of layers, no blocks
    vit = torchvision.models.VisionTransformer(32, 8, 2, 2, 32, 64, num_classes=10).eval()
    assert find_cuts(vit, torch.randn(1, 3, 32, 32), 10) == []  # its depth is its encoder layers


def test_a_removed_block_leaves_no_in_place_activation_to_break_training() -> None:
    # Removing the SE gate and cutting the last conv + BN (what the analysis offers on this model)
    # left pointwise's ReLU(inplace) rewriting depthwise's ReLU output, which its backward needs.
    model = make_concat_depthwise_se()
    remove_blocks(model, ["se", "pointwise.0", "pointwise.1"])
    model.fc = nn.Linear(24, 10)
    model.train()(DATA.train.x[:8]).sum().backward()
    assert not any(getattr(m, "inplace", False) for m in model.modules())
