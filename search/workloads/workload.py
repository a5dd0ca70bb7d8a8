"""A workload: the teacher model, its train / validation / test data, the metric (top-1 accuracy)
and an example input, built from a ``WorkloadSpec`` (``search.commands`` makes one from the
flags). With no model and dataset, the demo workload: a small CNN on scikit-learn's digits,
trained once and cached under ``studies/.cache``."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from objectives import images_to_decide
from search.errors import UserError
from search.workloads.checkpoints import file_sha256, load_state, read_checkpoint
from search.workloads.datasets import (
    DATASETS,
    DatasetRequest,
    check_dataset_name,
    load_dataset,
)
from search.workloads.models import (
    ModelFile,
    build_model,
    check_fits,
    check_model_name,
    model_file_sha256,
)
from search.workloads.recipes import recipe_for
from search.workloads.training import (
    evaluate_accuracy,
    metrics_path,
    save_checkpoint,
    train_teacher,
)
from spaces import SearchSpace, default_space, demo_space
from stages import TaskData

DEMO_MODEL = "demo"
DEMO_DATASET = "digits"
# Well under a minute on one CPU core, and 97-99 % test accuracy on digits.
DEMO_EPOCHS = 30


# digits has 1437 training images: 10 % would be 144, one image 0.7 points of accuracy, too
# coarse for a 1-point bound; a quarter (359) halves the noise.
DEFAULT_VAL_FRACTION = {"digits": 0.25}
# The most of the training data a default validation split grows to (``grown_val_fraction``):
# the teacher and every student keep at least 70 % to train on.
MAX_GROWN_VAL_FRACTION = 0.3


def default_val_fraction(dataset: str | None) -> float:
    return DEFAULT_VAL_FRACTION.get(dataset or "", 0.1)


_PATH_FIELDS = ("weights", "data_root")


@dataclasses.dataclass(frozen=True)
class WorkloadSpec:
    """What the user asked for; ``None`` model and dataset mean the demo workload."""

    model: str | None = None
    weights: Path | None = None
    dataset: str | None = None
    data_root: Path | None = None
    image_size: int | None = None
    download: bool = False
    allow_pickle: bool = False
    allow_weak_teacher: bool = False  # go on with a teacher near chance level (see weak_teacher)
    seed: int = 0
    val_fraction: float | None = None  # None: the dataset's default (DEFAULT_VAL_FRACTION)
    # With the default val_fraction: grow it (see grown_val_fraction) until the split can vouch
    # for this many points of drop. None (and any explicit val_fraction): the fraction as it is.
    decide_drop: float | None = None

    def __post_init__(self) -> None:
        if self.model is not None and not self.model.strip():
            raise UserError("--model is empty; name a model, or leave --model out for the demo CNN.")
        if self.val_fraction is None:
            dataset = self.dataset or (DEMO_DATASET if self.model_name == DEMO_MODEL else None)
            object.__setattr__(self, "val_fraction", default_val_fraction(dataset))

    @property
    def model_name(self) -> str:
        return self.model or DEMO_MODEL

    @property
    def dataset_name(self) -> str:
        """The dataset, defaulting to digits only for the demo model."""
        if self.dataset is not None:
            return self.dataset
        if self.model_name == DEMO_MODEL:
            return DEMO_DATASET
        raise UserError(
            f"--dataset is required for model {self.model_name}; "
            f"valid datasets: {', '.join(DATASETS)}."
        )

    @property
    def is_demo(self) -> bool:
        """The built-in demo: demo CNN on digits with a cached teacher (no --weights)."""
        return (
            self.model_name == DEMO_MODEL
            and self.dataset_name == DEMO_DATASET
            and self.weights is None
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (paths as strings), as ``from_dict`` reads them back."""
        out = dataclasses.asdict(self)
        for key in _PATH_FIELDS:
            out[key] = str(out[key]) if out[key] is not None else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkloadSpec:
        """The spec ``to_dict`` wrote, or one from any mapping holding some of its keys (a
        stored workload fingerprint): keys that are no field are ignored, missing ones take
        their defaults."""
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        for key in _PATH_FIELDS:
            if key in values:
                values[key] = Path(values[key]) if values[key] else None
        return cls(**values)

    def dataset_request(self) -> DatasetRequest:
        return DatasetRequest(
            data_root=self.data_root,
            image_size=self.image_size,
            download=self.download,
            seed=self.seed,
            val_fraction=self.val_fraction,
        )


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


def workload_space(spec: WorkloadSpec) -> SearchSpace:
    """The search space sized for ``spec``'s workload: the demo's (a distillation budget of tens
    of epochs, since its 1,437 images make ~10 optimizer steps an epoch) or the default space."""
    return demo_space() if spec.is_demo else default_space()


def grown_val_fraction(spec: WorkloadSpec, data: TaskData) -> float | None:
    """The validation fraction that lets ``data``'s split vouch for ``spec.decide_drop`` points
    (``objectives.images_to_decide``), at most ``MAX_GROWN_VAL_FRACTION``; None to keep
    ``spec.val_fraction`` (no ``decide_drop``, the split already decides it, or ``--weights``
    were trained by ``train`` on the rest of this very split: a larger split would hold images
    the teacher learned). Depends only on the data's size and the bound, so a rerun with the
    same flags resumes the same study."""
    if spec.decide_drop is None or (spec.weights is not None and _recorded_info(spec) is not None):
        return None
    needed = images_to_decide(spec.decide_drop)
    if needed is None or len(data.val) >= needed:
        return None
    pool = len(data.train) + len(data.val)
    fraction = min(MAX_GROWN_VAL_FRACTION, math.ceil(1000 * needed / pool) / 1000)
    assert spec.val_fraction is not None
    return fraction if fraction > spec.val_fraction else None


def load_task_data(spec: WorkloadSpec) -> TaskData:
    """The dataset of ``spec`` with its seeded validation split."""
    return load_dataset(spec.dataset_name, spec.dataset_request())


def build_for_data(spec: WorkloadSpec, data: TaskData, *, weights: Path | None) -> nn.Module:
    """``spec``'s architecture for ``data``, with ``weights`` loaded, checked to fit (on CPU).

    A checkpoint holding a whole pickled module (only with ``allow_pickle``) is used as it is.
    """
    loaded = read_checkpoint(weights, allow_pickle=spec.allow_pickle) if weights else None
    if isinstance(loaded, nn.Module):
        model = loaded
    else:
        channels, height, width = data.input_shape
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


def demo_cache_path(studies_dir: Path, spec: WorkloadSpec) -> Path:
    """Where the demo teacher is cached: one file per split (seed, fraction) and input size, so a
    teacher is never evaluated on a test split it was trained on."""
    parts = [f"{DEMO_MODEL}-{DEMO_DATASET}"]
    if spec.seed != 0:
        parts.append(f"seed{spec.seed}")
    if spec.val_fraction != default_val_fraction(DEMO_DATASET):
        parts.append(f"val{spec.val_fraction:g}")
    if spec.image_size is not None:
        parts.append(f"{spec.image_size}px")
    return studies_dir / ".cache" / ("-".join(parts) + ".pt")


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


def _recorded_info(spec: WorkloadSpec) -> dict[str, Any] | None:
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


def _recorded_image_size(spec: WorkloadSpec) -> tuple[int | None] | None:
    """``(size,)`` as ``train`` recorded it beside ``spec.weights`` for the same model and
    dataset (``(None,)``: trained at the native size); None when nothing is recorded."""
    info = _recorded_info(spec)
    if info is None:
        return None
    size = info.get("image_size")
    return (size,) if size is None or isinstance(size, int) else None


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


def _demo_teacher(
    spec: WorkloadSpec, data: TaskData, *, device: torch.device, studies_dir: Path, progress: bool
) -> tuple[nn.Module, Path]:
    """The cached demo teacher, trained and cached first if the cache is missing or unreadable."""
    path = demo_cache_path(studies_dir, spec)
    if path.is_file():
        try:
            return build_for_data(spec, data, weights=path), path
        except UserError as exc:
            if progress:
                print(f"cached demo teacher unusable ({exc}); retraining it", file=sys.stderr, flush=True)
    if progress:
        print(
            f"training the demo teacher (demo CNN on digits, {DEMO_EPOCHS} epochs, a few "
            f"seconds) and caching it at {path}",
            file=sys.stderr,  # a message, not a result: stdout may be a command's JSON
            flush=True,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    model = build_for_data(spec, data, weights=None)
    # One thread is the fastest way to train a model this small on a CPU.
    metrics = train_teacher(
        model,
        data,
        epochs=DEMO_EPOCHS,
        recipe=recipe_for(DEMO_MODEL),
        device=device,
        progress=False,
        seed=spec.seed,
        threads=1 if device.type == "cpu" else None,
    )
    save_checkpoint(model, path, checkpoint_info(spec, data, metrics))
    return model.cpu(), path


def workload_fingerprint(spec: WorkloadSpec, data: TaskData, weights: Path | None) -> dict[str, Any]:
    """JSON-able identity of the workload: model, data, split and the teacher weights' hash."""
    ref = ModelFile.parse(spec.model_name)
    return {
        "model": ref.absolute() if ref is not None else spec.model_name,
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


def _display_name(spec: WorkloadSpec) -> str:
    if spec.is_demo:
        return "demo"
    ref = ModelFile.parse(spec.model_name)
    model = ref.display_name if ref is not None else spec.model_name
    return f"{model}-{spec.dataset_name}"


def chance_margin(num_classes: int) -> tuple[float, float]:
    """``(chance, bound)`` in percent: the accuracy of guessing among ``num_classes`` classes,
    and the accuracy a teacher must exceed to be worth compressing: chance plus 5 points or a
    tenth of the way from chance to 100 %, whichever is more (19 % for 10 classes)."""
    chance = 100.0 / max(1, num_classes)
    return chance, chance + max(5.0, (100.0 - chance) / 10)


def weak_teacher(val_acc: float, num_classes: int) -> str | None:
    """Why a teacher at ``val_acc`` % validation accuracy is too close to chance to compress
    (every ratio against it would be meaningless), or None when it is not."""
    chance, bound = chance_margin(num_classes)
    if val_acc >= bound:
        return None
    return (
        f"the teacher reaches {val_acc:.2f} % validation accuracy, within a few points of chance "
        f"({chance:.2f} % for {num_classes} classes; below {bound:.2f} % counts as chance level)"
    )


def refuse_weak_teacher(val_acc: float, num_classes: int) -> None:
    """Stop with one line before any work when the teacher is near chance level."""
    why = weak_teacher(val_acc, num_classes)
    if why is not None:
        raise UserError(
            f"{why}: compressing it would measure nothing. Train it longer or with another recipe "
            "(mcaas-search train --epochs N), or pass --allow-weak-teacher to go on anyway"
        )


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
    data = load_task_data(spec)
    grown = grown_val_fraction(spec, data)
    if grown is not None:
        spec = dataclasses.replace(spec, val_fraction=grown)
        data = load_task_data(spec)
    if spec.is_demo:
        teacher, weights = _demo_teacher(
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
        name=_display_name(spec),
        fingerprint=workload_fingerprint(spec, data, weights),
        device=device,
    )

