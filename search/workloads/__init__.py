"""What the search compresses: the teacher model, its dataset and the demo workload.

Import these names from here (``from search.workloads import Workload, load_workload``), never from
the modules behind them, which may move; ``tests/test_layering.py`` enforces it. Only a test may
reach into a module, for a name it tests that is not listed here.

Behind this face: ``spec`` (the ``WorkloadSpec``), ``workload`` (loading a ``Workload``),
``task_data`` (the data and its validation split), ``teacher`` (a teacher built for its data),
``demo`` (the cached demo teacher), ``input_size``, ``teacher_info`` (the JSON beside a
checkpoint), ``fingerprint``, ``chance`` (the weak-teacher guard), ``device``; ``datasets`` (with
``splits`` and ``formats``), ``models`` (with ``vit``), ``checkpoints``, ``training``, ``recipes``,
and ``analysis``, the pre-flight analysis of a teacher.
"""

from search.workloads.analysis import VERSION as ANALYSIS_VERSION
from search.workloads.analysis import Analysis, analyze, val_split_note
from search.workloads.chance import chance_margin, weak_teacher
from search.workloads.checkpoints import file_sha256, load_state, read_checkpoint
from search.workloads.datasets import (
    DATASETS,
    MAX_SEED,
    Dataset,
    DatasetRequest,
    check_dataset_name,
    dataset_at,
    load_dataset,
)
from search.workloads.demo import DEMO_EPOCHS, demo_cache_path
from search.workloads.device import pick_device
from search.workloads.input_size import with_input_size
from search.workloads.models import (
    DemoCNN,
    ModelFile,
    build_model,
    canonical_model_name,
    check_fits,
    check_model_name,
)
from search.workloads.recipes import OPTIMIZERS, Recipe, recipe_family, recipe_for
from search.workloads.spec import DEMO_DATASET, DEMO_MODEL, WorkloadSpec
from search.workloads.task_data import load_grown_task_data, load_task_data
from search.workloads.teacher import build_for_data
from search.workloads.teacher_info import checkpoint_info, recorded_split
from search.workloads.training import (
    DEFAULT_EPOCHS,
    MAX_DEFAULT_EPOCHS,
    MIN_DEFAULT_STEPS,
    available_cores,
    check_training_settings,
    default_epochs,
    evaluate_accuracy,
    metrics_path,
    save_checkpoint,
    train_teacher,
)
from search.workloads.workload import Workload, load_workload, workload_space

__all__ = [
    "ANALYSIS_VERSION",
    "DATASETS",
    "DEFAULT_EPOCHS",
    "DEMO_DATASET",
    "DEMO_EPOCHS",
    "DEMO_MODEL",
    "MAX_DEFAULT_EPOCHS",
    "MAX_SEED",
    "MIN_DEFAULT_STEPS",
    "OPTIMIZERS",
    "Analysis",
    "Dataset",
    "DatasetRequest",
    "DemoCNN",
    "ModelFile",
    "Recipe",
    "Workload",
    "WorkloadSpec",
    "analyze",
    "available_cores",
    "build_for_data",
    "build_model",
    "canonical_model_name",
    "chance_margin",
    "check_dataset_name",
    "check_fits",
    "check_model_name",
    "check_training_settings",
    "checkpoint_info",
    "dataset_at",
    "default_epochs",
    "demo_cache_path",
    "evaluate_accuracy",
    "file_sha256",
    "load_dataset",
    "load_state",
    "load_grown_task_data",
    "load_task_data",
    "load_workload",
    "metrics_path",
    "pick_device",
    "read_checkpoint",
    "recipe_family",
    "recipe_for",
    "recorded_split",
    "save_checkpoint",
    "train_teacher",
    "val_split_note",
    "weak_teacher",
    "with_input_size",
    "workload_space",
]
