"""The one records -> points adapter (``search.study.scoring``) on hand-made records: which trials
count, where their numbers come from, the front, the pick and the closest infeasible trials."""

from __future__ import annotations

import math

import pytest

from objectives import metrics
from search.study import TrialRecord
from search.study.scoring import (
    closest_records,
    feasible_front,
    front_records,
    objectives_of,
    recommended_record,
    scored_points,
)


def record(number: int, val: float | None, size: float | None, *, broke: float = 0.0, state: str = "complete",
           values: tuple[float, ...] | None = None) -> TrialRecord:
    return TrialRecord(
        number=number, state=state, profile=None, config={},
        metrics={} if val is None else {metrics.VAL_ACC: val},
        ratios={} if size is None else {"size": size},
        violations={"accuracy_drop": broke}, stages=[], artifact=None, reason=None, seconds=1.0, values=values,
    )


def test_only_complete_trials_with_finite_positive_numbers_are_scored() -> None:
    records = [
        record(0, 95.5, 4.0),
        record(1, 95.0, math.nan),  # a NaN ratio: no point (the live view used to make one)
        record(2, None, 8.0),  # no val_acc: no point (the live view and bench raised KeyError)
        record(3, 95.2, 0.0),  # ratio 0 cannot sit on a log axis
        record(4, 95.9, 2.0, state="pruned"),
        record(5, None, None, values=(95.1, 6.0)),  # numbers from Optuna's objective values
    ]
    assert [p.id for p in scored_points("size", records)] == [0, 5]
    assert objectives_of("size", records[5]) == (95.1, 6.0)
    assert objectives_of("latency", records[0]) is None


def test_front_pick_and_closest_agree() -> None:
    records = [record(0, 95.8, 3.0), record(1, 95.2, 9.0), record(2, 95.1, 5.0), record(3, 90.0, 40.0, broke=5.0),
               record(4, 94.5, 20.0, broke=0.5), record(5, 95.0, math.nan)]
    assert [r.number for r in front_records("size", records)] == [0, 1]
    assert [p.id for p in feasible_front("size", records)] == [0, 1]
    pick = recommended_record("size", records)
    assert pick is not None and pick.number == 1
    assert [(r.number, broken) for r, broken in closest_records("size", records, 2)] == [
        (4, {"accuracy_drop": 0.5}), (3, {"accuracy_drop": 5.0})
    ]


@pytest.mark.parametrize("records", [[], [record(0, 90.0, 9.0, broke=1.0)]])
def test_no_feasible_trial_gives_no_pick(records: list[TrialRecord]) -> None:
    assert recommended_record("size", records) is None and front_records("size", records) == []


def test_progress_line_picks_the_recommended_trial_and_survives_half_written_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from objectives import Constraint
    from search.reporting import progress
    from search.study import StudyInfo

    info = StudyInfo(workload={}, target="size", constraint=Constraint(max_drop=1.0),
                     baseline={metrics.VAL_ACC: 96.0}, baseline_onnx="", artifacts_dir="")
    records = [record(0, 95.5, 4.0), record(1, None, 30.0), record(2, 95.2, 9.0)]
    monkeypatch.setattr(progress, "trial_records", lambda _: records)
    snap = progress.snapshot(SimpleNamespace(), info, total=5, jobs=1)  # type: ignore[arg-type]
    assert snap.best_ratio == 9.0 and snap.best_drop == pytest.approx(0.8)
