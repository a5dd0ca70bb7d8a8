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
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from objectives import (
    PairedDrop,
    Point,
    closest_infeasible,
    metrics,
    pareto_front,
    recommend,
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


def recommended_record(scope: Scope, records: Sequence[TrialRecord]) -> TrialRecord | None:
    """The trial to ship (``objectives.recommend``: the most compressed feasible front trial)."""
    pick = recommend(scored_points(scope, records))
    return None if pick is None else next(r for r in records if r.number == pick.id)


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
    "Scope",
    "accuracy_drop",
    "closest_records",
    "feasible_front",
    "front_records",
    "objectives_of",
    "paired_val_drop",
    "recommended_record",
    "scored_points",
    "scored_records",
]
