"""Quantization-aware training: int8 weight / uint8 activation fake quantization, wrapping and
stripping, gradient flow, QAT distillation end to end, and no deprecation warnings."""

from __future__ import annotations

import ast
import copy
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import stages.distill
import stages.qat
from stages._context import Context, TaskData
from stages.config import DistillConfig
from stages.distill import Distill
from stages.qat import (
    FakeQuantized,
    activation_qparams,
    fake_quantize_weight,
    prepare_qat,
    strip_qat,
)
from tests.tiny_models import TINY_MODELS, make_tiny_cnn

torch.set_num_threads(1)


def _count(model: nn.Module, kind: type | tuple[type, ...]) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


def _accuracy(model: nn.Module, data: TaskData) -> float:
    model.eval()
    with torch.inference_mode():
        return 100.0 * float((model(data.val.x).argmax(1) == data.val.y).float().mean())


# --- the rounding ------------------------------------------------------------------------------


def test_weight_fake_quant_is_symmetric_int8_per_channel() -> None:
    torch.manual_seed(0)
    weight = torch.randn(6, 40, 3, 3) * torch.logspace(-3, 1, 6).view(6, 1, 1, 1)
    weight[2] = 0.0  # a dead channel must stay zero, not become NaN
    q = fake_quantize_weight(weight)
    for c in range(6):
        assert q[c].unique().numel() <= 255
        absmax = weight[c].abs().max()
        if absmax == 0:
            assert torch.equal(q[c], torch.zeros_like(q[c]))
            continue
        scale = absmax / 127
        levels = q[c] / scale
        assert torch.allclose(levels, levels.round(), atol=1e-3)
        assert levels.abs().max().round() == 127  # the channel's extreme maps to +-127
        assert (q[c] - weight[c]).abs().max() <= scale / 2 * 1.001
    # Per channel, not per tensor: the smallest channel keeps its own resolution.
    assert q[0].unique().numel() > 100


def test_weight_fake_quant_has_straight_through_gradient() -> None:
    weight = torch.randn(4, 8, requires_grad=True)
    (fake_quantize_weight(weight) * torch.arange(8.0)).sum().backward()
    assert torch.equal(weight.grad, torch.arange(8.0).expand(4, 8))


@pytest.mark.parametrize(
    ("low", "high", "scale", "zero_point"),
    [
        (-1.0, 3.0, 4.0 / 255, 64),  # zero_point = round(1 / (4 / 255)) = 64
        (0.5, 2.0, 2.0 / 255, 0),  # range widened to include 0
        (-2.0, -1.0, 2.0 / 255, 255),
        (0.0, 0.0, 1.0, 0),  # empty range: scale 1, as ONNX Runtime does
    ],
)
def test_activation_qparams_follow_onnx_runtime(
    low: float, high: float, scale: float, zero_point: int
) -> None:
    got_scale, got_zp = activation_qparams(torch.tensor(low), torch.tensor(high))
    assert float(got_scale) == pytest.approx(scale, rel=1e-6)
    assert int(got_zp) == zero_point and got_zp.dtype == torch.int32


def test_activation_observer_ema_and_frozen_in_eval() -> None:
    layer = FakeQuantized(nn.Linear(4, 3))
    x = torch.tensor([[-1.0, 0.0, 2.0, 3.0]])
    layer.eval()
    plain_input = F.linear(x, fake_quantize_weight(layer.module.weight), layer.module.bias)
    assert torch.equal(layer(x), plain_input)
    assert not layer.observed  # eval before training observes nothing

    layer.train()
    layer(x)
    assert (float(layer.act_min), float(layer.act_max)) == (-1.0, 3.0)  # first batch sets the range
    layer(x * 2)
    assert float(layer.act_min) == pytest.approx(0.99 * -1 + 0.01 * -2)
    assert float(layer.act_max) == pytest.approx(0.99 * 3 + 0.01 * 6)

    layer.eval()
    frozen = (layer.act_min.clone(), layer.act_max.clone())
    layer(x * 100)
    assert torch.equal(layer.act_min, frozen[0]) and torch.equal(layer.act_max, frozen[1])


def test_activations_are_rounded_to_256_levels_with_exact_zero() -> None:
    # An identity weight is exact in int8 (levels 0 and 127 of scale 1/127), so the layer's
    # output is its fake-quantized input.
    inner = nn.Linear(16, 16, bias=False)
    with torch.no_grad():
        inner.weight.copy_(torch.eye(16))
    layer = FakeQuantized(inner).train()
    x = torch.randn(64, 16)
    layer(x)
    layer.eval()
    with torch.no_grad():
        xq = layer(torch.cat([x, torch.zeros(1, 16)]))
    assert xq.unique().numel() <= 256
    assert torch.equal(xq[-1], torch.zeros(16))  # zero padding survives quantization exactly
    scale = float(activation_qparams(layer.act_min, layer.act_max)[0])
    assert scale == pytest.approx((float(x.max()) - float(x.min())) / 255)
    assert (xq[:-1] - x).abs().max() <= scale / 2 * 1.001
    assert not torch.equal(xq[:-1], x)


# --- wrapping and stripping --------------------------------------------------------------------


@pytest.mark.parametrize("factory", TINY_MODELS.values(), ids=TINY_MODELS.keys())
def test_prepare_wraps_every_conv_and_linear_and_strip_restores(factory) -> None:
    model = factory()
    original = copy.deepcopy(model)
    # nn.MultiheadAttention reads its out_proj's weight directly: that one stays unwrapped.
    attention_outputs = sum(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    n_layers = _count(model, (nn.Conv2d, nn.Linear)) - attention_outputs
    params = {name: p for name, p in model.named_parameters()}
    x = torch.randn(4, 1, 8, 8)

    assert prepare_qat(model) is model
    assert _count(model, FakeQuantized) == n_layers
    with torch.no_grad():
        model.eval()(x)  # runs wrapped (a wrapped out_proj broke the ViT here)
    wrappers = [m for m in model.modules() if isinstance(m, FakeQuantized)]
    assert all(isinstance(m.module, (nn.Conv2d, nn.Linear)) for m in wrappers)
    head = "heads.head" if hasattr(model, "heads") else "fc"  # torchvision's ViT names it so
    assert isinstance(model.get_submodule(head), FakeQuantized)  # the head too
    prepare_qat(model)  # idempotent
    assert _count(model, FakeQuantized) == n_layers

    assert strip_qat(model) is model
    assert _count(model, FakeQuantized) == 0
    assert [type(m) for m in model.modules()] == [type(m) for m in original.modules()]
    assert list(model.state_dict()) == list(original.state_dict())
    stripped = dict(model.named_parameters())
    assert all(stripped[name] is p for name, p in params.items())  # same tensors, trained in place
    with torch.no_grad():
        assert torch.equal(model.eval()(x), original.eval()(x))


def test_trained_qat_model_strips_to_plain_fp32_of_its_weights(data: TaskData) -> None:
    model = prepare_qat(make_tiny_cnn(seed=2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for i in range(0, 256, 32):
        loss = F.cross_entropy(model(data.train.x[i : i + 32]), data.train.y[i : i + 32])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    x = data.val.x
    with torch.no_grad():
        fake = model(x)
        strip_qat(model)
        plain = model(x)
        fresh = make_tiny_cnn(seed=99)
        fresh.load_state_dict(model.state_dict())
        assert torch.equal(plain, fresh.eval()(x))  # the stripped model is ordinary fp32
    # Fake quantization changed the outputs, but only by rounding noise.
    assert not torch.equal(fake, plain)
    assert (fake - plain).abs().max() < 0.1 * plain.abs().max()


def test_gradients_flow_and_loss_decreases(data: TaskData) -> None:
    model = prepare_qat(make_tiny_cnn(seed=3)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = data.train.x[:64], data.train.y[:64]
    losses = []
    for step in range(30):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            for name, p in model.named_parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0, name
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


# --- QAT distillation --------------------------------------------------------------------------


def test_qat_distill_trains_reports_and_strips(data: TaskData, tmp_path: Path) -> None:
    calls: list[tuple[str, float, float]] = []
    teacher = make_tiny_cnn(seed=1)
    Distill(DistillConfig(epochs=6, alpha=0.0, lr=0.05)).run(
        teacher, Context(data=data, teacher=nn.Identity(), workdir=tmp_path, batch_size=32)
    )
    student = make_tiny_cnn(seed=4)
    before = _accuracy(student, data)
    ctx = Context(
        data=data,
        teacher=teacher,
        workdir=tmp_path,
        batch_size=32,
        on_progress=lambda *a: calls.append(a),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = Distill(DistillConfig(epochs=6, alpha=0.5, lr=0.1), qat=True).run(student, ctx)
    noisy = [w for w in caught if issubclass(w.category, (DeprecationWarning, UserWarning))]
    assert not noisy, [f"{w.category.__name__}: {w.message}" for w in noisy]
    assert out is student and not student.training
    assert _count(student, FakeQuantized) == 0
    assert [f for _, f, _ in calls] == [0.25, 0.5, 0.75, 1.0]
    assert calls[-1][2] >= before + 40.0
    # The reported accuracy is that of the fake-quantized model; the plain fp32 result is close.
    assert abs(_accuracy(student, data) - calls[-1][2]) <= 10.0


def test_qat_and_distill_do_not_import_torch_ao() -> None:
    for module in (stages.qat, stages.distill):
        tree = ast.parse(Path(module.__file__).read_text())
        names = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
        assert not [n for n in names if n.startswith("torch.ao")], module.__name__


def test_prepare_rejects_a_bare_layer() -> None:
    with pytest.raises(TypeError, match="container module"):
        prepare_qat(nn.Linear(2, 2))
