"""The multi-fidelity strategy (``--strategy asha``) with Optuna workers: rungs kept in the study
storage, a worker killed with ``kill -9`` between rungs, its config continued by a replacement
from the last finished rung (no step trained or counted twice), and the strategy kept with the
study."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from rich.console import Console

from objectives import RungResult
from search.reporting.page import trials_frame
from search.reporting.tables import print_trial
from search.study import TrialRecord, trial_record
from search.study.records import INTERRUPTED
from search.study.rungs import compute_line, slack_line, untrained_slack
from search.study.artifacts import open_store
from search.trials.worker import StudyRungLog, fetch_earlier_rung, requeue_interrupted, resume_rungs
from search.workloads import file_sha256
from stages.distill import checkpointed_step, mark_rung_checkpoint
from tests.search.study_fixtures import HandMadeStudy
from tests.search.test_reliability import RUN_LIMIT_S, STUDY, _env, _start, _trials, _wait_for

# A budget of about 480 steps on the demo's digits (8 steps an epoch): rungs at 120 and 360 (the
# space's floor, 15 epochs, is 120 steps: the first rung).
SPACE = """
"distill.epochs" = [15.0, 60.0]
"prune.steps" = 1
"quantize.mode" = ["none"]
drop = ["cluster.k"]
profile_epochs = 2
"""


def _rec(trial: optuna.trial.FrozenTrial | optuna.Trial) -> TrialRecord:
    return TrialRecord.from_attrs(trial.user_attrs)


def _command(trials: int, *extra: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "search.cli", "--space", "tiny.toml", "--study", STUDY,
            "--trials", str(trials), "--no-profiles", *extra]


def _past_a_rung(trials: list[optuna.trial.FrozenTrial]) -> bool:
    """A trial that was promoted at its first rung trains on (its checkpoint is written)."""
    return any(t.state == TrialState.RUNNING and _rec(t).rungs for t in trials)


@pytest.mark.slow
def test_kill_9_between_rungs_loses_nothing_finished(search_folder: Callable[[str], Path]) -> None:
    folder = search_folder(SPACE)
    command = _command(3, "--strategy", "asha")
    proc = _start(folder, command)
    before = _wait_for(proc, folder, _past_a_rung)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = next(t for t in before if t.state == TrialState.RUNNING and _rec(t).rungs)
    first_rung = _rec(killed).rungs[0]
    assert first_rung[0] == 120

    done = subprocess.run(command, cwd=folder, env=_env(), capture_output=True, text=True,
                          timeout=RUN_LIMIT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    after = {t.number: t for t in _trials(folder) or []}
    assert after[killed.number].state == TrialState.FAIL
    assert str(_rec(after[killed.number]).reason).startswith(INTERRUPTED)
    # Its config ran again and continued from the rung it had finished: that rung's result is
    # kept, and the replacement trained (and counted) only the steps after it.
    replacement = next(t for t in after.values() if _rec(t).resumes == killed.number)
    assert replacement.params == killed.params
    record = trial_record(replacement)
    assert record.state in ("complete", "pruned")
    assert record.resumed_from == 120
    assert list(record.rungs[0]) == first_rung
    assert record.budget_steps is not None and record.budget_steps > 120
    assert record.samples_seen == (record.budget_steps - 120) * 128
    # Every trial of the study holds its rungs and the budget it received.
    for t in after.values():
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and _rec(t).rungs:
            steps = [s for s, _ in _rec(t).rungs]
            assert steps == sorted(steps) and steps[0] == 120

    # A finished trial never continues: no rung checkpoint is left behind.
    assert not list((folder / "studies" / STUDY / "rungs").rglob("rung.pt"))

    # The study keeps its strategy: resuming it as another is refused in one line.
    refused = subprocess.run(_command(4, "--strategy", "full"), cwd=folder, env=_env(),
                             capture_output=True, text=True, timeout=RUN_LIMIT_S, check=False)
    assert refused.returncode == 2
    assert "was run with --strategy asha, not full" in refused.stderr
    assert "Traceback" not in refused.stderr


def _trial(study: optuna.Study, rungs: list[list[float]], ratio: float, **attrs: object) -> optuna.Trial:
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    TrialRecord(config={"x": trial.params["x"]}, rungs=rungs, untrained_ratio=ratio, **attrs).save(trial)  # type: ignore[arg-type]
    return trial


def test_rungs_in_the_study_storage_are_read_by_every_trial(tmp_path: Path) -> None:
    study = optuna.create_study(directions=["maximize", "maximize"],
                                storage=f"sqlite:///{tmp_path / 's.db'}")
    done = _trial(study, [[120, 90.0], [360, 95.0]], 4.0, metrics={"val_acc": 96.0})
    study.tell(done, [96.0, 4.0])
    stopped = _trial(study, [[120, 80.0]], 9.0)
    study.tell(stopped, state=TrialState.PRUNED)
    cut = _trial(study, [[120, 70.0]], 2.0, reason=f"{INTERRUPTED} (kill -9)")
    study.tell(cut, state=TrialState.FAIL)

    me = study.ask()
    log = StudyRungLog(study, me)
    log.record(120, 85.0, 6.0)
    # the others at the rung: the interrupted one is left out (its replacement carries it)
    # (a finished one with its outcome, which the rule judges it by)
    assert sorted(log.results_at(120), key=lambda r: r.ratio) == [
        RungResult(90.0, 4.0, final=96.0), RungResult(80.0, 9.0)
    ]
    assert log.results_at(360) == [RungResult(95.0, 4.0, final=96.0)]
    assert log.pairs_at(120) == [(90.0, 96.0)]  # only the finished trial has a final accuracy
    assert _rec(me).rungs == [[120, 85.0]]

    # the interrupted config is queued again once, and its replacement takes its rungs
    assert requeue_interrupted(study) == [cut.number]
    assert requeue_interrupted(study) == []
    replacement = study.ask()
    assert _rec(replacement).resumes == cut.number
    assert replacement.suggest_float("x", 0, 1) == cut.params["x"]  # the same config
    resume_rungs(study, replacement, {"x": cut.params["x"]}, 120)
    assert _rec(replacement).rungs == [[120, 70.0]]
    assert _rec(replacement).untrained_ratio == 2.0


def test_configs_waiting_for_a_rung_slot_go_highest_measured_ratio_first(tmp_path: Path) -> None:
    study = optuna.create_study(directions=["maximize", "maximize"],
                                storage=f"sqlite:///{tmp_path / 's.db'}")
    cut = {}
    for ratio in (2.0, 9.0, 5.0):
        trial = _trial(study, [[120, 80.0]], ratio, reason=f"{INTERRUPTED} (kill -9)")
        study.tell(trial, state=TrialState.FAIL)
        cut[ratio] = trial.number
    assert requeue_interrupted(study) == [cut[9.0], cut[5.0], cut[2.0]]
    # The workers that free up take them in that order, whichever asks.
    taken = [_rec(study.ask()).resumes for _ in range(3)]
    assert taken == [cut[9.0], cut[5.0], cut[2.0]]


def _checkpoint(path: Path, step: int, total: int, payload: bytes) -> None:
    """A rung checkpoint as Distill leaves it: the file, then the JSON naming its step."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    mark_rung_checkpoint(path, step, total)


def test_a_promoted_rung_checkpoint_goes_to_the_store_and_a_replacement_elsewhere_fetches_it(tmp_path: Path) -> None:
    study = optuna.create_study(directions=["maximize", "maximize"],
                                storage=f"sqlite:///{tmp_path / 's.db'}")
    store = open_store(str(tmp_path / "store"))
    here = tmp_path / "machine-a" / "rungs" / "rung.pt"
    trial = _trial(study, [[120, 85.0]], 6.0)
    log = StudyRungLog(study, trial, store=store, checkpoint=here)

    _checkpoint(here, 120, 480, b"state at 120")
    log.promoted(120, 480)
    stored = _rec(trial).rung_artifact
    assert stored is not None and (stored["step"], stored["total"]) == (120, 480)
    assert stored["sha256"] == file_sha256(here)
    # The next rung's checkpoint replaces it in the store: one kept per trial.
    _checkpoint(here, 360, 480, b"state at 360")
    log.promoted(360, 480)
    stored = _rec(trial).rung_artifact
    assert stored is not None and stored["step"] == 360
    assert [p.read_bytes() for p in (tmp_path / "store").rglob("*") if p.is_file()] == [b"state at 360"]

    # Its worker dies; the replacement runs on a machine that never saw the checkpoint.
    TrialRecord(reason=f"{INTERRUPTED} (kill -9)").save(trial)
    study.tell(trial, state=TrialState.FAIL)
    requeue_interrupted(study)
    replacement = study.ask()
    flat = {"x": trial.params["x"]}
    there = tmp_path / "machine-b" / "rungs" / "rung.pt"
    assert fetch_earlier_rung(study, replacement, flat, there, store) == 360
    assert there.read_bytes() == b"state at 360" and checkpointed_step(there, 480) == 360
    resume_rungs(study, replacement, flat, 360)
    assert _rec(replacement).rung_artifact == stored  # a second interruption can fetch it too

    # A stored copy that is not the file uploaded (sha256) is never continued from.
    [kept] = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    kept.write_bytes(b"state at 360, damaged")
    elsewhere = tmp_path / "machine-c" / "rungs" / "rung.pt"
    assert fetch_earlier_rung(study, replacement, flat, elsewhere, store) == 0
    assert not elsewhere.exists() and not list(elsewhere.parent.glob("*"))


def test_a_trial_promoted_at_a_rung_uploads_that_rungs_checkpoint(tiny_context, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from objectives import Constraint
    from search.trials.trial import Scoring, run_trial
    from stages.config import PipelineConfig

    study = optuna.create_study(directions=["maximize", "maximize"],
                                storage=f"sqlite:///{tmp_path / 's.db'}")
    store = open_store(str(tmp_path / "store"))
    trial = study.ask()
    checkpoint = tmp_path / "rungs" / "rung.pt"
    ctx = dataclasses.replace(tiny_context, rung_checkpoint=checkpoint)
    log = StudyRungLog(study, trial, store=store, checkpoint=checkpoint)
    # 20 epochs of 8 steps: a rung at 120 steps, the first there (promoted), then the end at 160.
    config = PipelineConfig.from_flat({"prune.ratio": 0.3, "distill.epochs": 20.0})
    baseline = {"val_acc": 90.0, "test_acc": 90.0, "bytes": 1e6, "params": 1e5}
    scoring = Scoring("size", Constraint(max_drop=90.0), baseline, early_stop=None)
    outcome = run_trial(config, ctx, scoring, _NoFront(), rung_log=log)
    assert [s for s, _ in _rec(trial).rungs] == [120, 160]
    stored = _rec(trial).rung_artifact
    assert stored is not None and (stored["step"], stored["total"]) == (120, 160)
    [uploaded] = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert file_sha256(uploaded) == stored["sha256"] == file_sha256(checkpoint)
    assert outcome.record.untrained_ratio == _rec(trial).untrained_ratio


class _FittedLog:
    """A rung log whose study fitted final = rung - 1 pt exactly (no spread) at every rung."""

    def __init__(self) -> None:
        self.rungs: list[tuple[int, float]] = []
        self.promotions: list[int] = []

    def record(self, steps: int, accuracy: float, ratio: float) -> None:
        self.rungs.append((steps, accuracy))

    def results_at(self, steps: int) -> list[RungResult]:
        return []

    def pairs_at(self, steps: int) -> list[tuple[float, float]]:
        return [(x, x - 1.0) for x in (50.0, 60.0, 70.0, 80.0, 90.0)]

    def promoted(self, steps: int, total: int) -> None:
        self.promotions.append(steps)


class _Front:
    def __init__(self, *points: object) -> None:
        self.points = list(points)

    def feasible_front(self) -> list[object]:
        return self.points

    def median_trial_seconds(self) -> float:
        return 0.0

    def untrained_slack(self) -> None:
        return None


def test_a_trial_that_can_no_longer_add_to_the_feasible_front_stops_at_its_rung(tiny_context) -> None:  # type: ignore[no-untyped-def]
    # A feasible trial at 99.99 % and a ratio no config reaches. Before training the trial could
    # still end at the teacher's 100 % (the ceiling), above it: it trains. At its first rung the
    # study's calibration says it ends at most 1 pt below its rung accuracy, so at most 99 %: that
    # trial dominates every outcome it can still reach, and it stops, though the first trial at
    # the rung (no quantile to miss) and plausible against the bound.
    from objectives import Constraint, Point
    from search.trials.trial import Scoring, TrialStopped, run_trial
    from stages.config import PipelineConfig

    config = PipelineConfig.from_flat({"prune.ratio": 0.3, "distill.epochs": 20.0})
    baseline = {"val_acc": 100.0, "test_acc": 100.0, "bytes": 1e6, "params": 1e5}
    scoring = Scoring("size", Constraint(max_drop=99.0), baseline, early_stop=None)
    log = _FittedLog()
    front = _Front(Point(3, accuracy=99.99, ratio=1e9))
    with pytest.raises(TrialStopped, match="cannot add to the feasible front: feasible trial 3 has") as stop:
        run_trial(config, tiny_context, scoring, front, rung_log=log)  # type: ignore[arg-type]
    [(steps, accuracy)] = log.rungs
    assert steps == 120 and log.promotions == []
    assert f"stopped at 120 of 160 steps: validation accuracy {accuracy:.2f} %" in str(stop.value)
    assert f"{min(100.0, accuracy - 1.0):.2f} %: final = 1.00 x rung -1.0 pt, residual sd 0.00 pt over 5 trials" in str(stop.value)
    [distill] = stop.value.stages
    assert distill["metrics"]["samples_seen"] == 120 * 32  # what it trained, not its budget
    # With no such trial, the same config trains on to its budget.
    log = _FittedLog()
    run_trial(config, tiny_context, scoring, _NoFront(), rung_log=log)  # type: ignore[arg-type]
    assert [s for s, _ in log.rungs] == [120, 160] and log.promotions == [120]


def test_a_study_whose_budget_starts_below_min_steps_first_judges_a_trial_at_its_floor(
    tiny_context, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    from objectives import Constraint
    from search.trials.trial import Scoring, run_trial
    from stages.config import PipelineConfig

    study = optuna.create_study(directions=["maximize", "maximize"])
    trial = study.ask()
    # 20 epochs of 8 steps, judged from a first rung of 40 steps: 40, 120, then the end at 160
    # (with the default first rung, MIN_STEPS, it would be 120 and 160 only).
    config = PipelineConfig.from_flat({"prune.ratio": 0.3, "distill.epochs": 20.0})
    baseline = {"val_acc": 90.0, "test_acc": 90.0, "bytes": 1e6, "params": 1e5}
    scoring = Scoring("size", Constraint(max_drop=90.0), baseline, early_stop=None)
    run_trial(config, tiny_context, scoring, _NoFront(), rung_log=StudyRungLog(study, trial), first_rung=40)
    assert [s for s, _ in _rec(trial).rungs] == [40, 120, 160]


def test_the_first_rung_is_the_spaces_floor_where_that_is_below_min_steps() -> None:
    from search.backends import STRATEGIES
    from search.trials.trial import first_rung_steps, top_budget_steps
    from spaces import MIN_STEPS, Fixed, FloatRange, ModelFacts, SearchSpace, default_space, demo_space, fit_space

    # The demo: 5..30 epochs of 8 steps (1,077 training images in batches of 128), so 40..240.
    demo = fit_space(demo_space(), ModelFacts(True, 0, 0, steps_per_epoch=8, epoch_seconds=0.3), target="size")
    assert first_rung_steps(demo, 1077) == 40
    assert top_budget_steps(STRATEGIES["asha"].space(demo), 1077) == 240
    # ResNet-18 / Fashion-MNIST (422 steps an epoch, 0.5..3 epochs: 211..1,266 steps, boosted x4
    # for latency): the floor is above MIN_STEPS, which stays the first rung.
    facts = ModelFacts(True, 5, 2, steps_per_epoch=421, epoch_seconds=75.0)
    for target in ("size", "latency"):
        assert first_rung_steps(fit_space(default_space(), facts, target=target), 54_000) == MIN_STEPS
    # The boost lengthens small students' training, not the shortest trial's.
    boosted = SearchSpace({"distill.epochs": FloatRange(2.0, 60.0), "distill.size_boost": Fixed(4.0)})
    assert first_rung_steps(boosted, 1024) == 2 * 8


def test_a_study_keeps_its_first_rung_and_an_older_one_its_min_steps(tmp_path: Path) -> None:
    from objectives import Constraint
    from search.study import StudyInfo
    from search.study.records import FIRST_RUNG

    study = optuna.create_study(directions=["maximize", "maximize"], storage=f"sqlite:///{tmp_path / 's.db'}")
    info = StudyInfo(workload={}, target="size", constraint=Constraint(max_drop=1.0), baseline={"val_acc": 90.0},
                     baseline_onnx="t.onnx", artifacts_dir=str(tmp_path), strategy="asha", first_rung=40)
    info.save(study)
    assert StudyInfo.load(study).first_rung == 40
    # A study made before the first rung was recorded judged its trials at 120 steps, and a resumed
    # one goes on judging there.
    study.set_user_attr(FIRST_RUNG, None)
    older = optuna.create_study(directions=["maximize", "maximize"])
    for key, value in study.user_attrs.items():
        if key != FIRST_RUNG:
            older.set_user_attr(key, value)
    assert StudyInfo.load(older).first_rung == 120


class _NoFront:
    def feasible_front(self) -> list[object]:
        return []

    def median_trial_seconds(self) -> float:
        return 0.0

    def untrained_slack(self) -> None:
        return None


def _record(number: int, state: TrialState, rungs: list[list[float]], val_acc: float | None = None) -> TrialRecord:
    distill = {"stage": "distill", "seconds": 1.0, "metrics": {"samples_seen": 128.0 * rungs[-1][0]}}
    stored = TrialRecord(rungs=rungs, untrained_ratio=8.5, stages=[distill],
                         metrics={} if val_acc is None else {"val_acc": val_acc})
    frozen = optuna.trial.create_trial(
        state=state, values=[val_acc, 8.5] if state == TrialState.COMPLETE else None,
        user_attrs=stored.to_attrs(),
    )
    return dataclasses.replace(trial_record(frozen), number=number)


def test_show_and_trials_csv_give_the_rungs_budget_and_calibration(hand: HandMadeStudy) -> None:
    # six promoted trials (final = rung + 2 pt, give or take 0.5) and one stopped at its rung
    records = [
        _record(i, TrialState.COMPLETE, [[120, 80.0 + i], [360, 90.0]], val_acc=82.0 + i + (0.5 if i % 2 else -0.5))
        for i in range(6)
    ] + [_record(6, TrialState.PRUNED, [[120, 70.0]])]
    console = Console(record=True, width=200)
    print_trial(console, hand.info, records[6], records, study_name="s", storage=None)
    shown = console.export_text()
    assert "rungs (successive halving): 120 steps 70.00 %" in shown
    assert "budget received: 120 steps, rung 0 reached" in shown
    assert "measured before training: 8.50x" in shown
    assert ("rung 0 (120 steps) accuracy predicted final accuracy with residual sd 0.61 pt over 6 trials "
            "(final = 1.00 x rung +2.0 pt)") in shown
    assert "over 6 trials" in shown

    frame = trials_frame(hand.info, records)
    assert list(frame["budget_steps"]) == [360] * 6 + [120]
    assert list(frame["rung"]) == [1] * 6 + [0]
    assert frame["rung_accuracies"].iloc[6] == "120:70.00"
    assert frame["rung_accuracies"].iloc[0] == "120:80.00;360:90.00"
    assert list(frame["samples_seen"]) == [360 * 128] * 6 + [120 * 128]
    assert compute_line(records) == (
        f"compute: {(6 * 360 + 120) * 128:,} training samples seen (7 trials trained, "
        f"{(6 * 360 + 120) * 128 / 7:,.0f} each on average)"
    )


def test_show_and_the_summary_say_how_the_untrained_latency_held_and_what_slack_the_skip_uses(
    hand: HandMadeStudy,
) -> None:
    def timed(number: int, untrained: float, trained: float) -> TrialRecord:
        stored = TrialRecord(untrained_ratio=untrained, ratios={"latency": trained}, metrics={"val_acc": 90.0})
        frozen = optuna.trial.create_trial(state=TrialState.COMPLETE, values=[90.0, trained],
                                           user_attrs=stored.to_attrs())
        return dataclasses.replace(trial_record(frozen), number=number)

    # trained files timed 2 % slower to 4 % faster than their untrained students
    excess = [-0.02, 0.0, 0.01, 0.04, 0.0, 0.02, -0.01, 0.01]
    records = [timed(i, 5.0, 5.0 * (1 + e)) for i, e in enumerate(excess)]
    slack = untrained_slack(records, "latency")
    assert slack is not None and 0.04 <= slack < 0.25
    line = slack_line(records, "latency")
    assert line == (
        "latency ratio measured before training vs the trained file's: -2.0 % to +4.0 % over 8 "
        f"trials; the skip before training allows +{100 * slack:.0f} % (fitted on these trials)"
    )
    # With fewer trials, the fixed slack, and the line says why.
    assert untrained_slack(records[:3], "latency") == 0.25
    assert slack_line(records[:3], "latency") == (
        "latency ratio measured before training vs the trained file's: -2.0 % to +1.0 % over 3 "
        "trials; the skip before training allows the fixed +25 % (a fit needs 8 trials)"
    )
    # File bytes agree exactly: nothing to say.
    same = [timed(i, 5.0, 5.0) for i in range(8)]
    assert slack_line([dataclasses.replace(r, ratios={"size": 5.0}) for r in same], "size") is None
    # ``show`` of a trial measured before training carries the line.
    latency_info = dataclasses.replace(hand.info, target="latency")
    console = Console(record=True, width=300)
    print_trial(console, latency_info, records[0], records, study_name="s", storage=None)
    assert line in console.export_text()


def test_asha_holds_the_budget_at_the_top_of_its_range() -> None:
    from search.backends import STRATEGIES
    from spaces import Fixed, FloatRange, SearchSpace, default_space

    space = SearchSpace({**default_space().dimensions, "distill.epochs": FloatRange(2.0, 60.0, log=True)})
    assert STRATEGIES["asha"].space(space)["distill.epochs"] == Fixed(60.0)
    assert STRATEGIES["full"].space(space) is space


def test_a_search_request_carries_its_strategy_on_either_backend() -> None:
    from search.request import RequestError, SearchRequest
    from search.workloads import WorkloadSpec

    assert SearchRequest(spec=WorkloadSpec(), backend="ray", strategy="asha").strategy == "asha"
    with pytest.raises(RequestError, match="strategy"):
        SearchRequest(spec=WorkloadSpec(), strategy="bogus")
    assert SearchRequest(spec=WorkloadSpec(), strategy="asha").settings("s", SearchRequest(spec=WorkloadSpec()).space(), 1).strategy == "asha"


def test_show_says_a_trial_was_skipped_before_training_and_what_it_measured(hand: HandMadeStudy) -> None:
    stored = TrialRecord(reason="skipped before training: at most 3.03x size (measured 3.00x untrained)",
                         untrained_ratio=3.0, skipped_by=7)
    frozen = optuna.trial.create_trial(state=TrialState.PRUNED, user_attrs=stored.to_attrs())
    record = dataclasses.replace(trial_record(frozen), number=9)
    console = Console(record=True, width=200)
    print_trial(console, hand.info, record, [record], study_name="s", storage=None)
    shown = console.export_text()
    assert "measured before training: 3.00x" in shown
    assert "skipped before training: trial 7 dominates every outcome it could reach" in shown
    assert trials_frame(hand.info, [record])["skipped_by"].iloc[0] == 7


def test_a_worker_on_another_machine_continues_from_the_stored_rung_and_frees_it(
    tiny_context, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    from objectives import Constraint
    from search.study import StudyInfo
    from search.study.artifacts import upload_rung_checkpoint
    from search.trials import worker
    from search.trials.trial import TrialStopped
    from stages.config import PipelineConfig

    study = optuna.create_study(directions=["maximize", "maximize"])
    store = open_store(str(tmp_path / "store"))
    flat = PipelineConfig().to_flat()
    # Machine A ran the config to its rung at 120 steps and died there.
    cut = study.ask()
    _checkpoint(tmp_path / "machine-a" / "rung.pt", 120, 480, b"state at 120")
    stored = upload_rung_checkpoint(cut, tmp_path / "machine-a" / "rung.pt", 120, 480, store)
    TrialRecord(config=flat, rungs=[[120, 80.0]], untrained_ratio=3.0, rung_artifact=stored,
                reason=f"{INTERRUPTED} (kill -9)").save(cut)
    study.tell(cut, state=TrialState.FAIL)
    requeue_interrupted(study)

    # Machine B runs the replacement: what its pipeline starts from, and a skip it records.
    started: list[int] = []

    def run_trial(config, ctx, *args: object, first_rung: int, **kwargs: object) -> None:  # type: ignore[no-untyped-def]
        started.append((checkpointed_step(ctx.rung_checkpoint, 480), first_rung))
        raise TrialStopped("stopped at 360 of 480 steps", saved_s=1.0, record=TrialRecord(skipped_by=0))

    monkeypatch.setattr(worker, "run_trial", run_trial)
    info = StudyInfo(workload={}, target="size", constraint=Constraint(max_drop=1.0), baseline={},
                     baseline_onnx="", artifacts_dir="", strategy="asha", first_rung=120)
    setup = worker.WorkerSetup(study, info, tiny_context, None, None, tmp_path / "machine-b", store,  # type: ignore[arg-type]
                               multi_fidelity=True)
    replacement = study.ask()
    state, _ = worker.run_and_record(replacement, setup, PipelineConfig, profile=None)
    # It continued from the stored rung, judged at its study's rungs.
    assert (state, started) == ("pruned", [(120, 120)])
    record = trial_record(study.trials[replacement.number])
    assert record.resumed_from == 120 and record.rungs == [[120, 80.0]] and record.skipped_by == 0
    # It ended (not interrupted): nothing continues it, so neither copy of the checkpoint is kept.
    assert not [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert not list((tmp_path / "machine-b").rglob("rung.pt"))
