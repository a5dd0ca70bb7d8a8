"""The report's plain records (``search.reporting.gather``) and counts, on the hand-made study."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch

from objectives import Point, hypervolume
from search.reporting import figures, gather
from search.reporting.format import describe_counts, state_counts
from search.study import TrialRecord
from tests.search.study_fixtures import HandMadeStudy, load_hand_made

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def loaded(hand: HandMadeStudy) -> tuple[optuna.Study, list]:
    return load_hand_made(hand)


def test_pareto_record_tells_trials_apart(hand: HandMadeStudy, loaded: tuple[optuna.Study, list]) -> None:
    _, records = loaded
    data = gather.gather_pareto(hand.info, records, study_name="hand")
    by_number = {p.number: p for p in data.points}
    assert sorted(by_number) == [0, 1, 2, 3, 4, 7]  # pruned and failed trials have no metrics
    assert data.front == [0, 1, 3] and data.recommended == 3
    assert data.counts == {"feasible": 4, "infeasible": 2, "pruned": 1, "failed": 1, "running": 0, "waiting": 0}
    assert data.allowed_drop == 1.0
    assert by_number[4].drop == pytest.approx(1.4) and not by_number[4].feasible
    assert by_number[2].profile == "max-compression" and by_number[2].ratio == pytest.approx(40.0)
    assert "trial 3" in by_number[3].hover and "prune 0.75" in by_number[3].hover


def test_stage_progression_is_the_recommended_trials(hand: HandMadeStudy, loaded: tuple[optuna.Study, list]) -> None:
    data = gather.gather_stages(hand.info, loaded[1])
    assert data is not None and data.trial == 3 and data.why == "recommended"
    assert [s.stage for s in data.steps] == ["teacher", "prune", "distill", "export"]
    assert data.steps[0].val_acc == 96.0 and data.steps[-1].val_acc == pytest.approx(95.1)
    assert data.steps[1].latency_ms is None  # torch stages are not timed
    fig = figures.draw_stages(data)
    assert len(fig.data) == 4


def test_history_tracks_best_ratio_and_hypervolume(hand: HandMadeStudy, loaded: tuple[optuna.Study, list]) -> None:
    history = gather.gather_history(hand.info, loaded[1])
    assert history.numbers == list(range(8))
    assert history.best_ratio == pytest.approx([3.9, 8.0, 8.0, 12.0, 12.0, 12.0, 12.0, 12.0])
    assert all(b >= a for a, b in zip(history.hypervolume, history.hypervolume[1:]))
    feasible = [Point(n, 96.0 - d, r) for n, d, r in ((0, 0.2, 3.9), (1, 0.6, 8.0), (3, 0.9, 12.0), (7, 0.8, 5.0))]
    assert history.hypervolume[-1] == pytest.approx(hypervolume(feasible, ref_accuracy=95.0))
    assert history.ref_accuracy == 95.0


def test_importances_need_two_completed_trials(
    loaded: tuple[optuna.Study, list], tmp_path: Path
) -> None:
    importances = gather.gather_importances(loaded[0])
    assert isinstance(importances, dict)
    assert set(importances) <= {"prune.ratio", "distill.epochs", "quantize.mode"}
    assert math.isclose(sum(importances.values()), 1.0, abs_tol=1e-6)
    lonely = optuna.create_study(directions=["maximize", "maximize"])
    lonely.add_trial(loaded[0].trials[3])
    assert "needs at least 2 completed trials" in gather.gather_importances(lonely)


def test_a_queued_trial_counts_as_waiting_not_running() -> None:
    def record(number: int, state: str) -> TrialRecord:
        return TrialRecord(number, state, None, {}, {}, {}, {}, [], None, None, None, None)

    counts = state_counts([record(0, "running"), record(1, "waiting"), record(2, "waiting")])
    assert counts["running"] == 1 and counts["waiting"] == 2
    assert describe_counts(counts) == "3 trials: 0 feasible, 0 infeasible, 0 pruned, 0 failed, 1 running, 2 waiting"


def test_the_report_says_how_often_the_bound_held_on_test(
    hand: HandMadeStudy, loaded: tuple[optuna.Study, list]
) -> None:
    study, records = loaded
    data = gather.gather_report(study, hand.info, records)
    # Four trials are within the bound on validation; trial 1 (the weak model) lost 78 pt on test.
    assert data.held_on_test == (
        "held on test (360 images, drop <= 1.00 pt): 3 of 4 (75 %) of the trials within the bound "
        "on validation; 3 of 4 (75 %) of those the validation split vouched for"
    )
    assert data.recommended is not None and data.recommended.number == 3
    assert data.passed_over is None and data.unvouched is None
