"""What the search compresses: the teacher model, its dataset and the demo workload.

``workload`` builds a ``Workload`` from a ``WorkloadSpec``; ``datasets`` (with its helpers
``splits`` and ``formats``) loads data by name; ``models`` builds teachers; ``checkpoints`` reads them;
``training`` trains a teacher; ``analysis`` is the pre-flight analysis, ``recipes`` the training
recipes. Each module is public, and mcaas-search imports a name from the module that defines it
(``from search.workloads.workload import Workload``); the package re-exports the names a caller
outside mcaas-search most often needs, for short imports.
"""

from search.workloads.checkpoints import load_state, read_checkpoint
from search.workloads.datasets import (
    DATASETS,
    Dataset,
    DatasetRequest,
    check_dataset_name,
    load_dataset,
)
from search.workloads.models import (
    DemoCNN,
    ModelFile,
    build_model,
    check_fits,
    check_model_name,
)
from search.workloads.training import evaluate_accuracy, save_checkpoint, train_teacher
from search.workloads.workload import (
    DEMO_DATASET,
    DEMO_EPOCHS,
    DEMO_MODEL,
    Workload,
    WorkloadSpec,
    load_task_data,
    load_workload,
    pick_device,
)

__all__ = [
    "DATASETS",
    "DEMO_DATASET",
    "DEMO_EPOCHS",
    "DEMO_MODEL",
    "Dataset",
    "DatasetRequest",
    "DemoCNN",
    "ModelFile",
    "Workload",
    "WorkloadSpec",
    "build_model",
    "check_dataset_name",
    "check_fits",
    "check_model_name",
    "evaluate_accuracy",
    "load_dataset",
    "load_state",
    "load_task_data",
    "load_workload",
    "pick_device",
    "read_checkpoint",
    "save_checkpoint",
    "train_teacher",
]
