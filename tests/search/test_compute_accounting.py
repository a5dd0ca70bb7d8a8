"""Compute accounting: a trial's training samples seen, read from its stage records (a stopped
trial's included), 0 for one that did not train or whose journal predates the figure."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from objectives import Constraint
from search.study import StudyInfo, TrialRecord, trial_record, trial_records
from search.trials import worker
from search.trials.trial import TrialStopped
from stages import Context, PipelineConfig


def _trial(state: TrialState, stages: list[dict[str, Any]]) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=state,
        values=[90.0, 3.0] if state == TrialState.COMPLETE else None,
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0, 1)},
        user_attrs=TrialRecord(stages=stages).to_attrs(),
    )


def _distill(**metrics: float) -> dict[str, Any]:
    return {"stage": "distill", "seconds": 2.0, "metrics": {"params": 10.0, **metrics}}


MEASURE = {"stage": "measure", "seconds": 0.1, "metrics": {}}


@pytest.mark.parametrize(
    ("state", "stages", "seen"),
    [
        (TrialState.COMPLETE, [{"stage": "prune", "seconds": 1.0, "metrics": {}}, _distill(samples_seen=4096.0), MEASURE], 4096),
        (TrialState.PRUNED, [_distill(samples_seen=1024.0)], 1024),  # stopped during distillation
        (TrialState.PRUNED, [], 0),  # skipped before training
        (TrialState.COMPLETE, [{"stage": "export", "seconds": 1.0, "metrics": {}}, MEASURE], 0),  # int8 alone
        (TrialState.COMPLETE, [_distill(epochs=2.0), MEASURE], 0),  # a journal from before the figure
    ],
)
def test_samples_seen_comes_from_the_distill_stage_record(
    state: TrialState, stages: list[dict[str, Any]], seen: int
) -> None:
    assert trial_record(_trial(state, stages)).samples_seen == seen


def test_a_studys_compute_is_the_sum_over_its_trials() -> None:
    study = optuna.create_study(directions=["maximize", "maximize"])
    study.add_trials([
        _trial(TrialState.COMPLETE, [_distill(samples_seen=300.0)]),
        _trial(TrialState.PRUNED, [_distill(samples_seen=100.0)]),
        _trial(TrialState.FAIL, []),
    ])
    assert sum(r.samples_seen for r in trial_records(study)) == 400


def test_a_stopped_trial_keeps_the_samples_it_saw_in_the_study(
    tiny_context: Context, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = _distill(samples_seen=640.0)

    def stopped(*_: object, **__: object) -> None:
        raise TrialStopped("stopped at 25% of distillation", saved_s=3.0, stages=[seen])

    monkeypatch.setattr(worker, "run_trial", stopped)
    study = optuna.create_study(directions=["maximize", "maximize"])
    info = StudyInfo(workload={}, target="size", constraint=Constraint(max_drop=1.0), baseline={},
                     baseline_onnx="", artifacts_dir=str(tmp_path))
    setup = worker.WorkerSetup(study, info, tiny_context, None, None, tmp_path, None)  # type: ignore[arg-type]
    state, _ = worker.run_and_record(study.ask(), setup, PipelineConfig, profile=None)
    [record] = trial_records(study)
    assert (state, record.state, record.samples_seen) == ("pruned", "pruned", 640)
    assert record.saved_s == 3.0 and record.stages == [seen]
