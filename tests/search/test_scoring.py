"""The one records -> points adapter (``search.study.scoring``) on hand-made records: which trials
count, where their numbers come from, the front, the pick and the closest infeasible trials."""

from __future__ import annotations

import math

import pytest

from objectives import Constraint, metrics
from search.study import StudyInfo, TrialRecord
from search.study.scoring import (
    closest_records,
    feasible_front,
    front_records,
    held_on_test,
    objectives_of,
    recommended_record,
    scored_points,
)

INFO = StudyInfo(workload={}, target="size", constraint=Constraint(max_drop=1.0),
                 baseline={metrics.VAL_ACC: 96.0, metrics.TEST_ACC: 95.0}, baseline_onnx="",
                 artifacts_dir="")


def record(number: int, val: float | None, size: float | None, *, broke: float = 0.0, state: str = "complete",
           values: tuple[float, ...] | None = None, n_val: int | None = None,
           test: float | None = None) -> TrialRecord:
    """A hand-made record; with ``n_val``, paired counts behind its drop from the 96 % teacher."""
    m = {} if val is None else {metrics.VAL_ACC: val}
    if n_val is not None and val is not None:
        m.update({metrics.N_VAL: float(n_val), metrics.VAL_GAINED: 0.0,
                  metrics.VAL_LOST: float(round((96.0 - val) * n_val / 100))})
    if test is not None:
        m[metrics.TEST_ACC] = test
    return TrialRecord(
        number=number, state=state, profile=None, config={},
        metrics=m,
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
    pick = recommended_record(INFO, records, "point")
    assert pick is not None and pick.number == 1
    # No record carries paired counts: the default rule can vouch for none of them.
    assert recommended_record(INFO, records) is None
    assert [(r.number, broken) for r, broken in closest_records("size", records, 2)] == [
        (4, {"accuracy_drop": 0.5}), (3, {"accuracy_drop": 5.0})
    ]


@pytest.mark.parametrize("records", [[], [record(0, 90.0, 9.0, broke=1.0)]])
def test_no_feasible_trial_gives_no_pick(records: list[TrialRecord]) -> None:
    assert recommended_record(INFO, records, "point") is None and front_records("size", records) == []


def test_default_pick_is_the_most_compressed_trial_the_split_vouches_for() -> None:
    # On 2,000 validation images: 0.2 pt lost has an interval up to 0.47 pt, 0.8 pt up to 1.2 pt.
    records = [record(0, 95.8, 4.0, n_val=2000, test=95.0), record(1, 95.2, 9.0, n_val=2000, test=93.5),
               record(2, 90.0, 40.0, broke=5.0, n_val=2000, test=90.0)]
    assert recommended_record(INFO, records).number == 0
    assert recommended_record(INFO, records, "point").number == 1
    held = held_on_test(INFO, records)
    # Trial 1 lost 1.5 pt on test: the bound held for 1 of the 2 feasible trials and for the
    # one trial the split vouched for.
    assert (held.feasible, held.feasible_held, held.vouched, held.vouched_held) == (2, 1, 1, 1)
    assert "1 of 2 (50 %) of the trials within the bound on validation; 1 of 1 (100 %)" in held.describe(1.0)


def test_progress_line_picks_the_recommended_trial_and_survives_half_written_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from types import SimpleNamespace

    from objectives import Constraint
    from search.reporting import progress
    from search.study import StudyInfo

    info = StudyInfo(workload={}, target="size", constraint=Constraint(max_drop=1.0),
                     baseline={metrics.VAL_ACC: 96.0}, baseline_onnx="", artifacts_dir="")
    records = [record(0, 95.5, 4.0, n_val=10_000), record(1, None, 30.0), record(2, 95.2, 9.0, n_val=10_000)]
    monkeypatch.setattr(progress, "trial_records", lambda _: records)
    snap = progress.snapshot(SimpleNamespace(), info, total=5, jobs=1)  # type: ignore[arg-type]
    assert snap.best_ratio == 9.0 and snap.best_drop == pytest.approx(0.8)
