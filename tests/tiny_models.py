"""Tiny models and a synthetic task shared by every stage test.

The models cover the graph shapes a compression stage must survive: a plain chain
(``TinyCNN``), a residual add (``TinyResNet``) and a user-style model with a channel
concatenation, depthwise convolutions and a squeeze-excitation gate (``ConcatDepthwiseSE``),
and a Vision Transformer (``make_tiny_vit``: torchvision's, patch 2, 2 layers, width 32, 4 heads).
All take N x C x 8 x 8 inputs (the CNNs any spatial size: they end in global average pooling).
``no_warnings`` and ``train_briefly`` are the small helpers the stage tests share.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from stages import Split, TaskData


def _conv_bn_relu(c_in: int, c_out: int, *, groups: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinyCNN(nn.Module):
    """conv-bn-relu x3, global pool, linear: the simplest chain a stage must handle."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, width),
            _conv_bn_relu(width, 2 * width),
            nn.MaxPool2d(2),
            _conv_bn_relu(2 * width, 2 * width),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class _BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut added back."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    """Stem, an identity block and a projection block: residual adds couple channel counts."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(in_channels, width)
        self.layer1 = _BasicBlock(width, width)
        self.layer2 = _BasicBlock(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class _SqueezeExcite(nn.Module):
    """Channel gate: pool, 1x1 reduce, ReLU, 1x1 expand, sigmoid, multiply."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.expand(torch.relu(self.reduce(self.pool(x)))))
        return x * gate


class ConcatDepthwiseSE(nn.Module):
    """A user-style model: two branches concatenated on channels, depthwise separable convs
    (one of them right after the concatenation) and a squeeze-excitation gate."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.stem = _conv_bn_relu(in_channels, width)
        self.branch_a = _conv_bn_relu(width, width // 2, kernel=1)
        self.branch_b = nn.Sequential(
            _conv_bn_relu(width, width, groups=width),
            _conv_bn_relu(width, width, kernel=1),
        )
        merged = width // 2 + width
        self.depthwise = _conv_bn_relu(merged, merged, groups=merged)
        self.se = _SqueezeExcite(merged, max(merged // 4, 1))
        self.pointwise = _conv_bn_relu(merged, 2 * width, kernel=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = self.pointwise(self.se(self.depthwise(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def make_tiny_cnn(in_channels: int = 1, num_classes: int = 10, seed: int = 0) -> TinyCNN:
    """A freshly initialised ``TinyCNN`` in eval mode (seeded, so tests are repeatable)."""
    torch.manual_seed(seed)
    return TinyCNN(in_channels, num_classes).eval()


def make_tiny_resnet(in_channels: int = 1, num_classes: int = 10, seed: int = 0) -> TinyResNet:
    """A freshly initialised ``TinyResNet`` in eval mode."""
    torch.manual_seed(seed)
    return TinyResNet(in_channels, num_classes).eval()


def make_concat_depthwise_se(
    in_channels: int = 1, num_classes: int = 10, seed: int = 0
) -> ConcatDepthwiseSE:
    """A freshly initialised ``ConcatDepthwiseSE`` in eval mode."""
    torch.manual_seed(seed)
    return ConcatDepthwiseSE(in_channels, num_classes).eval()


def make_tiny_vit(
    in_channels: int = 1, num_classes: int = 10, seed: int = 0, size: int = 8
) -> nn.Module:
    """A freshly initialised torchvision ``VisionTransformer`` for ``size`` x ``size`` inputs
    (patch 2, 2 encoder layers, width 32, 4 heads, MLP 64) in eval mode."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    model = VisionTransformer(
        image_size=size, patch_size=2, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=64,
        num_classes=num_classes,
    )
    model.conv_proj = nn.Conv2d(in_channels, 32, kernel_size=2, stride=2)
    return model.eval()


# name -> factory, so tests can parametrise over every tiny model.
TINY_MODELS = {
    "tiny_cnn": make_tiny_cnn,
    "tiny_resnet": make_tiny_resnet,
    "concat_depthwise_se": make_concat_depthwise_se,
    "tiny_vit": make_tiny_vit,
}


def tiny_task_data(
    n_train: int = 256,
    n_val: int = 64,
    n_test: int = 64,
    channels: int = 1,
    size: int = 8,
    classes: int = 10,
    seed: int = 0,
) -> TaskData:
    """A learnable synthetic classification task: each class is a fixed random pattern, each
    sample that pattern plus Gaussian noise, so a few training steps raise accuracy well above
    chance while a perfect score still takes some learning."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(classes, channels, size, size, generator=gen)

    def split(n: int) -> Split:
        y = torch.randint(0, classes, (n,), generator=gen)
        noise = torch.randn(n, channels, size, size, generator=gen)
        return Split(x=(prototypes[y] + 0.8 * noise).float(), y=y.long())

    return TaskData(
        train=split(n_train),
        val=split(n_val),
        test=split(n_test),
        num_classes=classes,
        preprocessing={"synthetic": True, "mean": 0.0, "std": 1.0},
    )


@contextmanager
def no_warnings() -> Iterator[None]:
    """Fail if anything inside warns (every category, every time)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert not caught, [f"{w.category.__name__}: {w.message}" for w in caught]


def train_briefly(model: nn.Module, data: TaskData, steps: int) -> nn.Module:
    """``steps`` seeded SGD steps on batches of 64 training samples, then eval mode: enough for
    a confident, well-above-chance tiny model."""
    generator = torch.Generator().manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data.train), (64,), generator=generator)
        loss = nn.functional.cross_entropy(model(data.train.x[idx]), data.train.y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
