"""What ``--json`` prints: plain JSON-able views of studies and trials (NaN and infinity become
null, which JSON lacks), shared by the commands and the service's API."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Sequence
from typing import Any

from objectives import DEFAULT_SELECTION
from search.reporting.format import export_command, settings_summary, state_counts, teacher_note
from search.study import StudyInfo, TrialRecord
from search.study.scoring import accuracy_drop, front_records, paired_val_drop, recommended_record

__all__ = ["finite", "study_json", "trial_json", "write_json"]


def finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def write_json(data: Any) -> None:
    """``data`` as JSON alone on stdout (messages and progress go to stderr), for scripts."""
    json.dump(finite(data), sys.stdout, indent=2)
    sys.stdout.write("\n")


def trial_json(info: StudyInfo, record: TrialRecord) -> dict[str, Any]:
    """One trial: its record, whether it is feasible, its validation drop (lost points positive,
    as the tables print it) and its settings in one line."""
    data = dataclasses.asdict(record)
    data.update(feasible=record.feasible, drop=accuracy_drop(info, record), settings=settings_summary(record.config))
    return data


def study_json(
    name: str, info: StudyInfo, records: Sequence[TrialRecord], *, storage: str | None,
    select: str = DEFAULT_SELECTION,
) -> dict[str, Any]:
    """A study as the search's result: its goal, its teacher, its trials by state, its feasible
    Pareto front, the trial recommended under ``select`` and the command that exports it."""
    pick = recommended_record(info, records, select)
    return {
        "study": name,
        "storage": storage,
        "target": info.target,
        "constraint": info.constraint.describe(),
        "teacher": info.baseline,
        "trials": state_counts(records),
        "front": [trial_json(info, r) for r in front_records(info, records)],
        "recommended": None if pick is None else trial_json(info, pick),
        "teacher_note": None if pick is None else teacher_note(info, pick, paired_val_drop(pick.metrics)),
        "export": None if pick is None else export_command(name, storage, trial=pick.number),
    }
