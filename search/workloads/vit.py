"""``vit_tiny``: a small Vision Transformer (torchvision's ``VisionTransformer``) sized to the
dataset's images, channels and classes.

The patch size is the smallest divisor of the image size that leaves a grid of at most
``MAX_GRID`` patches a side (28 x 28 -> patch 4, a 7 x 7 grid; 8 x 8 digits -> patch 2, 4 x 4),
so attention stays cheap on CPU while every pixel is seen.
"""

from __future__ import annotations

import math

from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from search.errors import UserError

# Patches a side, at most: 49 tokens (plus the class token) at 28 x 28.
MAX_GRID = 7
# The size of vit_tiny: within the ViT-Tiny family's range (4-6 layers, 128-192 wide, 4-6 heads).
VIT_TINY = {"num_layers": 6, "num_heads": 4, "hidden_dim": 128, "mlp_dim": 256}


def patch_size_for(image_size: int) -> int:
    """The smallest patch size dividing ``image_size`` with at most ``MAX_GRID`` patches a side."""
    for patch in range(1, image_size + 1):
        if image_size % patch == 0 and image_size // patch <= MAX_GRID:
            return patch
    raise AssertionError("unreachable: the image size itself always divides")


def build_vit_tiny(*, in_channels: int, num_classes: int, image_size: int | None) -> nn.Module:
    """``VIT_TINY`` for square ``image_size`` inputs with ``in_channels`` channels."""
    if image_size is None:
        raise UserError("vit_tiny takes square images only; pass --image-size N to resize them.")
    model = VisionTransformer(
        image_size=image_size,
        patch_size=patch_size_for(image_size),
        num_classes=num_classes,
        **VIT_TINY,
    )
    if in_channels != 3:
        old = model.conv_proj
        model.conv_proj = nn.Conv2d(
            in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride
        )
        # torchvision's own initialisation of the patch embedding (VisionTransformer.__init__).
        fan_in = in_channels * old.kernel_size[0] * old.kernel_size[1]
        nn.init.trunc_normal_(model.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(model.conv_proj.bias)
    return model
