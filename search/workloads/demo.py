"""The demo teacher: the demo CNN trained on digits on first use and cached under
``studies/.cache``, one file per split and input size."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from search.errors import UserError
from search.workloads.recipes import recipe_for
from search.workloads.spec import DEMO_DATASET, DEMO_MODEL, WorkloadSpec, default_val_fraction
from search.workloads.teacher import build_for_data
from search.workloads.teacher_info import checkpoint_info
from search.workloads.training import save_checkpoint, train_teacher
from stages import TaskData

# Well under a minute on one CPU core, and 97-99 % test accuracy on digits.
DEMO_EPOCHS = 30


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


def demo_teacher(
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
