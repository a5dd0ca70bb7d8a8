"""Reading teacher checkpoints safely: ``torch.load(weights_only=True)`` first, a whole pickled
module only when the user allows it, and a strict load that names what does not fit, all as
one-line ``UserError``s."""

from __future__ import annotations

import hashlib
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.errors import UserError, first_line

__all__ = ["file_sha256", "load_state", "read_checkpoint"]


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in blocks (checkpoints can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path: Path, *, allow_pickle: bool = False) -> Mapping[str, torch.Tensor] | nn.Module:
    """A state_dict (plain, or under ``state_dict`` / ``model``), or with ``allow_pickle`` a
    whole pickled module. Anything else, or an unreadable file, is a one-line ``UserError``."""
    if not path.is_file():
        raise UserError(f"checkpoint {path} {'is a folder, not a file' if path.is_dir() else 'does not exist'}.")
    try:
        with warnings.catch_warnings():
            # Bytes that are no checkpoint make torch warn about the pickle protocol first.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if allow_pickle:
            obj = _load_pickled(path)
        elif "Unsupported global" in str(exc):
            # weights_only refuses anything but tensors and plain containers: a pickled module.
            raise UserError(
                f"checkpoint {path} holds more than tensors (e.g. a pickled module), which "
                "torch.load(weights_only=True) refuses; pass --allow-pickle if you trust the file."
            ) from None
        else:
            raise UserError(f"cannot read checkpoint {path}: {_unpickler_reason(exc)}") from None
    except Exception as exc:  # zip/EOF/format errors all mean "not a torch checkpoint"
        raise UserError(f"cannot read checkpoint {path}: {first_line(exc, typed=True)}") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict"):
            if key in obj and isinstance(obj[key], (Mapping, nn.Module)):
                obj = obj[key]
                break
    if isinstance(obj, nn.Module):
        return obj
    if not isinstance(obj, Mapping) or not obj:
        raise UserError(
            f"checkpoint {path} is not a state_dict (found {type(obj).__name__}); expected a dict "
            "of tensors, optionally under 'state_dict' or 'model'."
        )
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(
            f"checkpoint {path} is not a state_dict: {len(bad)} entries are not tensors "
            f"(e.g. {', '.join(map(str, bad[:3]))})."
        )
    # Checkpoints saved from DataParallel / DDP prefix every key with "module.".
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def _load_pickled(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # the pickle may need classes that are not importable here
        raise UserError(f"cannot unpickle checkpoint {path}: {first_line(exc, typed=True)}") from None


def _unpickler_reason(exc: BaseException) -> str:
    """The one informative line of torch's long weights-only error message."""
    for line in str(exc).splitlines():
        if "WeightsUnpickler error:" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].strip()
            if detail:
                return f"not a torch checkpoint ({detail})"
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = next((line for line in lines if not line.startswith(("Weights only", "Please", "Check"))), "")
    return f"not a torch checkpoint ({reason[:200]})" if reason else "not a torch checkpoint"


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Load ``state`` into ``model`` strictly; a misfit names missing, unexpected and mis-shaped
    keys (a few of each) in one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                more = f", ... ({len(keys)} in all)" if len(keys) > 3 else ""
                parts.append(f"{label}: {', '.join(keys[:3])}{more}")
        raise UserError(f"checkpoint {source} does not fit the model: {'; '.join(parts)}.")
    model.load_state_dict(state, strict=True)
