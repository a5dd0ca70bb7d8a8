"""A Ray trial, run in a Ray worker process: it opens a trial in the study, runs the pipeline
and records the outcome as the Optuna backend does, then reports it to Ray's searcher."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.storages import BaseStorage
from optuna.trial import TrialState
from ray import tune

# Tune's own handle on a function trial's thread (what FunctionTrainable waits on): the one way
# to let a trial its scheduler stopped finish recording itself before the actor goes.
from ray.train._internal.session import get_session
from ray.tune.trainable import Trainable, wrap_function

from objectives import Calibration, RungResult, promotion_score
from search.backends.ray_tune.searcher import (
    METRICS,
    OUTCOME,
    PROFILE_KEY,
    distributions_for,
)
from search.backends.settings import DEFAULT_STRATEGY, STRATEGIES, SearchSettings
from search.study import StudyInfo, open_storage, worker_id
from search.study.records import TrialRecord, trial_record
from search.trials.trial import implausible
from search.trials.worker import WorkerSetup, run_and_record, worker_setup
from search.workloads import Workload, WorkloadSpec, load_workload, pick_device
from spaces import SearchSpace, rebuilt_config
from stages import PipelineConfig


# What a multi-fidelity Ray trial reports at each rung for Ray Tune's ASHA scheduler: its
# optimizer steps (the scheduler's time_attr) and the promotion rule's score (its metric).
ASHA_TIME = "optimizer_steps"
ASHA_METRIC = "promotion_score"
# Seconds an actor waits for a trial the scheduler stopped to record itself (see ray_trainable;
# at the end of a run Tune kills an actor that is still stopping after 10 s).
THREAD_TIMEOUT_S = 60
# Set while this worker process's trial waits in a rung's report for the scheduler's decision.
_AT_RUNG = threading.Event()


@dataclasses.dataclass
class AshaJudge:
    """Hands a rung's promotion score to Ray Tune's ASHA scheduler, which applies the rule's
    quantile cutoff over the trials at the rung itself, and stops the trial where the scheduler
    does or where the rule's other half, plausibility against the bound (no quantile can say
    that), does. Every result at a rung reaches the scheduler, as every result reaches the
    Optuna workers' rule."""

    stopped_by_ray: bool = False

    def __call__(
        self, steps: int, result: RungResult, earlier: Sequence[RungResult], required: float, calibration: Calibration
    ) -> str | None:
        _AT_RUNG.set()
        try:
            tune.report({ASHA_TIME: steps, ASHA_METRIC: promotion_score(result, required, calibration)})
        except SystemExit:  # how a Tune function trial's report ends when the scheduler stopped it
            self.stopped_by_ray = True
        finally:
            _AT_RUNG.clear()
        why = implausible(result, required, calibration)
        if why is None and self.stopped_by_ray:
            why = "not in the best third of the trials at this rung (stopped by Ray Tune's ASHAScheduler)"
        return why


def ray_trainable(job: RayJob) -> type[Trainable]:
    """``ray_trial`` for ``job`` as Tune's function trainable, whose actor, before it runs the
    next trial or stops, lets a trial the scheduler stopped at a rung record itself (pruned, with
    its rungs). That trial waits in its report until then; Tune's own stop does not wait for it
    (and reuse waits 2 s), so the actor could go with the trial left running in the study."""
    return finishing_stopped_trials(wrap_function(tune.with_parameters(ray_trial, job=job)))


def finishing_stopped_trials(base: type[Trainable]) -> type[Trainable]:
    """``base`` (a function trainable whose trials judge their rungs with ``AshaJudge``) whose
    actor, before it runs the next trial or stops, waits for a trial stopped at a rung to end."""

    class FinishingStoppedTrials(base):  # type: ignore[misc,valid-type]
        def reset_config(self, new_config: dict[str, Any]) -> bool:
            _finish_stopped_trial()
            return bool(super().reset_config(new_config))

        def cleanup(self) -> None:
            _finish_stopped_trial()
            super().cleanup()

    return FinishingStoppedTrials


def _finish_stopped_trial() -> None:
    if _AT_RUNG.is_set():  # only a trial at a rung: one mid-training is not waited for
        get_session().finish(timeout=THREAD_TIMEOUT_S)


@dataclasses.dataclass(frozen=True)
class RayJob:
    """What a Ray worker needs to run trials of one search (absolute paths: workers do not share
    the driver's working directory)."""

    settings: SearchSettings
    spec: WorkloadSpec
    studies_dir: Path
    run_id: str
    gpus_per_trial: float


@dataclasses.dataclass
class _Worker:
    """What a worker process builds once and reuses for every trial it runs."""

    storage: BaseStorage
    study_id: int
    setup: WorkerSetup

    @property
    def study(self) -> optuna.Study:
        return self.setup.study


_WORKLOADS: dict[tuple[WorkloadSpec, str], Workload] = {}
_WORKERS: dict[RayJob, _Worker] = {}


def _trial_device(job: RayJob) -> str:
    # With no GPU reserved, "auto" must not put the trial on a GPU Ray handed to another trial.
    if job.settings.device == "auto":
        return "cuda" if job.gpus_per_trial > 0 and ray.get_gpu_ids() else "cpu"
    return job.settings.device


def _worker(job: RayJob) -> _Worker:
    if job in _WORKERS:
        return _WORKERS[job]
    import torch

    settings = job.settings
    torch.set_num_threads(settings.threads)
    device = _trial_device(job)
    key = (job.spec, device)
    if key not in _WORKLOADS:
        _WORKLOADS[key] = load_workload(
            job.spec, device=pick_device(device), studies_dir=job.studies_dir, progress=False
        )
    storage = open_storage(settings.storage, create=False)
    study = optuna.load_study(
        study_name=settings.study, storage=storage, sampler=optuna.samplers.RandomSampler()
    )
    worker = _Worker(
        storage=storage,
        study_id=storage.get_study_id_from_name(settings.study),
        setup=worker_setup(
            study,
            StudyInfo.load(study),
            _WORKLOADS[key],
            threads=settings.threads,
            seed=settings.seed or 0,
            early_stop=settings.early_stop,
            skip_dominated=settings.skip_dominated,
            cache_dir=job.studies_dir / ".cache",
            multi_fidelity=STRATEGIES[settings.strategy or DEFAULT_STRATEGY].multi_fidelity,
        ),
    )
    _WORKERS[job] = worker
    return worker


def ray_trial(config: dict[str, Any], job: RayJob) -> None:
    """One Ray trial: open a study trial, run the pipeline for ``config``, record the outcome,
    and report the objective values to Ray's searcher (complete trials only). Under a
    multi-fidelity strategy it also reports each rung to Ray Tune's ASHA scheduler (AshaJudge)."""
    profile = config.get(PROFILE_KEY)
    params = {key: value for key, value in config.items() if key != PROFILE_KEY}
    worker = _worker(job)
    trial = _open_trial(worker, profile)
    TrialRecord(
        worker=worker_id(),
        ray_run=job.run_id,
        ray_trial=tune.get_context().get_trial_id(),
        ray_node=ray.get_runtime_context().get_node_id(),
    ).save(trial)

    def make_config() -> PipelineConfig:
        _set_params(worker, trial, job.settings.space, params)
        return rebuilt_config(job.settings.space, params, profile=profile)

    judge = AshaJudge()
    state, outcome = run_and_record(trial, worker.setup, make_config, profile=profile, judge=judge)
    if judge.stopped_by_ray:
        # Recorded: now end as Tune ends a trial it stopped (its report raised this), so the
        # actor is free at once; returning would wait on a report Tune no longer takes.
        raise SystemExit(0)
    if outcome is None:
        tune.report({OUTCOME: state})
        return
    tune.report({OUTCOME: "complete", **dict(zip(METRICS, outcome.values))})


def _open_trial(worker: _Worker, profile: str | None) -> optuna.Trial:
    """A RUNNING trial in the study for this Ray trial: the profile's queued (WAITING) trial when
    there is one, claimed as Optuna's own ``ask`` claims it, else a new trial."""
    storage = worker.storage
    if profile is not None:
        for t in worker.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if trial_record(t).profile != profile:
                continue
            trial_id = storage.get_trial_id_from_study_id_trial_number(worker.study_id, t.number)
            if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                return optuna.Trial(worker.study, trial_id)
    trial = optuna.Trial(worker.study, storage.create_new_trial(worker.study_id))
    if profile is not None:
        TrialRecord(profile=profile).save(trial)
    return trial


def _set_params(worker: _Worker, trial: optuna.Trial, space: SearchSpace, params: Mapping[str, Any]) -> None:
    """Record ``params`` with the distributions an Optuna trial of this space records."""
    trial_id = worker.storage.get_trial_id_from_study_id_trial_number(worker.study_id, trial.number)
    for name, distribution in distributions_for(space, params).items():
        value = params[name]
        worker.storage.set_trial_param(trial_id, name, distribution.to_internal_repr(value), distribution)
