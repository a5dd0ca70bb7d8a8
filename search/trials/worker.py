"""What every worker of a study does, whichever backend placed it: build its context once, run a
trial's pipeline, and record the outcome in the study. Shared by both backends."""

from __future__ import annotations

import dataclasses
import statistics
import traceback
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from objectives import EarlyStop, Point, RungResult
from search.study import StudyInfo, TrialRecord, ask_lock, feasible_front, heartbeat, trial_record
from search.study.artifacts import (
    STORE_ATTR,
    discard_rung_checkpoint,
    fetch_rung_checkpoint,
    open_store,
    upload_folder,
    upload_rung_checkpoint,
)
from search.study.exclusions import (
    Exclusion,
    exclude,
    excluded_by,
    exclusions,
    freeze_layer,
    frozen_layers,
)
from search.study.records import INTERRUPTED, was_interrupted
from search.study.rungs import final_accuracy, untrained_slack
from search.trials.context import (
    CACHE_DIR,
    fingerprint_hash,
    make_context,
    measure_baseline_into,
    trial_context,
    with_analysis,
)
from search.trials.trial import (
    RungJudge,
    RungLog,
    Scoring,
    TrialOutcome,
    TrialStopped,
    run_trial,
    successive_halving,
)
from search.workloads import Analysis, Workload
from stages import Context, PipelineConfig, StageError
from stages.distill import checkpointed_step, remove_rung_checkpoint
from stages.prune_failures import PruneFailure

if TYPE_CHECKING:
    from search.study.artifacts import ArtifactStore

# Accuracy after pruning recovers mostly late in a cosine schedule: give a trial half its
# distillation budget, then stop it only when it is far (20 pt, shrinking to 0) below the bound.
EARLY_STOP = EarlyStop(grace=0.5, slack_points=20.0)


class LiveStudyView:
    """The live study as a running trial sees it (see search.trials.trial.StudyView)."""

    def __init__(self, study: optuna.Study, info: StudyInfo) -> None:
        self.study, self.info = study, info

    def _complete(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def feasible_front(self) -> list[Point]:
        return feasible_front(self.info, [trial_record(t) for t in self._complete()])

    def median_trial_seconds(self) -> float:
        records = [trial_record(t) for t in self._complete()]
        secs = [r.run_seconds for r in records if r.run_seconds is not None]
        return statistics.median(secs) if secs else 0.0

    def untrained_slack(self) -> float | None:
        return untrained_slack([trial_record(t) for t in self._complete()], self.info.target)


class StudyRungLog(RungLog):
    """A trial's rungs in its record in the study storage (journal, SQLite or PostgreSQL), so
    every worker on every machine judges against the same rungs; with the study's artifact
    ``store``, a promoted trial's ``checkpoint`` goes there too (the previous rung's is removed)."""

    def __init__(
        self,
        study: optuna.Study,
        trial: optuna.Trial,
        *,
        store: ArtifactStore | None = None,
        checkpoint: Path | None = None,
    ) -> None:
        self.study, self.trial = study, trial
        self.store, self.checkpoint = store, checkpoint

    def record(self, steps: int, accuracy: float, ratio: float) -> None:
        rungs = [*TrialRecord.from_attrs(self.trial.user_attrs).rungs, [steps, accuracy]]
        TrialRecord(rungs=rungs, untrained_ratio=ratio).save(self.trial)

    def _at(self, steps: int) -> list[tuple[TrialRecord, float]]:
        """Other trials with a result at the rung at ``steps`` (an interrupted one is left out:
        its replacement carries its rungs), with their accuracy there."""
        found = []
        for t in self.study.get_trials(deepcopy=False):
            if t.number == self.trial.number or was_interrupted(t):
                continue
            record = trial_record(t)
            accuracy = record.accuracy_at(steps)
            if accuracy is not None:
                found.append((record, accuracy))
        return found

    def results_at(self, steps: int) -> list[RungResult]:
        return [RungResult(a, r.untrained_ratio or 1.0, final=final_accuracy(r)) for r, a in self._at(steps)]

    def pairs_at(self, steps: int) -> list[tuple[float, float]]:
        return [(a, final) for r, a in self._at(steps) if (final := final_accuracy(r)) is not None]

    def promoted(self, steps: int, total: int) -> None:
        if self.store is None or checkpointed_step(self.checkpoint, total) != steps:
            return
        assert self.checkpoint is not None
        previous = TrialRecord.from_attrs(self.trial.user_attrs).rung_artifact
        uploaded = upload_rung_checkpoint(self.trial, self.checkpoint, steps, total, self.store)
        TrialRecord(rung_artifact=uploaded).save(self.trial)
        discard_rung_checkpoint(previous, self.store)


def rung_checkpoint(artifacts: Path, flat: dict[str, object]) -> Path:
    """Where the rung checkpoint of a config lives: keyed by the config, so a trial that runs
    it again (the replacement of an interrupted one) continues from its last finished rung."""
    return artifacts / "rungs" / fingerprint_hash(flat) / "rung.pt"


def _earlier_run(study: optuna.Study, trial: optuna.Trial, flat: dict[str, object]) -> TrialRecord | None:
    """The latest other trial of the config ``flat`` that reached a rung: the interrupted run
    ``trial`` continues."""
    for t in reversed(study.get_trials(deepcopy=False)):
        earlier = trial_record(t)
        if t.number != trial.number and earlier.config == flat and earlier.rungs:
            return earlier
    return None


def resume_rungs(study: optuna.Study, trial: optuna.Trial, flat: dict[str, object], start: int) -> None:
    """Give ``trial``, which continues its config from step ``start``, the rungs up to there
    that the interrupted trial of the same config reached (what it is judged on goes on), and
    the stored checkpoint it continues from (the next interruption's replacement may need it)."""
    TrialRecord(resumed_from=start).save(trial)
    earlier = _earlier_run(study, trial, flat)
    if earlier is not None:
        kept = [r for r in earlier.rungs if int(r[0]) <= start]
        stored = earlier.rung_artifact if earlier.rung_artifact and earlier.rung_artifact["step"] == start else None
        TrialRecord(rungs=kept, untrained_ratio=earlier.untrained_ratio, rung_artifact=stored).save(trial)


def fetch_earlier_rung(
    study: optuna.Study, trial: optuna.Trial, flat: dict[str, object], checkpoint: Path, store: ArtifactStore
) -> int:
    """Fetch the stored checkpoint of the interrupted run of ``flat`` to ``checkpoint`` (its
    worker was on another machine, or this one lost its disk), checked against its sha256;
    returns the step it holds (0: none stored, or not the file uploaded)."""
    earlier = _earlier_run(study, trial, flat)
    if earlier is None or earlier.rung_artifact is None:
        return 0
    if not fetch_rung_checkpoint(earlier.rung_artifact, checkpoint, store):
        return 0
    return checkpointed_step(checkpoint)


def requeue_interrupted(study: optuna.Study) -> list[int]:
    """Queue the config of each interrupted multi-fidelity trial that reached a rung again (once),
    so a replacement continues from its checkpoint instead of the study drawing another config.
    Configs that wait together are queued by their measured (untrained) ratio, highest first:
    Optuna hands waiting trials out in the order they were queued, so with ``--jobs N`` the
    worker that frees up first continues the config most likely to extend the front. Call
    holding the ask lock."""
    trials = study.get_trials(deepcopy=False)
    replaced = {trial_record(t).resumes for t in trials}
    waiting = [
        t for t in trials if was_interrupted(t) and trial_record(t).rungs and t.number not in replaced
    ]
    waiting.sort(key=lambda t: (-(trial_record(t).untrained_ratio or 0.0), t.number))
    for t in waiting:
        study.enqueue_trial(t.params, user_attrs=TrialRecord(resumes=t.number).to_attrs(), skip_if_exists=False)
    return [t.number for t in waiting]


@dataclasses.dataclass(frozen=True)
class WorkerSetup:
    """What a worker (a process, or a Ray actor) builds once and reuses for every trial."""

    study: optuna.Study
    info: StudyInfo
    base: Context
    scoring: Scoring
    view: LiveStudyView
    # Where this worker writes trial files: the study's folder, or this machine's own folder for
    # a study in a database server (machines with no common folder).
    artifacts: Path
    # The study's artifact store, which each complete trial's files are uploaded to (or None).
    store: ArtifactStore | None = None
    # Multi-fidelity (the asha strategy): trials train rung by rung (see run_trial's rung_log).
    multi_fidelity: bool = False


def worker_setup(
    study: optuna.Study,
    info: StudyInfo,
    workload: Workload,
    *,
    threads: int,
    seed: int,
    early_stop: bool = True,
    skip_dominated: bool = True,
    cache_dir: Path = CACHE_DIR,
    artifacts: Path | None = None,
    multi_fidelity: bool = False,
) -> WorkerSetup:
    """A worker's context (teacher logits from the shared cache), scoring and study view.
    ``artifacts``: where to write trial files instead of the study's recorded folder;
    ``multi_fidelity``: train trials rung by rung (the asha strategy)."""
    artifacts = Path(info.artifacts_dir) if artifacts is None else artifacts
    base = make_context(workload, artifacts / "trials", threads=threads, seed=seed, cache_dir=cache_dir)
    baseline_onnx = Path(info.baseline_onnx)
    if baseline_onnx.exists():
        base = dataclasses.replace(base, baseline_onnx=baseline_onnx)
    else:  # the study's folder was moved or cleaned: export the teacher again
        base, _ = measure_baseline_into(base, artifacts / "baseline")
    base = with_analysis(base, Analysis.from_dict(info.analysis) if info.analysis else None)
    scoring = Scoring.for_study(info, early_stop=EARLY_STOP if early_stop else None, skip_dominated=skip_dominated)
    url = study.user_attrs.get(STORE_ATTR)
    store = open_store(url) if url is not None else None
    return WorkerSetup(study, info, base, scoring, LiveStudyView(study, info), artifacts, store, multi_fidelity)


def run_and_record(
    trial: optuna.Trial,
    setup: WorkerSetup,
    make_config: Callable[[], PipelineConfig],
    *,
    profile: str | None,
    judge: RungJudge = successive_halving,
) -> tuple[str, TrialOutcome | None]:
    """Run one trial and record it in the study: complete with its constraints and attributes,
    pruned (stopped early) with the reason and time saved, or failed with the reason.
    ``judge`` decides at each rung of a multi-fidelity trial whether it trains on.

    Returns the state name and, for a complete trial, its outcome. Ctrl-C marks the trial failed
    as interrupted (it is replaced on resume) and propagates.
    """
    study = setup.study
    config = None
    ctx = setup.base
    interrupted = False
    try:
        config = make_config()
        flat = config.to_flat()
        TrialRecord(config=flat).save(trial)
        known = excluded_by(exclusions(study), flat)
        if known is not None:
            raise TrialStopped(f"skipped, not run: {known.describe()}", saved_s=setup.view.median_trial_seconds())
        learned = tuple(layer for layer in frozen_layers(study) if layer not in setup.base.frozen_layers)
        folder = setup.artifacts / "trials" / str(trial.number)
        ctx = trial_context(setup.base, folder, frozen_layers=setup.base.frozen_layers + learned)
        rung_log = None
        if setup.multi_fidelity and profile is None:
            ctx = dataclasses.replace(ctx, rung_checkpoint=rung_checkpoint(setup.artifacts, flat))
            rung_log = StudyRungLog(study, trial, store=setup.store, checkpoint=ctx.rung_checkpoint)
            start = checkpointed_step(ctx.rung_checkpoint)
            if not start and setup.store is not None and TrialRecord.from_attrs(trial.user_attrs).resumes is not None:
                start = fetch_earlier_rung(study, trial, flat, ctx.rung_checkpoint, setup.store)
            if start:
                resume_rungs(study, trial, flat, start)
        with heartbeat(study, trial.number):
            outcome = run_trial(
                config, ctx, setup.scoring, setup.view, stop_early=profile is None, rung_log=rung_log, judge=judge,
                first_rung=setup.info.first_rung,
            )
            if setup.store is not None:
                upload_folder(trial, folder, setup.store)
    except TrialStopped as stop:
        TrialRecord(reason=str(stop), saved_s=stop.saved_s, stages=stop.stages).save(trial)
        if stop.record is not None:
            stop.record.save(trial)
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned", None
    except KeyboardInterrupt:
        interrupted = True
        TrialRecord(reason=f"{INTERRUPTED} (Ctrl-C)").save(trial)
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as exc:  # a failing trial is recorded with its reason; the study goes on
        TrialRecord(reason=failure_reason(exc)).save(trial)
        if config is not None:
            with ask_lock(study, setup.info):
                learn_from_failure(study, trial.number, config, exc, frozen=ctx.frozen_layers)
        study.tell(trial, state=TrialState.FAIL)
        return "failed", None
    finally:
        # Only an interrupted trial's replacement continues from its rung checkpoint (a stop at a
        # rung is final): any other end frees the disk it holds.
        if not interrupted:
            remove_rung_checkpoint(ctx.rung_checkpoint)
            if setup.store is not None:
                discard_rung_checkpoint(TrialRecord.from_attrs(trial.user_attrs).rung_artifact, setup.store)
    record_outcome(study, trial, outcome)
    return "complete", outcome


def record_outcome(study: optuna.Study, trial: optuna.Trial, outcome: TrialOutcome) -> None:
    """Store a finished trial's constraint values and record, and tell its objective values."""
    for key, value in outcome.constraints.items():
        trial.set_constraint(key, value)
    outcome.record.save(trial)
    study.tell(trial, list(outcome.values))


def learn_from_failure(
    study: optuna.Study,
    number: int,
    config: PipelineConfig,
    exc: BaseException,
    *,
    frozen: Collection[str] = (),
) -> None:
    """Record what trial ``number``'s failure teaches the study, so no later trial fails so again:
    the layer structural pruning broke on is left whole from now on (and, when it was already,
    ``frozen``, the layers coupled to it), or the value of the setting the stage blamed
    (``StageError.setting``) is excluded. Other failures teach nothing."""
    if isinstance(exc, PruneFailure) and exc.layer is not None:
        blamed = [exc.layer] if exc.layer not in frozen else [n for n in exc.group if n not in frozen]
        for layer in blamed:
            freeze_layer(study, layer, str(exc))
        if blamed:
            return
    if isinstance(exc, StageError) and exc.setting is not None:
        exclude(study, Exclusion(exc.setting, config.to_flat()[exc.setting], str(exc), number))


def failure_reason(exc: BaseException) -> str:
    """One line saying why a trial failed, with where it was raised."""
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory: {exc}"
    return f"{type(exc).__name__}: {exc}{raised_at(exc)}"


def raised_at(exc: BaseException) -> str:
    """`` (at file.py:LINE)`` where ``exc`` was raised, or "" when it carries no traceback."""
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    return f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
