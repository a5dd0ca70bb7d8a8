"""The JSON sidecar written beside an exported model: what it is, how good, how to feed it and
run it, and what made it."""

from __future__ import annotations

import datetime
import importlib.metadata
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from objectives import metrics
from search.exporting.selection import Selection
from search.exporting.sources import export_format
from search.study import StudyInfo
from search.workloads import file_sha256
from stages import TaskData

SIDECAR_SUFFIX = ".json"
VERSIONED_PACKAGES = ("mcaas-search", "torch", "onnx", "onnxruntime", "optuna")


def library_versions(packages: Sequence[str] = VERSIONED_PACKAGES) -> dict[str, str]:
    """Installed versions of the packages an exported model depends on."""
    versions = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def input_description(path: Path, fmt: str, data: TaskData) -> dict[str, Any]:
    """Input name, shape and dtype the model expects, and how raw inputs become that tensor."""
    description: dict[str, Any] = {
        "shape": [1, *data.input_shape],
        "dtype": "float32",
        "layout": "NCHW",
        "batch": "dynamic (first axis)",
        "preprocessing": data.preprocessing,
        "num_classes": data.num_classes,
    }
    description.update(export_format(fmt).io(path))
    return description


def _session_settings(measured: dict[str, float]) -> dict[str, Any]:
    """The ONNX Runtime session settings the model's latency was measured with (its best thread
    count): run it so and it runs as fast as it was measured."""
    return {
        "provider": "CPUExecutionProvider",
        "intra_op_num_threads": int(measured.get(metrics.LATENCY_THREADS, 1)),
        "inter_op_num_threads": 1,
        "execution_mode": "ORT_SEQUENTIAL",
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "latency_ms": measured.get(metrics.LATENCY_MS),
    }


def sidecar(
    info: StudyInfo,
    selection: Selection,
    *,
    study_name: str,
    fmt: str,
    model_name: str,
    input_info: dict[str, Any],
    n_test: int,
    measured_test_acc: float,
    files: Sequence[Path],
) -> dict[str, Any]:
    """The JSON written beside the model: what it is, how good, how to feed it, what made it.
    ``files`` are the files the model is (the graph first, then any weights beside it): their
    bytes add up to its size, and each gets its own digest."""
    r = selection.record
    entry = export_format(fmt)
    broken = {k: v for k, v in r.violations.items() if v > 0}
    listed = [{"name": f.name, metrics.BYTES: f.stat().st_size, "sha256": file_sha256(f)} for f in files]
    return {
        "model": model_name,
        "format": fmt,
        metrics.BYTES: sum(f[metrics.BYTES] for f in listed),
        "sha256": listed[0]["sha256"],
        "files": listed,
        "study": study_name,
        "trial": r.number,
        "selected_by": selection.why,
        "profile": r.profile,
        "feasible": r.feasible,
        "broken_bounds": broken,
        "target": info.target,
        "constraint": {**info.constraint.to_dict(), "text": info.constraint.describe()},
        "settings": r.config,
        "metrics": r.metrics,
        "ratios": r.ratios,
        "constraint_values": r.violations,
        "stages": r.stages,
        "teacher": info.baseline,
        "workload": info.workload,
        "input": input_info,
        "verification": {
            "test_acc_stored": r.metrics.get(metrics.TEST_ACC),
            "test_acc_measured": measured_test_acc,
            metrics.N_TEST: n_test,
            "runtime": entry.runtime.label,
        },
        "session": _session_settings(r.metrics) if entry.measured else None,
        "source_artifact": r.artifact if entry.measured else None,
        "versions": library_versions(),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }

