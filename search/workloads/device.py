"""The torch device the teacher and the trials run on, from ``--device``."""

from __future__ import annotations

import torch

from search.errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; an explicit device must exist here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name} requested but CUDA is not available here; use cpu.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(
                f"device {name} does not exist; this machine has {torch.cuda.device_count()} GPU(s)."
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"device {name} requested but MPS is not available here; use cpu.")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {name!r}; expected auto, cpu, cuda or cuda:N.")
    return device
