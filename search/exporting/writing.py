"""Exporting a trial: its model written in a format from its stored file (no re-training),
verified, and moved into place with its sidecar only once verified."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import optuna

from objectives import metrics
from search.errors import UserError
from search.exporting.selection import Selection
from search.exporting.sidecar import SIDECAR_SUFFIX, input_description, sidecar
from search.exporting.sources import export_format, stored_file
from search.exporting.verification import check_accuracy, verify_test_accuracy, workload_data
from search.study import StudyInfo
from stages import TaskData


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


def check_out_path(out: Path) -> None:
    """Refuse an ``--out`` that is a folder or whose folder does not exist."""
    if out.is_dir():
        raise UserError(f"--out {str(out)!r} is a folder; expected a file path such as {out / 'model.onnx'}")
    if not out.parent.is_dir():
        raise UserError(f"--out folder {str(out.parent)!r} does not exist; create it first")


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

