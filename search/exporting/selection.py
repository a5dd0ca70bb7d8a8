"""Which trial to export: the one ``--trial N`` names or ``--best`` recommends, refused with a
one-line reason when it has no model to export."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from objectives import DEFAULT_SELECTION, SELECTIONS, format_violations
from search.errors import UserError
from search.study import StudyInfo, TrialRecord
from search.study.scoring import closest_records, recommended_record, unvouched_note


@dataclasses.dataclass(frozen=True)
class Selection:
    """The trial to export and why it was chosen (shown to the user and kept in the sidecar)."""

    record: TrialRecord
    why: str


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

