"""Export a finished trial: write its model in a format of ``EXPORT_FORMATS`` from its stored
artifact (no re-training), write a JSON sidecar, and verify the written model by loading it back
in the format's runtime and re-measuring test accuracy on the workload's test split.

Everything is written in a hidden folder beside ``--out`` and moved into place only after the
model passed verification, so a failed export leaves nothing half-written behind.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna

from objectives import DEFAULT_SELECTION, SELECTIONS, format_violations, metrics
from search.errors import UserError, first_line
from search.study import StudyInfo, TrialRecord, trial_record
from search.study.artifacts import fetch_trial_file
from search.study.scoring import closest_records, recommended_record, unvouched_note
from search.study.storage import STUDIES_DIR
from search.workloads.checkpoints import file_sha256
from search.workloads.workload import WorkloadSpec, load_task_data
from stages import EXPORT_FORMATS, ExportFormat, Split, TaskData

FORMATS = tuple(EXPORT_FORMATS)
SIDECAR_SUFFIX = ".json"
EVAL_BATCH_SIZE = 512  # the batch size trials are measured with (Context.eval_batch_size)
VERSIONED_PACKAGES = ("mcaas-search", "torch", "onnx", "onnxruntime", "optuna")


@dataclasses.dataclass(frozen=True)
class Selection:
    """The trial to export and why it was chosen (shown to the user and kept in the sidecar)."""

    record: TrialRecord
    why: str


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What ``export_trial`` wrote and what verification measured."""

    path: Path
    sidecar: Path
    fmt: str
    bytes: int  # of all its files
    stored_test_acc: float | None  # None: the search did not measure it (see check_accuracy)
    measured_test_acc: float
    n_test: int
    files: tuple[Path, ...] = ()  # the model's files, ``path`` first, then what lies beside it


def fetch_files(study: optuna.Study, selection: Selection) -> Selection:
    """``selection`` with its trial's ONNX file on this machine: where its worker wrote it, else
    fetched from the study's artifact store (a trial another machine ran; see ``--artifacts``)."""
    record = selection.record
    if not record.artifact:
        return selection
    local = fetch_file(study, record.number, record.artifact)
    return dataclasses.replace(selection, record=dataclasses.replace(record, artifact=str(local)))


def fetch_file(study: optuna.Study, number: int, recorded: str) -> Path:
    """Trial ``number``'s file ``recorded`` on this machine (see ``fetch_trial_file``), fetched
    into this machine's folder of the study."""
    into = STUDIES_DIR / study.study_name / "trials" / str(number)
    return fetch_trial_file(study, number, Path(recorded), into)


def select_trial(
    info: StudyInfo,
    records: Sequence[TrialRecord],
    *,
    study_name: str,
    trial: int | None,
    best: bool,
    select: str = DEFAULT_SELECTION,
) -> Selection:
    """The trial ``--trial N`` or ``--best`` names, refusing any that has no model to export.

    ``--best`` is the recommended trial under the selection rule ``select`` (see
    :func:`best_trial`).
    """
    if best:
        record, why = best_trial(info, records, study_name=study_name, select=select)
    else:
        if trial is None:
            raise UserError("name the trial to export with --trial N, or pass --best")
        by_number = {r.number: r for r in records}
        if trial not in by_number:
            known = f"trials are numbered 0..{max(by_number)}" if by_number else "it has no trials"
            raise UserError(f"study {study_name!r} has no trial {trial}; {known}")
        record, why = by_number[trial], f"--trial {trial}"
    _check_exportable(record)
    return Selection(record, why)


def best_trial(
    info: StudyInfo, records: Sequence[TrialRecord], *, study_name: str, select: str
) -> tuple[TrialRecord, str]:
    """``--best``: the recommended trial under ``select`` (``objectives.SELECTIONS``; by default
    the most compressed feasible trial whose validation drop the split vouches for) and why it
    was chosen; a UserError saying what the data allows when there is none."""
    pick = recommended_record(info, records, select)
    if pick is not None:
        return pick, f"--best: {SELECTIONS[select].describe}"
    if recommended_record(info, records, "point") is not None:
        raise UserError(f"--best: {unvouched_note(info, records)}; or export one with --trial N")
    closest = closest_records(info, records, 1)
    hint = (
        f"closest: trial {closest[0][0].number}, which broke {format_violations(closest[0][1])}"
        if closest
        else "no trial has completed yet"
    )
    raise UserError(
        f"--best: no trial of study {study_name!r} is feasible "
        f"({info.constraint.describe()}); {hint}; export one explicitly with --trial N"
    )


def _check_exportable(record: TrialRecord) -> None:
    reason = f": {record.reason}" if record.reason else ""
    if record.state == "failed":
        raise UserError(f"trial {record.number} failed, so it has no model to export{reason}")
    if record.state == "pruned":
        raise UserError(
            f"trial {record.number} was stopped early (pruned), so it has no model to export{reason}"
        )
    if record.state != "complete":
        raise UserError(f"trial {record.number} is still {record.state}; wait for it to finish")
    if not record.artifact:
        raise UserError(f"trial {record.number} recorded no artifact path; nothing to export")


def export_format(fmt: str) -> ExportFormat:
    """The ``EXPORT_FORMATS`` entry ``fmt``, or a UserError listing the formats."""
    if fmt not in EXPORT_FORMATS:
        raise UserError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    return EXPORT_FORMATS[fmt]


def stored_file(record: TrialRecord, fmt: str, study: optuna.Study | None = None) -> Path:
    """The trial's stored file that format ``fmt`` is made from, on this machine (fetched from
    ``study``'s artifact store when another machine ran the trial), or a UserError saying why it
    is not available. The measured ONNX file is the trial's ``artifact``; any other stored file
    lies beside it under its format's ``file_name``."""
    stored = export_format(fmt).stored()
    mode = record.config.get("quantize.mode", "none")
    if not stored.quantized and mode not in ("none", None):
        raise UserError(
            f"format {fmt} is not available for trial {record.number}: it is quantized ({mode}), "
            "and quantized models ship as ONNX only; use --format onnx"
        )
    artifact = Path(record.artifact or "")
    path = artifact if stored.measured else artifact.parent / stored.file_name
    if study is not None and record.artifact:
        path = fetch_file(study, record.number, str(path))
    if path.is_file():
        return path
    if not stored.measured:
        raise UserError(
            f"format {fmt} is not available for trial {record.number}: the search saved no "
            f"{stored.file_name} for it; use --format onnx"
        )
    raise UserError(
        f"trial {record.number}'s {fmt} artifact {str(path)!r} is missing "
        "(moved or deleted since the search?)"
    )


def torch_artifact_of(study: optuna.Study, number: int) -> str | None:
    """The trial's optional torch.export (.pt2) file (its record's ``torch_artifact``)."""
    for trial in study.get_trials(deepcopy=False):
        if trial.number == number:
            return trial_record(trial).torch_artifact or None
    return None


def check_out_path(out: Path) -> None:
    """Refuse an ``--out`` that is a folder or whose folder does not exist."""
    if out.is_dir():
        raise UserError(f"--out {str(out)!r} is a folder; expected a file path such as {out / 'model.onnx'}")
    if not out.parent.is_dir():
        raise UserError(f"--out folder {str(out.parent)!r} does not exist; create it first")


# ---------------------------------------------------------------------------------------------
# Verification


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


# ---------------------------------------------------------------------------------------------
# Sidecar


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


# ---------------------------------------------------------------------------------------------
# The export itself


def export_trial(
    info: StudyInfo,
    selection: Selection,
    *,
    study_name: str,
    out: Path,
    fmt: str = "onnx",
    study: optuna.Study | None = None,
    load_data: Callable[[StudyInfo], TaskData] = workload_data,
) -> ExportResult:
    """Write the selected trial's model in ``fmt`` to ``out`` (made from its stored file, no
    re-training; fetched from ``study``'s artifact store when another machine ran it) and its
    sidecar to ``out + .json``, after checking the model scores the stored test accuracy.

    Everything is written in a hidden folder beside ``out`` and moved into place only once
    verified: a failed export leaves nothing half-written behind."""
    check_out_path(out)
    entry = export_format(fmt)
    source = stored_file(selection.record, fmt, study)
    data = load_data(info)
    sidecar_path = out.with_name(out.name + SIDECAR_SUFFIX)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        written = entry.make(source, staging / out.name)
        measured = verify_test_accuracy(written[0], info, fmt=fmt, data=data)
        stored = check_accuracy(selection.record, measured, len(data.test))
        meta = sidecar(
            info,
            selection,
            study_name=study_name,
            fmt=fmt,
            model_name=out.name,
            input_info=input_description(written[0], fmt, data),
            n_test=len(data.test),
            measured_test_acc=measured,
            files=written,
        )
        (staging / sidecar_path.name).write_text(json.dumps(meta, indent=2, sort_keys=False, default=str) + "\n")
        # The model's own files first, its sidecar last: a sidecar names a complete model.
        for path in (*written[1:], written[0], staging / sidecar_path.name):
            os.replace(path, out.parent / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(
        path=out,
        sidecar=sidecar_path,
        fmt=fmt,
        bytes=meta[metrics.BYTES],
        stored_test_acc=stored,
        measured_test_acc=measured,
        n_test=len(data.test),
        files=tuple(out.parent / path.name for path in written),
    )
