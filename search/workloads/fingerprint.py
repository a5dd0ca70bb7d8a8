"""A workload's identity: the JSON-able fingerprint a study refuses to resume without, and the
name it is shown by."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from search.workloads.checkpoints import file_sha256
from search.workloads.models import ModelFile, canonical_model_name, model_file_sha256
from search.workloads.spec import WorkloadSpec
from stages import TaskData


def workload_fingerprint(spec: WorkloadSpec, data: TaskData, weights: Path | None) -> dict[str, Any]:
    """JSON-able identity of the workload: model, data, split and the teacher weights' hash."""
    return {
        "model": canonical_model_name(spec.model_name),
        "model_file_sha256": model_file_sha256(spec.model_name),
        "dataset": spec.dataset_name,
        "data_root": str(spec.data_root.resolve()) if spec.data_root is not None else None,
        "image_size": spec.image_size,
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "seed": spec.seed,
        "val_fraction": spec.val_fraction,
        "weights_sha256": file_sha256(weights) if weights is not None else None,
    }


def display_name(spec: WorkloadSpec) -> str:
    """``demo``, or model and dataset (``resnet18-cifar10``; a model file as ``file.factory``)."""
    if spec.is_demo:
        return "demo"
    ref = ModelFile.parse(spec.model_name)
    model = ref.display_name if ref is not None else spec.model_name
    return f"{model}-{spec.dataset_name}"
