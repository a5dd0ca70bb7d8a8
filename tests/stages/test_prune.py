"""Prune stage: structured pruning makes models physically smaller and keeps them running;
unstructured pruning zeroes weights in place; graphs it cannot prune raise StageError."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
import torchvision
from torch import nn

from stages._context import Context
from stages._graph import (
    check_forward,
    count_params_macs,
    find_classifier,
    weight_layers,
)
from stages.config import PruneConfig
from stages.criteria import CRITERIA, Criterion
from stages.errors import ConfigError, StageError
from stages.prune import Prune, _accumulate_gradients
from tests.tiny_models import (
    TINY_MODELS,
    make_concat_depthwise_se,
    make_tiny_cnn,
    make_tiny_resnet,
    tiny_task_data,
)

torch.set_num_threads(1)

DATA = tiny_task_data()


def _ctx(tmp_path: Path, model: nn.Module, data=DATA) -> Context:
    return Context(data=data, teacher=model, workdir=tmp_path, batch_size=32)


def _size(model: nn.Module, data=DATA) -> tuple[int, int]:
    return count_params_macs(model, data.example_input())


def _prune(model: nn.Module, tmp_path: Path, **config) -> nn.Module:
    return Prune(PruneConfig(**config)).run(model, _ctx(tmp_path, model))


def _gzip_bytes(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return len(gzip.compress(buffer.getvalue()))


def _assert_runs(model: nn.Module, data=DATA) -> None:
    assert not model.training
    with torch.no_grad():
        logits = model(data.val.x[:5])
    assert logits.shape == (5, data.num_classes)
    assert torch.isfinite(logits).all()


def test_ratio_zero_returns_the_model_untouched(tmp_path: Path) -> None:
    model = make_tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert _prune(model, tmp_path, ratio=0.0) is model
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("criterion", CRITERIA)
@pytest.mark.parametrize("scope", ["global", "uniform"])
def test_every_criterion_shrinks_tiny_cnn(tmp_path: Path, criterion: str, scope: str) -> None:
    model = make_tiny_cnn()
    params, macs = _size(model)
    out = _prune(model, tmp_path, ratio=0.5, criterion=criterion, scope=scope)
    assert out is model
    new_params, new_macs = _size(model)
    # Half the channels of coupled layers leave about a quarter of the weights.
    assert 0.15 * params < new_params < 0.6 * params
    assert 0.15 * macs < new_macs < 0.6 * macs
    assert model.fc.out_features == 10
    assert all(p.grad is None for p in model.parameters())
    _assert_runs(model)


def test_config_accepts_exactly_the_registered_criteria() -> None:
    for name in CRITERIA:
        assert PruneConfig(criterion=name).criterion == name
    with pytest.raises(ConfigError, match=r"prune.criterion must be one of l1, l2, .*but got 'l3'"):
        PruneConfig(criterion="l3")


def test_a_new_criterion_is_one_registry_entry_and_gets_gradients_when_it_asks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []

    class Recording(tp.importance.GroupMagnitudeImportance):
        def __call__(self, group):  # type: ignore[no-untyped-def]
            seen.append(all(p.grad is not None for p in model.parameters() if p.dim() > 1))
            return super().__call__(group)

    for needs_gradients in (False, True):
        monkeypatch.setitem(CRITERIA, "recording", Criterion(Recording, "test", needs_gradients))
        seen.clear()
        model = make_tiny_cnn()
        _prune(model, tmp_path, ratio=0.5, criterion="recording")
        assert seen and set(seen) == {needs_gradients}
        assert all(p.grad is None for p in model.parameters())  # cleared afterwards
        _assert_runs(model)


def test_only_taylor_needs_gradients() -> None:
    assert {n for n, c in CRITERIA.items() if c.needs_gradients} == {"taylor"}


@pytest.mark.parametrize("factory", TINY_MODELS.values(), ids=TINY_MODELS.keys())
@pytest.mark.parametrize("scope", ["global", "uniform"])
def test_every_tiny_model_shrinks_with_ratio(tmp_path: Path, factory, scope: str) -> None:
    sizes = []
    for ratio in (0.3, 0.6, 0.9):
        model = factory()
        _prune(model, tmp_path, ratio=ratio, scope=scope)
        _assert_runs(model)
        assert find_classifier(model, 10, stage="prune").weight.shape[0] == 10
        sizes.append(_size(model))
    base = _size(factory())
    assert base[0] > sizes[0][0] > sizes[1][0] > sizes[2][0]
    assert base[1] > sizes[0][1] > sizes[1][1] > sizes[2][1]


def test_depthwise_convs_stay_depthwise(tmp_path: Path) -> None:
    model = make_concat_depthwise_se()
    _prune(model, tmp_path, ratio=0.5)
    for conv in (model.branch_b[0][0], model.depthwise[0]):
        assert conv.groups == conv.in_channels == conv.out_channels
    assert model.depthwise[0].out_channels < 24
    _assert_runs(model)


def test_round_to_keeps_channel_counts_multiples(tmp_path: Path) -> None:
    model = make_tiny_resnet()
    _prune(model, tmp_path, ratio=0.6, round_to=8)
    widths = [m.out_channels for _, m in weight_layers(model) if isinstance(m, nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths), widths
    assert _size(model)[0] < 0.5 * _size(make_tiny_resnet())[0]
    _assert_runs(model)


@pytest.mark.parametrize("criterion", ["l2", "taylor"])
def test_iterative_steps_reach_about_the_same_size(tmp_path: Path, criterion: str) -> None:
    one, three = make_tiny_resnet(), make_tiny_resnet()
    _prune(one, tmp_path, ratio=0.5, steps=1, criterion=criterion)
    _prune(three, tmp_path, ratio=0.5, steps=3, criterion=criterion)
    _assert_runs(three)
    assert _size(three)[0] == pytest.approx(_size(one)[0], rel=0.25)


def test_random_criterion_repeats_with_the_same_seed(tmp_path: Path) -> None:
    a, b = make_tiny_cnn(), make_tiny_cnn()
    _prune(a, tmp_path, ratio=0.5, criterion="random")
    _prune(b, tmp_path, ratio=0.5, criterion="random")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_gradient_scoring_leaves_batch_norm_statistics_alone(tmp_path: Path) -> None:
    model = make_tiny_cnn()
    model.features[0][0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.named_buffers()}
    _accumulate_gradients(model, _ctx(tmp_path, model))
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.named_buffers())
    assert all(m.weight.grad is not None for _, m in weight_layers(model))
    assert not model.features[0][0].weight.requires_grad


def test_light_pruning_of_a_trained_model_keeps_it_predicting(tmp_path: Path) -> None:
    # A lightly pruned trained model still predicts far better than chance (10 %): the kept
    # channels keep their weights and batch-norm statistics. (Without fine-tuning a tiny model
    # loses much: this checks nothing got scrambled, not how good the criterion is.)
    model = make_tiny_cnn().train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for x, y in DATA.train.batches(32):
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimiser.step()
    model.eval()
    _prune(model, tmp_path, ratio=0.1, criterion="l2")
    with torch.no_grad():
        accuracy = (model(DATA.val.x).argmax(1) == DATA.val.y).float().mean().item()
    assert accuracy > 0.4


class _GroupedMerge(nn.Module):
    """Two branches concatenated, then merged by a grouped 1x1 conv: torch-pruning's index
    mapping breaks on this graph."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 8, 3, padding=1)
        self.b = nn.Conv2d(1, 8, 3, padding=1)
        self.merge = nn.Conv2d(16, 16, 1, groups=2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.merge(torch.cat([self.a(x), self.b(x)], 1))
        return self.fc(x.mean((2, 3)))


def test_unprunable_graph_raises_stage_error_naming_the_layer(tmp_path: Path) -> None:
    with pytest.raises(StageError, match="'merge'"):
        _prune(_GroupedMerge().eval(), tmp_path, ratio=0.5)


def test_untraceable_graph_raises_stage_error_naming_the_operation(tmp_path: Path) -> None:
    # torch-pruning's reshape tracking divides by zero on shufflenet's channel shuffle.
    data = tiny_task_data(n_train=8, n_val=8, n_test=8, channels=3, size=32)
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval()
    with pytest.raises(StageError, match="operation 'ReshapeOp' after layer 'stage"):
        Prune(PruneConfig(ratio=0.5)).run(model, _ctx(tmp_path, model, data))


def test_unprunable_graph_still_takes_unstructured_pruning(tmp_path: Path) -> None:
    model = _GroupedMerge().eval()
    _prune(model, tmp_path, ratio=0.5, method="unstructured")
    assert (model.merge.weight == 0).float().mean() > 0.2
    _assert_runs(model)


def test_model_without_a_classifier_of_the_task_width_raises(tmp_path: Path) -> None:
    data = tiny_task_data(classes=7)
    model = make_tiny_cnn()  # ten outputs
    with pytest.raises(StageError, match="7 outputs"):
        Prune(PruneConfig(ratio=0.5)).run(model, _ctx(tmp_path, model, data))


def test_check_forward_names_the_layer_that_fails() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.Linear(31, 10))
    with pytest.raises(StageError, match="'2'"):
        check_forward(model, torch.zeros(1, 1, 8, 8), 10, "prune")
    with pytest.raises(StageError, match="N x 12"):
        check_forward(model[:2], torch.zeros(1, 1, 8, 8), 12, "prune")


def test_count_params_macs_counts_a_known_layer() -> None:
    conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
    assert count_params_macs(conv, torch.zeros(1, 1, 8, 8)) == (18, 2 * 9 * 64)


# Unstructured -----------------------------------------------------------------------------


def _zero_fraction(tensors: list[torch.Tensor]) -> float:
    return sum(int((t == 0).sum()) for t in tensors) / sum(t.numel() for t in tensors)


def test_unstructured_global_zeroes_the_ratio_of_weights_in_place(tmp_path: Path) -> None:
    model = make_tiny_resnet()
    keys = list(model.state_dict())
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    head = model.fc.weight.clone()
    gzip_before = _gzip_bytes(model)
    _prune(model, tmp_path, ratio=0.7, method="unstructured")
    body = [m.weight for _, m in weight_layers(model) if m is not model.fc]
    assert _zero_fraction(body) == pytest.approx(0.7, abs=0.01)
    assert torch.equal(model.fc.weight, head)
    # Plain zeros: no masks, hooks or re-parametrised weights left behind.
    assert list(model.state_dict()) == keys
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert all(not m._forward_pre_hooks for m in model.modules())
    assert _gzip_bytes(model) < 0.6 * gzip_before
    _assert_runs(model)


def test_unstructured_uniform_zeroes_every_layer_alike(tmp_path: Path) -> None:
    model = make_tiny_cnn()
    model.features[0][0].weight.data *= 0.01  # global ranking would empty this layer
    _prune(model, tmp_path, ratio=0.5, method="unstructured", scope="uniform")
    for _, layer in weight_layers(model):
        if layer is not model.fc:
            assert _zero_fraction([layer.weight]) == pytest.approx(0.5, abs=0.05)


def test_unstructured_global_ranks_all_layers_together(tmp_path: Path) -> None:
    model = make_tiny_cnn()
    model.features[0][0].weight.data *= 0.01
    _prune(model, tmp_path, ratio=0.5, method="unstructured", scope="global")
    assert _zero_fraction([model.features[0][0].weight]) == 1.0
    assert _zero_fraction([model.features[3][0].weight]) < 0.6


# torchvision models, adapted to 1-channel 32x32 inputs and 10 classes ----------------------


def _one_channel(name: str) -> nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(num_classes=10)
    if name == "resnet18":
        model.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    elif name == "vgg11_bn":
        model.features[0] = nn.Conv2d(1, 64, 3, padding=1)
    else:  # mobilenet_v2, efficientnet_b0
        first = model.features[0][0]
        model.features[0][0] = nn.Conv2d(1, first.out_channels, 3, 2, 1, bias=False)
    return model.eval()


@pytest.mark.parametrize(
    "name",
    ["resnet18", "mobilenet_v2", "efficientnet_b0", pytest.param("vgg11_bn", marks=pytest.mark.slow)],
)
def test_torchvision_models_halve_their_channels(tmp_path: Path, name: str) -> None:
    data = tiny_task_data(n_train=32, n_val=8, n_test=8, size=32)
    model = _one_channel(name)
    params, macs = _size(model, data)
    Prune(PruneConfig(ratio=0.5, criterion="l2")).run(model, _ctx(tmp_path, model, data))
    new_params, new_macs = _size(model, data)
    assert 0.15 * params < new_params < 0.45 * params
    assert 0.15 * macs < new_macs < 0.45 * macs
    assert find_classifier(model, 10, stage="prune").out_features == 10
    _assert_runs(model, data)
