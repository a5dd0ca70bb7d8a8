"""A teacher built for its data: the spec's architecture sized to the dataset, its weights
loaded, and checked to take the data's inputs and give its classes."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from search.workloads.checkpoints import load_state, read_checkpoint
from search.workloads.models import build_model, check_fits
from search.workloads.spec import WorkloadSpec
from stages import TaskData


def build_for_data(spec: WorkloadSpec, data: TaskData, *, weights: Path | None) -> nn.Module:
    """``spec``'s architecture for ``data``, with ``weights`` loaded, checked to fit (on CPU).

    A checkpoint holding a whole pickled module (only with ``allow_pickle``) is used as it is.
    Without ``weights``, the initial weights come from ``spec.seed``: the same spec trains the same
    teacher, and the caller's random state is left as it was.
    """
    loaded = read_checkpoint(weights, allow_pickle=spec.allow_pickle) if weights else None
    if isinstance(loaded, nn.Module):
        model = loaded
    else:
        channels, height, width = data.input_shape
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed)
            model = build_model(
                spec.model_name,
                in_channels=channels,
                num_classes=data.num_classes,
                image_size=height if height == width else None,
            )
        if loaded is not None:
            load_state(model, loaded, source=str(weights))
    check_fits(
        model,
        data.example_input(1),
        data.num_classes,
        model_name=spec.model_name,
        dataset=spec.dataset_name,
    )
    return model
