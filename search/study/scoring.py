"""The one adapter from trial records to objective points and feasibility.

Every consumer (the report, the terminal tables, ``export --best``, the live progress line, the
benchmark and the running trials' view of the study) turns records into
``objectives.Point`` here, so they agree on which trials count, on the front and on the pick.
The Pareto logic itself is pure and lives in ``objectives``.

Four variants existed before; this module keeps the report's rule, for these reasons:

- *Which trials are scored.* Only completed trials whose validation accuracy and ratio on the
  target are finite, with a ratio > 0. ``LiveStudyView.feasible_front`` and the progress line
  only asked for the target in ``ratios`` (a NaN ratio or a missing ``val_acc`` then made a NaN
  point or a KeyError); the bench asked for a finite positive ratio but read ``val_acc``
  unguarded. The report's rule is the only one that never fails on a half-written record, and a
  ratio <= 0 cannot sit on a log axis or in a hypervolume.
- *Where the numbers come from.* The recorded metrics first, then Optuna's objective values
  ``(val_acc, ratio)`` (the same numbers, stored by the trial). Only the report had the
  fallback; it costs nothing and keeps records written before the metrics were saved usable.
- *Feasibility.* ``TrialRecord.feasible``: complete and every constraint value <= 0 (Optuna's
  convention). All four agreed.
- *Best.* The progress line took the feasible trial with the largest ratio (ties: higher
  accuracy); ``objectives.recommend`` picks the most compressed trial of the feasible front with
  the same tie-break, which is the same trial. The recommendation wins: one rule for "best".
  Which trials it may pick is the selection rule (``objectives.SELECTIONS``): by default only
  those whose paired interval on the validation drop lies within the bound (``confident``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence

from objectives import (
    DEFAULT_SELECTION,
    PairedDrop,
    Point,
    closest_infeasible,
    metrics,
    pareto_front,
    selection,
    tightest_vouched,
    vouched,
)
from search.study.records import StudyInfo, TrialRecord

Scope = StudyInfo | str  # a study (its target is used) or the name of a target


def _target(scope: Scope) -> str:
    return scope if isinstance(scope, str) else scope.target


def objectives_of(scope: Scope, record: TrialRecord) -> tuple[float, float] | None:
    """``(validation accuracy %, ratio on the target)`` of a completed trial, or None when the
    trial has no usable numbers (not complete, or its metrics are missing or not finite)."""
    if record.state != "complete":
        return None
    values = record.values or ()
    acc = record.metrics.get(metrics.VAL_ACC, values[0] if len(values) > 0 else math.nan)
    ratio = record.ratios.get(_target(scope), values[1] if len(values) > 1 else math.nan)
    try:
        acc, ratio = float(acc), float(ratio)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(acc) and math.isfinite(ratio) and ratio > 0):
        return None
    return acc, ratio


def scored_records(scope: Scope, records: Iterable[TrialRecord]) -> list[TrialRecord]:
    """The records that have usable numbers (see :func:`objectives_of`), in their order."""
    return [r for r in records if objectives_of(scope, r) is not None]


def scored_points(scope: Scope, records: Iterable[TrialRecord]) -> list[Point]:
    """One ``objectives.Point`` per completed trial with usable numbers (id = trial number)."""
    points = []
    for record in records:
        scored = objectives_of(scope, record)
        if scored is not None:
            points.append(Point(record.number, scored[0], scored[1], feasible=record.feasible))
    return points


def feasible_front(scope: Scope, records: Iterable[TrialRecord]) -> list[Point]:
    """The feasible Pareto front as points, sorted by ratio ascending."""
    return pareto_front(scored_points(scope, records))


def front_records(scope: Scope, records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The feasible Pareto front as records, sorted by ratio ascending."""
    by_number = {r.number: r for r in records}
    return [by_number[p.id] for p in feasible_front(scope, records)]


def drop_upper_bounds(records: Iterable[TrialRecord]) -> dict[int, float]:
    """The upper end of each trial's 95 % interval on its validation drop (points), by trial
    number, for the trials measured with the teacher's per-image results."""
    uppers = {}
    for record in records:
        paired = paired_val_drop(record.metrics)
        if paired is not None:
            uppers[record.number] = paired.interval()[1]
    return uppers


def recommended_record(
    info: StudyInfo, records: Sequence[TrialRecord], select: str = DEFAULT_SELECTION
) -> TrialRecord | None:
    """The trial to ship under the selection rule ``select`` (``objectives.SELECTIONS``; by
    default the most compressed feasible trial whose validation drop the split vouches for)."""
    allowed = info.constraint.allowed_drop(info.teacher_acc)
    pick = selection(select).pick(scored_points(info, records), drop_upper_bounds(records), allowed)
    return None if pick is None else next(r for r in records if r.number == pick.id)


def vouched_record(info: StudyInfo, records: Sequence[TrialRecord]) -> tuple[TrialRecord, float] | None:
    """What the validation split can vouch for (``objectives.tightest_vouched``): the feasible
    trial with the lowest upper end of its drop interval, and that upper end in points."""
    found = tightest_vouched(scored_points(info, records), drop_upper_bounds(records))
    if found is None:
        return None
    return next(r for r in records if r.number == found[0].id), found[1]


def unvouched_note(info: StudyInfo, records: Sequence[TrialRecord]) -> str:
    """One line for when feasible trials exist but the ``confident`` rule can vouch for none:
    the bound the data can vouch for instead, and what ``--select point`` would pick."""
    allowed = info.constraint.allowed_drop(info.teacher_acc)
    point = recommended_record(info, records, "point")
    fallback = (
        f"; --select point takes trial {point.number} ({point.ratio(info.target):.2f}x "
        f"{info.target}) on its measured drop"
        if point is not None
        else ""
    )
    found = vouched_record(info, records)
    if found is None:
        return (
            "no feasible trial was measured with the teacher's per-image results, so the "
            f"validation split cannot vouch for any{fallback}"
        )
    record, bound = found
    n = int(record.metrics[metrics.N_VAL])
    return (
        f"no feasible trial holds {allowed:.2f} pt at 95 % confidence on {n} validation images; "
        f"the data vouches for {bound:.2f} pt: trial {record.number} "
        f"({record.ratio(info.target):.2f}x {info.target}){fallback}"
    )


@dataclasses.dataclass(frozen=True)
class HeldOnTest:
    """How often being within the bound on validation held on the test split: of the feasible
    trials with a test accuracy, how many kept the drop within the bound on test, and the same
    for those the validation split vouched for (the ``confident`` rule's candidates)."""

    feasible: int
    feasible_held: int
    vouched: int
    vouched_held: int
    n_test: int

    def describe(self, allowed: float) -> str:
        def share(held: int, of: int) -> str:
            return f"{held} of {of} ({100 * held / of:.0f} %)" if of else "none"

        return (
            f"held on test ({self.n_test} images, drop <= {allowed:.2f} pt): "
            f"{share(self.feasible_held, self.feasible)} of the trials within the bound on "
            f"validation; {share(self.vouched_held, self.vouched)} of those the validation split vouched for"
        )


def held_on_test(info: StudyInfo, records: Sequence[TrialRecord]) -> HeldOnTest | None:
    """The share of feasible-on-validation trials whose test drop also stayed within the bound
    (see ``HeldOnTest``); None when the teacher or no feasible trial has a test accuracy."""
    teacher_test = info.baseline.get(metrics.TEST_ACC)
    if teacher_test is None:
        return None
    allowed = info.constraint.allowed_drop(info.teacher_acc)
    uppers = drop_upper_bounds(records)
    counts = [0, 0, 0, 0]
    n_test = 0
    for point, record in zip(scored_points(info, records), scored_records(info, records)):
        test_acc = record.metrics.get(metrics.TEST_ACC)
        if not point.feasible or test_acc is None:
            continue
        held = float(teacher_test) - float(test_acc) <= allowed
        sure = vouched(point, uppers, allowed)
        counts[0] += 1
        counts[1] += held
        counts[2] += sure
        counts[3] += held and sure
        n_test = int(record.metrics.get(metrics.N_TEST, info.baseline.get(metrics.N_TEST, 0)))
    if not counts[0]:
        return None
    return HeldOnTest(*counts, n_test=n_test)


def closest_records(
    scope: Scope, records: Sequence[TrialRecord], n: int = 3
) -> list[tuple[TrialRecord, dict[str, float]]]:
    """The ``n`` infeasible scored trials closest to feasible, each with the bounds it broke."""
    by_number = {r.number: r for r in records}
    infeasible = [r for r in scored_records(scope, records) if not r.feasible]
    pairs = closest_infeasible(((r.number, r.violations) for r in infeasible), n)
    return [(by_number[number], broken) for number, broken in pairs]


def accuracy_drop(info: StudyInfo, record: TrialRecord) -> float | None:
    """Validation accuracy lost against the teacher, in points (None without numbers)."""
    scored = objectives_of(info, record)
    return None if scored is None else info.teacher_acc - scored[0]


def paired_val_drop(m: Mapping[str, float]) -> PairedDrop | None:
    """The validation drop in the metrics ``m`` of a model, paired against the teacher on the
    same images (its 95 % interval: ``.interval()``), or None for metrics measured without the
    teacher's per-image results (written before they were recorded, or not complete)."""
    try:
        return PairedDrop(int(m[metrics.N_VAL]), int(m[metrics.VAL_LOST]), int(m[metrics.VAL_GAINED]))
    except (KeyError, TypeError, ValueError):
        return None


__all__ = [
    "HeldOnTest",
    "Scope",
    "accuracy_drop",
    "closest_records",
    "drop_upper_bounds",
    "feasible_front",
    "front_records",
    "held_on_test",
    "objectives_of",
    "paired_val_drop",
    "recommended_record",
    "scored_points",
    "scored_records",
    "unvouched_note",
    "vouched_record",
]
