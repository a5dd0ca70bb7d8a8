"""What an export is made from: the format by name, and the trial's stored file that format is
made from, on this machine (fetched from the study's artifact store when another machine ran
the trial)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna

from search.errors import UserError
from search.exporting.selection import Selection
from search.study import TrialRecord, trial_record
from search.study.artifacts import fetch_trial_file
from search.study.storage import STUDIES_DIR
from stages import EXPORT_FORMATS, ExportFormat

FORMATS = tuple(EXPORT_FORMATS)


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


def torch_artifact_of(study: optuna.Study, number: int) -> str | None:
    """The trial's optional torch.export (.pt2) file (its record's ``torch_artifact``)."""
    for trial in study.get_trials(deepcopy=False):
        if trial.number == number:
            return trial_record(trial).torch_artifact or None
    return None

