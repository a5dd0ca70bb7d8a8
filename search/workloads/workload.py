"""A workload: the teacher model, its train / validation / test data, the metric (top-1 accuracy)
and an example input, loaded from a ``WorkloadSpec`` (``search.workloads.spec``). With no model
and dataset, the demo workload (``search.workloads.demo``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.errors import UserError
from search.workloads.chance import refuse_weak_teacher
from search.workloads.datasets import check_dataset_name
from search.workloads.demo import demo_teacher
from search.workloads.fingerprint import display_name, workload_fingerprint
from search.workloads.models import check_model_name
from search.workloads.spec import WorkloadSpec
from search.workloads.task_data import load_grown_task_data
from search.workloads.teacher import build_for_data
from search.workloads.teacher_info import recorded_split
from search.workloads.training import evaluate_accuracy
from spaces import SearchSpace, default_space, demo_space
from stages import TaskData


@dataclasses.dataclass
class Workload:
    """The teacher (eval mode, on ``device``), its data, a display name and a fingerprint.

    ``fingerprint`` is a JSON-able dict identifying the workload; a study refuses to resume
    with a different one.
    """

    spec: WorkloadSpec
    teacher: nn.Module
    data: TaskData
    name: str
    fingerprint: dict[str, Any]
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def example_input(self) -> torch.Tensor:
        """One input, 1 x C x H x W, on CPU (for export and shape checks)."""
        return self.data.example_input(1)

    def evaluate(self, model: nn.Module) -> tuple[float, float]:
        """Top-1 accuracy in percent on (validation, test), on the model's own device."""
        return evaluate_accuracy(model, self.data.val), evaluate_accuracy(model, self.data.test)


def workload_space(spec: WorkloadSpec) -> SearchSpace:
    """The search space sized for ``spec``'s workload: the demo's (a distillation budget of tens
    of epochs, since its 1,437 images make ~10 optimizer steps an epoch) or the default space."""
    return demo_space() if spec.is_demo else default_space()


def load_workload(
    spec: WorkloadSpec,
    *,
    device: torch.device,
    studies_dir: Path = Path("studies"),
    progress: bool = True,
    untrained: bool = False,
) -> Workload:
    """Load the data and the teacher of ``spec`` (training the demo teacher on first use).

    Every model except the demo needs ``spec.weights``: the search compresses a trained teacher.
    A teacher near chance level is refused (``refuse_weak_teacher``) unless
    ``spec.allow_weak_teacher``. With ``untrained``, a model without ``spec.weights`` is its
    architecture with random weights (what ``inspect`` measures before anything is trained).
    """
    check_model_name(spec.model_name)
    check_dataset_name(spec.dataset_name)
    if spec.weights is not None and not spec.weights.is_file():
        what = "is a folder, not a file" if spec.weights.is_dir() else "does not exist"
        raise UserError(f"checkpoint {spec.weights} {what} (from --weights).")
    if spec.weights is None and not spec.is_demo and not untrained:
        raise UserError(
            f"--weights is required for model {spec.model_name} on {spec.dataset_name}; train one "
            f"with `mcaas-search train --model {spec.model_name} --dataset {spec.dataset_name} "
            "--out CHECKPOINT.pt`."
        )
    spec = recorded_split(spec)
    spec, data = load_grown_task_data(spec)
    if spec.is_demo:
        teacher, weights = demo_teacher(
            spec, data, device=device, studies_dir=studies_dir, progress=progress
        )
    else:
        weights = spec.weights
        teacher = build_for_data(spec, data, weights=weights)
    teacher.to(device).eval()
    if not spec.allow_weak_teacher and weights is not None:
        refuse_weak_teacher(evaluate_accuracy(teacher, data.val), data.num_classes)
    return Workload(
        spec=spec,
        teacher=teacher,
        data=data,
        name=display_name(spec),
        fingerprint=workload_fingerprint(spec, data, weights),
        device=device,
    )
