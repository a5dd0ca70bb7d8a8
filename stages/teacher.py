"""The teacher's logits on the training split: computed once per workload, cached on disk per
study, and shared by every trial's distillation (the teacher never changes between trials)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
from torch import nn

from stages._context import Split
from stages._graph import on_device_in_eval
from stages.files import atomic_path


def teacher_logits(
    teacher: nn.Module, split: Split, *, device: torch.device | str, batch_size: int = 512
) -> torch.Tensor:
    """The teacher's outputs on ``split.x`` in order: float32 on CPU, N x classes.

    Runs in eval mode under ``torch.inference_mode``, on ``device``; the teacher's device and mode
    are put back afterwards (``on_device_in_eval``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, but got {batch_size}.")
    device = torch.device(device)
    chunks: list[torch.Tensor] = []
    with on_device_in_eval(teacher, device), torch.inference_mode():
        for start in range(0, split.x.shape[0], batch_size):
            batch = split.x[start : start + batch_size].to(device, non_blocking=True)
            chunks.append(teacher(batch).float().cpu())
    if not chunks:
        raise ValueError("cannot compute teacher logits on an empty split.")
    # inference_mode tensors cannot be saved for backward; a plain clone can be used anywhere.
    return torch.cat(chunks).clone()


def save_logits(path: str | os.PathLike[str], logits: torch.Tensor) -> None:
    """Write ``logits`` (as float32 on CPU) to ``path`` atomically, so a parallel trial reading the
    cache never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(logits.detach().float().cpu().contiguous(), tmp)


def load_logits(path: str | os.PathLike[str], expected_rows: int) -> torch.Tensor | None:
    """The cached logits at ``path``, or ``None`` when there is no usable cache (missing file,
    unreadable file, or not a 2-D float tensor with ``expected_rows`` rows), so the caller
    recomputes them."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        logits = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError):
        return None
    if (
        not isinstance(logits, torch.Tensor)
        or logits.dim() != 2
        or logits.shape[0] != expected_rows
        or not logits.is_floating_point()
    ):
        return None
    return logits.float()
