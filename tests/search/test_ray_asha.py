"""``--strategy asha`` on the Ray backend: Ray Tune's own ``ASHAScheduler`` on the project's rungs
(grace period 120 steps, reduction factor 3), fed the promotion rule's score, with the rule's
plausibility half applied by the trial itself.

Fast tests: the scheduler judges at exactly the rungs a trial is judged at for any top budget;
Ray's scheduler and the trial's plausibility stop together decide as the pure rule
(``objectives.should_promote``) on random rung results; the judge's report and reasons. One slow
test runs four fixed configs, one at a time, through the CLI on a local Ray: which are stopped,
at which rung, what they record, and that a promoted trial counts no step twice.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import optuna
import pytest
from hypothesis import given
from hypothesis import strategies as st
from ray import tune
from ray.tune.schedulers import ASHAScheduler, TrialScheduler
from ray.tune.trainable import wrap_function

from objectives import Calibration, RungResult, promotion_score, rung_steps, should_promote
from search.backends.ray_tune import driver
from search.backends.ray_tune import trials as ray_trials
from search.backends.ray_tune.searcher import SEARCHER_STUDY
from search.backends.ray_tune.trials import ASHA_METRIC, ASHA_TIME, AshaJudge, finishing_stopped_trials
from search.study import StudyInfo, open_storage, trial_records
from search.trials.trial import Scoring, rung_ladder, top_budget_steps
from spaces import Fixed, FloatRange, SearchSpace
from tests.support import RunCli


@pytest.mark.parametrize("first", [40, 120])
@pytest.mark.parametrize("top", [121, 160, 240, 359, 360, 361, 1079, 1080, 1081, 9720, 30000])
def test_the_schedulers_rungs_are_those_a_trial_is_judged_at(top: int, first: int) -> None:
    scheduler = driver.asha_scheduler(top, first)

    assert type(scheduler) is ASHAScheduler and len(scheduler._brackets) == 1  # ASHA, not Hyperband
    assert (scheduler._time_attr, scheduler.metric, scheduler._max_t) == (ASHA_TIME, ASHA_METRIC, top)
    # A trial is judged at each rung below its budget (at most ``top``), never at its end.
    milestones = sorted(int(milestone) for milestone, _ in scheduler._brackets[0]._rungs if milestone < top)
    assert milestones == list(rung_steps(first, top)[:-1])
    assert milestones == [r for r in rung_ladder(first) if r < top]  # the Optuna workers' rungs
    with pytest.raises(ValueError, match="top budget"):
        driver.asha_scheduler(None, first)


def test_top_budget_is_the_most_steps_a_trial_trains() -> None:
    space = SearchSpace({"distill.epochs": FloatRange(2.0, 60.0, log=True)})
    assert top_budget_steps(space, 1000) == 60 * (1000 // 128)
    boosted = SearchSpace({"distill.epochs": Fixed(10.0), "distill.size_boost": Fixed(4.0)})
    assert top_budget_steps(boosted, 1000) == 10 * 4 * 7


def _reporting_to(scheduler: ASHAScheduler, trial: Any) -> Callable[[dict[str, float]], None]:
    """``tune.report`` as a Tune function trial sees it: the scheduler decides on the result, and
    a stop ends the report with SystemExit."""

    def report(metrics: dict[str, float]) -> None:
        if scheduler.on_trial_result(None, trial, metrics) == TrialScheduler.STOP:  # type: ignore[arg-type]
            raise SystemExit(0)

    return report


# Few distinct values as well as any: ties at the quantile cutoff are where a rule can differ.
_ACCURACY = st.sampled_from([10.0, 50.0, 90.0]) | st.floats(0.0, 100.0)
_RATIO = st.sampled_from([1.5, 3.0, 9.0]) | st.floats(1.0, 60.0)
_CALIBRATIONS = (
    Calibration.default(120, 1080),
    Calibration(slope=0.8, intercept=15.0, spread=2.5, pairs=6, residual_sd=1.2),
)


@given(
    trials=st.lists(st.lists(st.tuples(_ACCURACY, _RATIO), min_size=2, max_size=2), min_size=1, max_size=14),
    required=st.floats(0.0, 100.0),
    calibration=st.sampled_from(_CALIBRATIONS),
)
def test_rays_scheduler_with_the_trials_bound_stop_is_the_promotion_rule(
    trials: list[list[tuple[float, float]]], required: float, calibration: Calibration
) -> None:
    """Trials arrive one after another (asynchronous: each judged against those before it) and
    each reports at the rungs 120 and 360 while it is promoted; the decision the trial acts on
    (``AshaJudge``: Ray's stop, or its own for the bound) must be ``should_promote``'s."""
    scheduler = driver.asha_scheduler(1080, 120)
    earlier: dict[int, list[RungResult]] = {120: [], 360: []}
    for number, per_rung in enumerate(trials):
        trial = SimpleNamespace(trial_id=str(number))
        scheduler.on_trial_add(None, trial)  # type: ignore[arg-type]
        judge = AshaJudge()
        with mock.patch.object(ray_trials.tune, "report", _reporting_to(scheduler, trial)):
            for steps, (accuracy, ratio) in zip((120, 360), per_rung, strict=True):
                result = RungResult(accuracy, ratio)
                why = judge(steps, result, earlier[steps], required, calibration)
                expected = should_promote(result, earlier[steps], required_accuracy=required, calibration=calibration)
                assert (why is None) == expected, (steps, result, earlier[steps], why)
                earlier[steps].append(result)
                if why is not None:
                    break


def test_asha_judge_reports_the_rule_score_and_stops_where_ray_or_the_bound_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reported: list[dict[str, float]] = []
    stop = {"now": False}

    def report(metrics: dict[str, float]) -> None:
        reported.append(metrics)
        if stop["now"]:
            raise SystemExit(0)  # what a Tune function trial's report raises once it is stopped

    monkeypatch.setattr(ray_trials.tune, "report", report)
    calibration = Calibration.default(120, 480)
    good = RungResult(90.0, 5.0)
    judge = AshaJudge()
    assert judge(120, good, [], 80.0, calibration) is None
    assert reported == [{ASHA_TIME: 120, ASHA_METRIC: promotion_score(good, 80.0, calibration)}]
    # Below the bound: stopped by the rule's plausibility half, though reported to ASHA too (so
    # it counts at the rung, as it does in the Optuna workers' rule).
    assert "cannot plausibly reach" in str(judge(120, RungResult(10.0, 9.0), [], 80.0, calibration))
    assert len(reported) == 2 and not judge.stopped_by_ray
    stop["now"] = True
    why = judge(360, good, [], 80.0, calibration)
    assert judge.stopped_by_ray and why is not None and "Ray Tune's ASHAScheduler" in why


# ---------------------------------------------------------------------------------------------
# On a local Ray

# Longer than Tune waits for a trial's thread before reusing its actor (2 s), and than it waits
# before an actor it stops at the end of a run goes (none): how long a stopped trial's recording
# may take on a loaded machine.
SLOW_RECORD_S = 3.0
# The four trials of the test below take about 25 s on a loaded 2-core machine.
RUN_LIMIT_S = 120


def _rung_then_record(config: dict[str, Any], folder: str) -> None:
    """A trial that reports one rung through ``AshaJudge`` and, once the scheduler decided, takes
    ``SLOW_RECORD_S`` to record what it was told (as ``ray_trial`` records itself in the study),
    then ends as ``ray_trial`` does."""
    judge = AshaJudge()
    why = judge(120, RungResult(90.0, config["ratio"]), [], 0.0, Calibration.default(120, 160))
    time.sleep(SLOW_RECORD_S)
    outcome = "stopped" if judge.stopped_by_ray else "promoted"
    Path(folder, f"{config['ratio']}.{outcome}").write_text(why or "")
    if judge.stopped_by_ray:
        raise SystemExit(0)


@pytest.mark.slow
def test_a_trial_stopped_at_a_rung_records_itself_before_its_actor_is_reused_or_goes(
    tmp_path: Path, local_ray: None
) -> None:
    trainable = finishing_stopped_trials(wrap_function(tune.with_parameters(_rung_then_record, folder=str(tmp_path))))
    ratios = [4.0, 2.0, 8.0, 3.0]  # one at a time: promoted, stopped (actor reused), promoted, stopped (the last)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"ratio": tune.grid_search(ratios)},
        tune_config=tune.TuneConfig(
            scheduler=driver.asha_scheduler(160, 120),
            max_concurrent_trials=1,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), verbose=0, log_to_file=False),
    )

    # In a thread: when the actor cannot be reused in time, Tune fails the next trial and then
    # never ends (Ray 2.60), and the test must say so rather than hang.
    fitted: list[tune.ResultGrid] = []
    runner = threading.Thread(target=lambda: fitted.append(tuner.fit()), daemon=True)
    runner.start()
    runner.join(RUN_LIMIT_S)

    assert fitted, f"Tune did not end in {RUN_LIMIT_S} s; trials recorded: {sorted(p.name for p in tmp_path.glob('*.*ed'))}"
    results = fitted[0]
    assert not results.errors, [str(e).splitlines()[-1] for e in results.errors]
    assert sorted(p.name for p in tmp_path.glob("*.*ed")) == ["2.0.stopped", "3.0.stopped", "4.0.promoted", "8.0.promoted"]
    assert "stopped by Ray Tune's ASHAScheduler" in (tmp_path / "3.0.stopped").read_text()


# A real search

# Four configs that differ only in their prune ratio, so their ratios (size, measured on the
# untrained student's file: exact, and the score's major term) order them 0.8 > 0.4 > 0.3 > 0.2.
# A budget of 20 epochs is 160 steps on the demo's digits: one rung, at 120.
FIXED_SPACE = """
"prune.ratio" = [0.2, 0.3, 0.4, 0.8]
"prune.criterion" = "l1"
"prune.scope" = "uniform"
"prune.steps" = 1
"prune.round_to" = 1
"distill.epochs" = 20.0
"quantize.mode" = "none"
drop = ["depth.fraction", "depth.cut", "prune.heads", "distill.alpha", "distill.temperature", "distill.lr", "cluster.k"]
"""
# The order they run in, one at a time. At 120 steps: 0.4 is the first there (promoted); 0.2 is
# below it (stopped; its actor is reused for the next trial); 0.8 is above the 2/3 quantile of
# the two before (promoted); 0.3 is below that of the three before (stopped, the last trial: its
# actor is stopped, not reused).
ORDER = (0.4, 0.2, 0.8, 0.3)
EXPECTED = ("complete", "pruned", "complete", "pruned")
BATCH = 128


def _fixed_configs_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's searcher proposes ``ORDER`` (queued in its study), and trials are not skipped as
    dominated before training (whether an earlier trial reached the teacher's accuracy is a few
    images' luck, and the rung is what this tests)."""
    real_storage, real_run = driver.searcher_storage, driver.run
    monkeypatch.setattr(driver, "searcher_storage", _queued_first(real_storage))
    monkeypatch.setattr(
        driver, "run", lambda settings, *a, **k: real_run(dataclasses.replace(settings, skip_dominated=False), *a, **k)
    )


def _queued_first(real: Callable[..., optuna.storages.BaseStorage]) -> Callable[..., optuna.storages.BaseStorage]:
    """``searcher_storage`` with ``ORDER`` queued in Ray's searcher, so it proposes those configs."""

    def storage(study: optuna.Study, space: SearchSpace, profiles: Sequence[str]) -> optuna.storages.BaseStorage:
        made = real(study, space, profiles)
        searcher = optuna.load_study(study_name=SEARCHER_STUDY, storage=made)
        for ratio in ORDER:
            searcher.enqueue_trial({"prune.ratio": ratio})
        return made

    return storage


@pytest.mark.slow
def test_ray_asha_stops_the_trials_the_rule_stops_and_records_them_as_optuna_workers_do(
    search_folder: Callable[[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    local_ray: None,
    run_cli: RunCli,
) -> None:
    folder = search_folder(FIXED_SPACE)
    _fixed_configs_in_order(monkeypatch)
    argv = ["--backend", "ray", "--jobs", "1", "--study", "a", "--space", "tiny.toml", "--no-profiles"]
    argv += ["--device", "cpu", "--target", "size", "--max-drop", "99", "--strategy", "asha"]

    code, out, err = run_cli([*argv, "--trials", str(len(ORDER))])

    assert code == 0, err
    study = optuna.load_study(study_name="a", storage=open_storage(None, create=False))
    records = sorted(trial_records(study), key=lambda r: r.number)
    assert [r.config["prune.ratio"] for r in records] == list(ORDER)
    seen = [(r.number, r.state, r.reason, r.rungs) for r in records]
    assert tuple(r.state for r in records) == EXPECTED, seen
    budget = records[0].budget_steps
    assert budget is not None and 120 < budget < 360
    for r in records:
        assert r.ray_run and r.ray_trial and r.untrained_ratio is not None, seen
        if r.state == "complete":
            # Promoted at 120, it trained on from there to its budget: each step counted once.
            assert [s for s, _ in r.rungs] == [120, budget]
            assert r.samples_seen == budget * BATCH
        else:
            assert [s for s, _ in r.rungs] == [120]
            assert r.samples_seen == 120 * BATCH and r.saved_s > 0
            assert str(r.reason).startswith(f"stopped at 120 of {budget} steps: validation accuracy ")
            assert str(r.reason).endswith("(stopped by Ray Tune's ASHAScheduler)")
    # Each decision is the pure rule's on what the trials measured at the rung.
    required = Scoring.for_study(StudyInfo.load(study), early_stop=None, skip_dominated=False).required_accuracy
    results = [RungResult(float(r.rungs[0][1]), float(r.untrained_ratio or 0)) for r in records]
    calibration = Calibration.default(120, budget)
    assert [
        should_promote(result, results[:i], required_accuracy=required, calibration=calibration)
        for i, result in enumerate(results)
    ] == [state == "complete" for state in EXPECTED]
    # A finished trial never continues: no rung checkpoint is left behind.
    assert not list((folder / "studies").rglob("rung.pt"))

    # show reads the same fields as for the Optuna workers' trials.
    code, shown, err = run_cli(["show", "--study", "a", "--trial", "1"])
    assert code == 0, err
    assert "trial 1 of study a: pruned" in shown
    assert "rungs (successive halving): 120 steps " in shown and "budget received: 120 steps, rung 0 reached" in shown
    code, shown, err = run_cli(["show", "--study", "a", "--trial", "2"])
    assert code == 0, err
    assert f"budget received: {budget} steps, rung 1 reached" in shown
