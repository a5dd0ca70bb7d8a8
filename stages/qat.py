"""Quantization-aware training by fake quantization, without ``torch.ao`` (deprecated upstream).

``prepare_qat`` wraps every ``nn.Conv2d`` and ``nn.Linear`` so its forward pass sees the rounding
that ONNX Runtime's static QDQ quantization applies after export: weights per output channel,
symmetric int8 in [-127, 127]; input activations per tensor, asymmetric uint8 with a range that
always includes zero. Gradients pass straight through the rounding. ``strip_qat`` puts the plain
modules back, holding the trained fp32 weights, so the model exports as ordinary fp32 ONNX and is
quantized there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_QMIN, WEIGHT_QMAX = -127, 127
ACT_QMIN, ACT_QMAX = 0, 255
# Running-range momentum of the activation observer (the first batch sets the range outright).
ACT_MOMENTUM = 0.99

QUANTIZABLE = (nn.Conv2d, nn.Linear)


def fake_quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` rounded to symmetric int8 per output channel (axis 0), scale = max|w| / 127."""
    absmax = weight.detach().abs().flatten(1).amax(dim=1)
    # An all-zero channel stays zero under any scale; 1 avoids dividing by zero, as ORT does.
    scale = torch.where(absmax > 0, absmax / WEIGHT_QMAX, torch.ones_like(absmax)).float()
    zero_point = torch.zeros(weight.shape[0], dtype=torch.int32, device=weight.device)
    return torch.fake_quantize_per_channel_affine(
        weight, scale, zero_point, 0, WEIGHT_QMIN, WEIGHT_QMAX
    )


def activation_qparams(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point of asymmetric uint8 for the range [low, high] widened to contain 0,
    as ONNX Runtime computes them (so 0 is exactly representable, e.g. for zero padding)."""
    low = torch.clamp(low, max=0.0)
    high = torch.clamp(high, min=0.0)
    span = high - low
    scale = torch.where(span > 0, span / (ACT_QMAX - ACT_QMIN), torch.ones_like(span)).float()
    zero_point = torch.clamp(torch.round(ACT_QMIN - low / scale), ACT_QMIN, ACT_QMAX)
    return scale.reshape(()), zero_point.to(torch.int32).reshape(())


class FakeQuantized(nn.Module):
    """A ``nn.Conv2d`` or ``nn.Linear`` (kept as the child ``module``, with its own parameters)
    whose weight and input activation are fake-quantized in the forward pass.

    The activation range is a running min/max observed in training mode and frozen in eval mode;
    before any training batch has been observed the input passes through unquantized.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        if not isinstance(module, QUANTIZABLE):
            raise TypeError(
                f"FakeQuantized wraps nn.Conv2d or nn.Linear, but got {type(module).__name__}."
            )
        self.module = module
        device = module.weight.device
        self.register_buffer("act_min", torch.zeros((), device=device))
        self.register_buffer("act_max", torch.zeros((), device=device))
        self.register_buffer("observed", torch.zeros((), dtype=torch.bool, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self._observe(x)
        if bool(self.observed):
            scale, zero_point = activation_qparams(self.act_min, self.act_max)
            x = torch.fake_quantize_per_tensor_affine(x, scale, zero_point, ACT_QMIN, ACT_QMAX)
        weight = fake_quantize_weight(self.module.weight)
        if isinstance(self.module, nn.Conv2d):
            return self.module._conv_forward(x, weight, self.module.bias)
        return F.linear(x, weight, self.module.bias)

    @torch.no_grad()
    def _observe(self, x: torch.Tensor) -> None:
        low, high = torch.aminmax(x.detach().float())
        if bool(self.observed):
            self.act_min.mul_(ACT_MOMENTUM).add_(low, alpha=1 - ACT_MOMENTUM)
            self.act_max.mul_(ACT_MOMENTUM).add_(high, alpha=1 - ACT_MOMENTUM)
        else:
            self.act_min.copy_(low)
            self.act_max.copy_(high)
            self.observed.fill_(True)

    def extra_repr(self) -> str:
        return "weight: int8 symmetric per-channel, input: uint8 asymmetric per-tensor"


def prepare_qat(model: nn.Module) -> nn.Module:
    """Wrap every ``nn.Conv2d`` and ``nn.Linear`` of ``model`` (the head included; not the output
    projection of an ``nn.MultiheadAttention``) in ``FakeQuantized``, in place; returns ``model``.
    Already wrapped layers are left as they are."""
    if isinstance(model, QUANTIZABLE):
        raise TypeError(
            f"prepare_qat needs a container module to wrap layers in place, but got a bare "
            f"{type(model).__name__}; wrap it in nn.Sequential first."
        )
    for parent in list(model.modules()):
        # nn.MultiheadAttention reads its out_proj's weight itself (F.multi_head_attention_forward)
        # instead of calling it: that projection trains unwrapped, in fp32.
        if isinstance(parent, (FakeQuantized, nn.MultiheadAttention)):
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, QUANTIZABLE):
                setattr(parent, name, FakeQuantized(child))
    return model


def strip_qat(model: nn.Module) -> nn.Module:
    """Replace every ``FakeQuantized`` by the plain module it holds (with the trained fp32
    weights), in place; returns ``model``."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FakeQuantized):
                setattr(parent, name, child.module)
    return model
