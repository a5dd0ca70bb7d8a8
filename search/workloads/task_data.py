"""A workload's data: the dataset of a spec with its seeded validation split, grown (with the
default fraction) until the split can vouch for the accuracy bound."""

from __future__ import annotations

import dataclasses
import math

from objectives import images_to_decide
from search.workloads.datasets import load_dataset
from search.workloads.spec import WorkloadSpec
from search.workloads.teacher_info import recorded_info
from stages import TaskData

# The most of the training data a default validation split grows to (``grown_val_fraction``):
# the teacher and every student keep at least 70 % to train on.
MAX_GROWN_VAL_FRACTION = 0.3


def load_task_data(spec: WorkloadSpec) -> TaskData:
    """The dataset of ``spec`` with its seeded validation split."""
    return load_dataset(spec.dataset_name, spec.dataset_request())


def load_grown_task_data(spec: WorkloadSpec) -> tuple[WorkloadSpec, TaskData]:
    """``spec``'s data, with its validation split grown as ``grown_val_fraction`` says: the spec
    the data was loaded with (its ``val_fraction`` the grown one) and the data."""
    data = load_task_data(spec)
    grown = grown_val_fraction(spec, data)
    if grown is None:
        return spec, data
    spec = dataclasses.replace(spec, val_fraction=grown)
    return spec, load_task_data(spec)


def grown_val_fraction(spec: WorkloadSpec, data: TaskData) -> float | None:
    """The validation fraction that lets ``data``'s split vouch for ``spec.decide_drop`` points
    (``objectives.images_to_decide``), at most ``MAX_GROWN_VAL_FRACTION``; None to keep
    ``spec.val_fraction`` (no ``decide_drop``, the split already decides it, or ``--weights``
    were trained by ``train`` on the rest of this very split: a larger split would hold images
    the teacher learned). Depends only on the data's size and the bound, so a rerun with the
    same flags resumes the same study."""
    if spec.decide_drop is None or (spec.weights is not None and recorded_info(spec) is not None):
        return None
    needed = images_to_decide(spec.decide_drop)
    if needed is None or len(data.val) >= needed:
        return None
    pool = len(data.train) + len(data.val)
    fraction = min(MAX_GROWN_VAL_FRACTION, math.ceil(1000 * needed / pool) / 1000)
    assert spec.val_fraction is not None
    return fraction if fraction > spec.val_fraction else None
