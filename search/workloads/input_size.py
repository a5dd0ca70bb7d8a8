"""The input size a teacher is fed at, resolved once from the flags, what ``train`` recorded
and the model family's minimum, so that every later stage feeds the model as it was trained."""

from __future__ import annotations

import dataclasses

from search.workloads.datasets import DATASETS
from search.workloads.recipes import recipe_for
from search.workloads.spec import WorkloadSpec
from search.workloads.teacher_info import recorded_info


def with_input_size(spec: WorkloadSpec) -> WorkloadSpec:
    """``spec`` with the input size its teacher is fed at: ``--image-size`` when given, else the
    size recorded beside ``--weights`` by ``train`` (so every later stage feeds the model as it was
    trained), else the model family's minimum (``Recipe.min_input_size``) when the dataset's
    images are smaller. The resolved size goes into the fingerprint, the checkpoint's JSON and
    the export sidecar's preprocessing."""
    if spec.image_size is not None or spec.dataset not in DATASETS:
        return spec
    recorded = _recorded_image_size(spec)
    if recorded is not None:
        return dataclasses.replace(spec, image_size=recorded[0])
    minimum = recipe_for(spec.model_name).min_input_size
    native = DATASETS[spec.dataset].native_size
    if minimum is not None and native is not None and native < minimum:
        return dataclasses.replace(spec, image_size=minimum)
    return spec


def _recorded_image_size(spec: WorkloadSpec) -> tuple[int | None] | None:
    """``(size,)`` as ``train`` recorded it beside ``spec.weights`` for the same model and
    dataset (``(None,)``: trained at the native size); None when nothing is recorded."""
    info = recorded_info(spec)
    if info is None:
        return None
    size = info.get("image_size")
    return (size,) if size is None or isinstance(size, int) else None
