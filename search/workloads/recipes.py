"""Training recipes per model family: how ``train`` trains a teacher from scratch.

One recipe does not fit every family: ResNets and VGGs train well with SGD and a one-cycle
schedule, while depthwise-separable nets (MobileNet, EfficientNet) and vision transformers need
AdamW with a warm-up. ``recipe_for(model_name)`` picks the family by name prefix (``RECIPE_FAMILIES``);
a model the table does not know, and a user's ``file.py:factory``, gets ``RECIPES["default"]``.
Flags such as ``--lr`` or ``--optimizer`` override single fields (``Recipe.with_overrides``).
"""

from __future__ import annotations

import dataclasses
import math

from torch import nn

__all__ = [
    "OPTIMIZERS",
    "RECIPES",
    "RECIPE_FAMILIES",
    "REGULARISATION_REFERENCE",
    "SCHEDULES",
    "Recipe",
    "batch_size_for",
    "recipe_family",
    "recipe_for",
    "regularisation_scale",
    "scale_regularisation",
]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine")
# An epoch should have at least this many optimizer steps: digits' 1,077 training images make
# 9 steps at batch 128, too few for a deep net trained from scratch in 30 epochs.
MIN_STEPS_PER_EPOCH = 32
MIN_BATCH_SIZE = 16
# Dropout and stochastic depth as the architectures define them were tuned on ImageNet-sized
# data over long schedules; with fewer training images they are scaled down in proportion.
REGULARISATION_REFERENCE = 50_000
# What ``--optimizer`` brings along when it differs from the recipe's.
OPTIMIZER_DEFAULTS: dict[str, dict[str, object]] = {
    "sgd": {"lr": 0.1, "weight_decay": 5e-4, "schedule": "onecycle", "warmup": 0.0},
    "adamw": {"lr": 2e-3, "weight_decay": 0.05, "schedule": "cosine", "warmup": 0.0},
}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How one family of models is trained from scratch.

    ``lr`` is the peak learning rate at ``batch_size`` (another batch size scales it, ``peak_lr``).
    ``warmup`` is the fraction of all steps spent warming up linearly (cosine schedule; the
    one-cycle schedule has its own rise). ``min_input_size``: inputs with a smaller side are
    resized up to it, so a 32x-downsampling network does not end on 1x1 maps after a few layers.
    """

    optimizer: str
    lr: float
    weight_decay: float
    schedule: str
    warmup: float = 0.0
    label_smoothing: float = 0.1
    batch_size: int = 128
    min_input_size: int | None = None
    grad_clip: float | None = None
    min_steps_per_epoch: int = MIN_STEPS_PER_EPOCH

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, but got {self.optimizer!r}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, but got {self.schedule!r}.")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0 and finite, but got {self.lr}.")
        if not 0.0 <= self.warmup < 1.0:
            raise ValueError(f"warmup must lie in [0, 1), but got {self.warmup}.")

    def with_overrides(self, **changes: object) -> Recipe:
        """This recipe with the given fields replaced; ``None`` values leave a field as it is.
        Another ``optimizer`` brings that optimizer's own learning rate, weight decay and schedule
        (``OPTIMIZER_DEFAULTS``) unless those are given too."""
        given = {k: v for k, v in changes.items() if v is not None}
        optimizer = given.get("optimizer")
        if optimizer is not None and optimizer != self.optimizer:
            given = {**OPTIMIZER_DEFAULTS.get(str(optimizer), {}), **given}
        return dataclasses.replace(self, **given)  # type: ignore[arg-type]

    def peak_lr(self, batch_size: int) -> float:
        """The peak learning rate at ``batch_size``: scaled linearly for SGD, by the square root
        for AdamW (whose steps are normalised per parameter)."""
        ratio = batch_size / self.batch_size
        return self.lr * (ratio if self.optimizer == "sgd" else math.sqrt(ratio))

    def stall_check_epoch(self, epochs: int) -> int | None:
        """The epoch after which a training loss that has not fallen means: restart at a lower
        learning rate; a tenth of the run after the learning rate peaked (the warm-up, or
        one-cycle's rise over 30 % of the steps), and never before the second: the first
        epoch's loss is what the check compares with (checked after the first, any loss above
        a uniform guess counted as a stall, and a slow starter was restarted at ever lower
        rates). None for runs under 5 epochs: too short to tell a slow start from a stall."""
        if epochs < 5:
            return None
        rise = self.warmup if self.schedule == "cosine" else 0.3
        return max(2, math.ceil(epochs * (rise + 0.1)))


RECIPES: dict[str, Recipe] = {
    # The demo CNN trains on digits in seconds at batch 128 (97-99 % test).
    "demo": Recipe(
        optimizer="sgd", lr=0.1, weight_decay=5e-4, schedule="onecycle", min_steps_per_epoch=0
    ),
    # Plain convolutional chains and residual nets: SGD with Nesterov momentum, one-cycle.
    "default": Recipe(optimizer="sgd", lr=0.1, weight_decay=5e-4, schedule="onecycle"),
    "resnet": Recipe(
        optimizer="sgd", lr=0.1, weight_decay=5e-4, schedule="onecycle", min_input_size=28
    ),
    # Five 2x2 max-pools: 28 px would pool a 1x1 map away.
    "vgg": Recipe(
        optimizer="sgd", lr=0.05, weight_decay=5e-4, schedule="onecycle", min_input_size=32
    ),
    # Depthwise-separable nets: SGD at 0.1 leaves their BatchNorm statistics behind the weights
    # (a falling training loss, chance-level validation); AdamW with a warm-up trains them.
    "mobilenet": Recipe(
        optimizer="adamw", lr=4e-3, weight_decay=0.01, schedule="cosine", warmup=0.05,
        min_input_size=28,
    ),
    "efficientnet": Recipe(
        optimizer="adamw", lr=4e-3, weight_decay=0.01, schedule="cosine", warmup=0.05,
        min_input_size=28,
    ),
    # Vision transformers: AdamW, warm-up then cosine, weight decay 0.05, clipped gradients.
    "vit": Recipe(
        optimizer="adamw", lr=1e-3, weight_decay=0.05, schedule="cosine", warmup=0.1,
        grad_clip=1.0,
    ),
}

# Model-name prefixes -> family, first match wins (torchvision's names; a built-in model added to
# ``BUILTIN_MODELS`` under such a name, e.g. ``vit_tiny``, gets its family's recipe too).
RECIPE_FAMILIES: tuple[tuple[str, str], ...] = (
    ("demo", "demo"),
    ("resnet", "resnet"),
    ("resnext", "resnet"),
    ("wide_resnet", "resnet"),
    ("vgg", "vgg"),
    ("mobilenet", "mobilenet"),
    ("mnasnet", "mobilenet"),
    ("shufflenet", "mobilenet"),
    ("efficientnet", "efficientnet"),
    ("regnet", "efficientnet"),
    ("vit_", "vit"),
    ("swin", "vit"),
    ("maxvit", "vit"),
)


def recipe_family(model_name: str) -> str:
    """The ``RECIPES`` key for ``model_name``: its family by prefix, else ``default`` (which a
    user's ``file.py:factory`` always gets: its name says nothing about its architecture)."""
    if ":" in model_name:
        return "default"
    for prefix, family in RECIPE_FAMILIES:
        if model_name.startswith(prefix):
            return family
    return "default"


def recipe_for(model_name: str) -> Recipe:
    """The training recipe of ``model_name``'s family."""
    return RECIPES[recipe_family(model_name)]


def batch_size_for(recipe: Recipe, train_samples: int) -> int:
    """The recipe's batch size, halved (not below 16) until an epoch has at least
    ``recipe.min_steps_per_epoch`` steps: small datasets get more, smaller steps."""
    size = recipe.batch_size
    while size > MIN_BATCH_SIZE and train_samples // size < recipe.min_steps_per_epoch:
        size //= 2
    return size


def regularisation_scale(train_samples: int) -> float:
    """The factor applied to a model's own dropout and stochastic-depth rates."""
    return min(1.0, train_samples / REGULARISATION_REFERENCE)


def scale_regularisation(model: nn.Module, factor: float) -> int:
    """Multiply the rate of every ``nn.Dropout`` and torchvision ``StochasticDepth`` in ``model``
    by ``factor`` (keeping, e.g., EfficientNet's per-block ramp); the number of layers changed."""
    from torchvision.ops import StochasticDepth

    changed = 0
    for module in model.modules():
        if isinstance(module, (nn.Dropout, StochasticDepth)) and module.p > 0:
            module.p = module.p * factor
            changed += 1
    return changed
