"""Verifying an export: load the written model back in its format's runtime and re-measure its
test accuracy on the study's own test split, which must match the accuracy the trial stored."""

from __future__ import annotations

import math
import os
from pathlib import Path

from objectives import metrics
from search.errors import UserError, first_line
from search.exporting.sources import export_format
from search.study import StudyInfo, TrialRecord
from search.workloads import WorkloadSpec, load_task_data
from stages import Split, TaskData

EVAL_BATCH_SIZE = 512  # the batch size trials are measured with (Context.eval_batch_size)


def workload_data(info: StudyInfo) -> TaskData:
    """The study's dataset, split exactly as the search split it (seed, validation fraction and
    image size come from the stored workload). The one place that turns a stored workload dict
    back into data; read defensively, since older studies may lack keys."""
    # The fingerprint holds the spec's fields that shape the data; an older one may lack the
    # split's fraction, which was then 0.1 for every dataset.
    spec = WorkloadSpec.from_dict({"val_fraction": 0.1, **info.workload})
    try:
        return load_task_data(spec)
    except UserError as exc:
        raise UserError(f"cannot load the study's test split to verify the export: {exc}") from None


def measure_accuracy(path: Path, fmt: str, split: Split) -> float:
    """Top-1 test accuracy in percent of the file at ``path``, measured the way the search
    measured it, in the format's runtime (ONNX Runtime on the CPU, or the torch.export program)."""
    runtime = export_format(fmt).runtime
    try:
        loaded = runtime.load(path, _threads())
    except Exception as exc:  # each runtime raises its own exception types for a bad file
        raise UserError(f"{runtime.name} cannot load {str(path)!r}: {first_line(exc)}") from None
    return runtime.accuracy(loaded, split, EVAL_BATCH_SIZE)


def _threads() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(4, cores or 1))


def verify_test_accuracy(
    path: Path, info: StudyInfo, *, fmt: str = "onnx", data: TaskData | None = None
) -> float:
    """Load the model at ``path`` back and re-measure its test accuracy (percent) on the study's
    test split (``data``, loaded from the stored workload when not given)."""
    data = data if data is not None else workload_data(info)
    return measure_accuracy(path, fmt, data.test)


def check_accuracy(record: TrialRecord, measured: float, n_test: int) -> float | None:
    """The stored test accuracy, if ``measured`` matches it; a UserError otherwise. None when the
    trial has none: a search measures test accuracy only for trials within its accuracy bound on
    validation, so the one measured here is the first.

    Matching means within one test sample: float summation order may differ with the thread
    count the search ran with, which can flip an arg-max tie, but nothing more.
    """
    stored = record.metrics.get(metrics.TEST_ACC)
    if stored is None:
        return None
    if not math.isfinite(float(stored)):
        raise UserError(f"trial {record.number} stored a test accuracy that is not a number: {stored}")
    stored_n = record.metrics.get(metrics.N_TEST)
    if stored_n is not None and int(stored_n) != n_test:
        raise UserError(
            f"the study's test split now has {n_test} samples but trial {record.number} was "
            f"measured on {int(stored_n)}: the data changed since the search"
        )
    one_sample = 100.0 / max(n_test, 1)
    if abs(measured - float(stored)) > one_sample + 1e-9:
        raise UserError(
            f"verification failed: the exported model scores {measured:.2f} % test accuracy, "
            f"but trial {record.number} stored {float(stored):.2f} % ({n_test} test samples); "
            "the artifact or the data changed since the search"
        )
    return float(stored)

