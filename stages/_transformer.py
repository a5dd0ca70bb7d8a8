"""What structured pruning needs to know about attention: the width of a model's
``nn.MultiheadAttention`` layers splits into equal heads, and modules that cache a width in a
plain attribute must follow the pruned shapes; and whole heads, removed by the importance their
outputs have for the loss, with attention layers rebuilt so a head can go without the residual
width."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from stages.errors import StageError


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


class HeadAttention(nn.Module):
    """Multi-head attention whose heads can be removed whole.

    ``nn.MultiheadAttention`` ties its query, key and value width to the embedding (residual)
    width, ``num_heads * head_dim``, so dropping a head would also drop residual channels. Here
    the projections map the embedding to ``num_heads * head_dim`` and back on their own, so
    removing a head narrows only them. ``from_mha`` copies a batch-first self-attention's weights
    (same outputs); ``forward`` takes what torchvision's ``EncoderBlock`` passes and returns
    ``(output, None)`` as ``nn.MultiheadAttention`` does with ``need_weights=False``. The
    attention is plain matrix products and a softmax, so it exports to ONNX as MatMul/Softmax.
    ``head_mask`` (ones, a buffer) scales each head's output: head importance is its gradient.
    """

    def __init__(self, embed_dim: int, num_heads: int, head_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        inner = num_heads * head_dim
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, head_dim
        self.q_proj = nn.Linear(embed_dim, inner)
        self.k_proj = nn.Linear(embed_dim, inner)
        self.v_proj = nn.Linear(embed_dim, inner)
        self.out_proj = nn.Linear(inner, embed_dim)
        self.dropout = dropout
        self.register_buffer("head_mask", torch.ones(num_heads), persistent=False)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> HeadAttention:
        """The same attention as ``mha`` (batch-first, one projection matrix, biases)."""
        if not (mha.batch_first and mha._qkv_same_embed_dim and mha.in_proj_bias is not None
                and mha.bias_k is None and not mha.add_zero_attn):
            raise StageError(
                "prune",
                "only batch-first self-attention with biased projections (as in "
                "torchvision's VisionTransformer) can lose whole heads (prune.heads)"
            )
        embed = mha.out_proj.out_features
        inner = mha.in_proj_weight.shape[0] // 3
        module = cls(embed, mha.num_heads, inner // mha.num_heads, mha.dropout)
        weights = mha.in_proj_weight.detach().chunk(3)
        biases = mha.in_proj_bias.detach().chunk(3)
        with torch.no_grad():
            for proj, w, b in zip((module.q_proj, module.k_proj, module.v_proj), weights, biases):
                proj.weight.copy_(w)
                proj.bias.copy_(b)
            module.out_proj.weight.copy_(mha.out_proj.weight)
            module.out_proj.bias.copy_(mha.out_proj.bias)
        return module.to(mha.in_proj_weight.device)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *args: object,
        **kwargs: object,
    ) -> tuple[torch.Tensor, None]:
        batch, length, _ = query.shape

        def heads(x: torch.Tensor) -> torch.Tensor:  # (B, N, H*D) -> (B, H, N, D)
            return x.reshape(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)

        q = heads(self.q_proj(query)) * self.head_dim**-0.5
        k, v = heads(self.k_proj(key)), heads(self.v_proj(value))
        weights = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        if self.training and self.dropout > 0:
            weights = F.dropout(weights, self.dropout)
        context = (weights @ v) * self.head_mask.view(1, -1, 1, 1)
        context = context.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)
        return self.out_proj(context), None

    def keep_heads(self, keep: Sequence[int]) -> None:
        """Keep only the heads at positions ``keep`` (in that order)."""
        index = torch.tensor(
            [h * self.head_dim + d for h in keep for d in range(self.head_dim)],
            device=self.q_proj.weight.device,
        )
        for name in ("q_proj", "k_proj", "v_proj"):
            old = getattr(self, name)
            new = nn.Linear(old.in_features, len(index)).to(old.weight.device)
            with torch.no_grad():
                new.weight.copy_(old.weight[index])
                new.bias.copy_(old.bias[index])
            setattr(self, name, new)
        old = self.out_proj
        new = nn.Linear(len(index), old.out_features).to(old.weight.device)
        with torch.no_grad():
            new.weight.copy_(old.weight[:, index])
            new.bias.copy_(old.bias)
        self.out_proj = new
        self.num_heads = len(keep)
        self.head_mask = torch.ones(self.num_heads, device=index.device)

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, head_dim={self.head_dim}"


def attention_layers(model: nn.Module) -> int:
    """How many attention layers of ``model`` can lose whole heads."""
    return sum(isinstance(m, (nn.MultiheadAttention, HeadAttention)) for m in model.modules())


def to_head_attention(model: nn.Module) -> list[HeadAttention]:
    """Replace every ``nn.MultiheadAttention`` of ``model`` by the equivalent ``HeadAttention``
    (in place); all of the model's ``HeadAttention`` layers, in module order."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.MultiheadAttention):
            model.set_submodule(name, HeadAttention.from_mha(module))
    return [m for m in model.modules() if isinstance(m, HeadAttention)]


def head_importance(
    model: nn.Module, layers: Sequence[HeadAttention], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
) -> list[torch.Tensor]:
    """Each head's importance, per layer: the summed magnitude of the loss gradient with respect
    to a mask on the head's output (Michel, Levy and Neubig, "Are Sixteen Heads Really Better than
    One?", 2019), each layer's scores normalised to unit L2 norm as they do. The model's
    parameters and mode are left as they were (their gradients are not kept)."""
    training = model.training
    model.eval()
    scores = [torch.zeros(layer.num_heads, device=device) for layer in layers]
    for layer in layers:
        layer.head_mask.requires_grad_(True)
    try:
        for x, y in batches:
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            grads = torch.autograd.grad(loss, [layer.head_mask for layer in layers])
            for score, grad in zip(scores, grads):
                score += grad.detach().abs()
    finally:
        for layer in layers:
            layer.head_mask.requires_grad_(False)
        model.train(training)
    return [s / (s.norm() + 1e-12) for s in scores]


def remove_heads(layers: Sequence[HeadAttention], importance: Sequence[torch.Tensor], fraction: float) -> int:
    """Remove ``round(fraction * heads)`` of the least important heads of every layer (each keeps
    at least one); the number of heads removed."""
    removed = 0
    for layer, score in zip(layers, importance):
        drop = min(layer.num_heads - 1, round(fraction * layer.num_heads))
        if drop <= 0:
            continue
        keep = sorted(torch.argsort(score, descending=True)[: layer.num_heads - drop].tolist())
        layer.keep_heads(keep)
        removed += drop
    return removed
