"""The JSON ``train`` writes beside a teacher checkpoint (``checkpoint_info``: its metrics and
how to reproduce them), and reading it back for a later command's spec (``recorded_info``)."""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import torch

from search.errors import UserError
from search.workloads.models import canonical_model_name
from search.workloads.spec import WorkloadSpec
from search.workloads.training import metrics_path
from stages import TaskData


def checkpoint_info(
    spec: WorkloadSpec, data: TaskData, metrics: dict[str, Any], *, command: str | None = None
) -> dict[str, Any]:
    """The JSON written beside a trained checkpoint: its metrics and how to reproduce them
    (``command``: the command line that trained it, where one did)."""
    return {
        **({"command": command} if command is not None else {}),
        **metrics,
        "model": canonical_model_name(spec.model_name),
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
    recorded = info.get("model")
    if not isinstance(recorded, str) or info.get("dataset") != spec.dataset:
        return None
    if canonical_model_name(recorded) != canonical_model_name(spec.model_name):
        return None
    return info


def recorded_split(spec: WorkloadSpec) -> WorkloadSpec:
    """``spec`` on the split ``train`` recorded for ``spec.weights``: with the default fraction
    (``spec.decide_drop`` set: no ``--val-fraction`` given) the recorded fraction is taken, as
    ``train`` may have grown it. Refuses ``--weights`` trained on another split than the one asked
    for (another ``--seed``, or another ``--val-fraction`` given): the images the search would
    validate and test on would include some the teacher trained on, and every accuracy it
    reports would be flattered."""
    info = recorded_info(spec)
    if info is None:
        return spec
    seed, fraction = info.get("seed"), info.get("val_fraction")
    if not isinstance(seed, int) or not isinstance(fraction, (int, float)):
        return spec  # recorded before the split was: nothing to hold it to
    assert spec.val_fraction is not None
    if seed == spec.seed and spec.decide_drop is not None:
        return dataclasses.replace(spec, val_fraction=float(fraction))
    if seed == spec.seed and math.isclose(fraction, spec.val_fraction):
        return spec
    raise UserError(
        f"--weights {spec.weights} were trained by `train` on the split of --seed {seed} "
        f"--val-fraction {fraction:g} (recorded in {metrics_path(spec.weights).name}), but this "
        f"run splits with --seed {spec.seed} --val-fraction {spec.val_fraction:g}: it would "
        "validate and test on images the teacher trained on. Pass "
        f"--seed {seed} --val-fraction {fraction:g}, or train a teacher on the split you want."
    )
