"""What structured pruning needs to know about attention: the width of a model's
``nn.MultiheadAttention`` layers splits into equal heads, and modules that cache a width in a
plain attribute must follow the pruned shapes."""

from __future__ import annotations

from torch import nn


def attention_channel_groups(model: nn.Module) -> dict[nn.Module, int]:
    """Every ``nn.MultiheadAttention`` in ``model`` and its number of heads.

    Given to torch-pruning as the layer's output channel groups, the embedding width is pruned by
    the same positions in every head, so each head stays whole (only narrower) and its query,
    key and value dimensions keep lining up; pruning arbitrary positions would shift the head
    boundaries and mix heads.
    """
    return {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}


def attention_ratio_caps(model: nn.Module, ratio: float) -> dict[nn.Module, float]:
    """Per-attention pruning ratios where ``ratio`` would leave a head no dimension at all.

    Each head is pruned by the same positions, so a ratio keeping fewer than one of its
    ``head_dim`` dimensions would empty every head, and torch-pruning would then skip the whole
    embedding width silently; capped, each head keeps at least one dimension.
    """
    caps = {}
    for module, heads in attention_channel_groups(model).items():
        head_dim = module.embed_dim // heads
        cap = max(0.0, (head_dim - 1.5) / head_dim)  # int(head_dim * (1 - cap)) == 1
        if ratio > cap:
            caps[module] = cap
    return caps


def sync_pruned_widths(model: nn.Module) -> None:
    """Set the width attributes that forward passes read to the pruned shapes.

    torchvision's ``VisionTransformer`` reshapes patch embeddings by ``hidden_dim``;
    torch-pruning updates ``nn.MultiheadAttention``'s ``embed_dim``/``head_dim`` itself.
    """
    from torchvision.models.vision_transformer import VisionTransformer

    for module in model.modules():
        if isinstance(module, VisionTransformer):
            module.hidden_dim = module.conv_proj.out_channels
