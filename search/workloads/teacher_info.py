"""The JSON ``train`` writes beside a teacher checkpoint (``checkpoint_info``: its metrics and
how to reproduce them), and reading it back for a later command's spec (``recorded_info``)."""

from __future__ import annotations

import json
from typing import Any

import torch

from search.workloads.spec import WorkloadSpec
from search.workloads.training import metrics_path
from stages import TaskData


def checkpoint_info(spec: WorkloadSpec, data: TaskData, metrics: dict[str, Any]) -> dict[str, Any]:
    """The JSON written beside a trained checkpoint: its metrics and how to reproduce them."""
    return {
        **metrics,
        "model": spec.model_name,
        "dataset": spec.dataset_name,
        "data_root": str(spec.data_root.resolve()) if spec.data_root is not None else None,
        "image_size": spec.image_size,
        "seed": spec.seed,
        "val_fraction": spec.val_fraction,
        "preprocessing": data.preprocessing,
        "torch": torch.__version__,
    }


def recorded_info(spec: WorkloadSpec) -> dict[str, Any] | None:
    """What ``train`` recorded beside ``spec.weights`` for the same model and dataset, or None."""
    if spec.weights is None:
        return None
    try:
        info = json.loads(metrics_path(spec.weights).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or "preprocessing" not in info:
        return None
    if info.get("model") != spec.model_name or info.get("dataset") != spec.dataset:
        return None
    return info
