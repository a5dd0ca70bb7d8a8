"""The Ray Tune driver: runs a study's remaining trials as a Tune experiment and, whatever way
it ends, marks the trials it left running as interrupted."""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, ClassVar

import optuna
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from objectives import REDUCTION
from search.backends.ray_tune.cluster import (
    absolute_spec,
    absolute_storage,
    check_fits,
    connected,
    quiet_env,
)
from search.backends.ray_tune.searcher import (
    METRICS,
    SEARCHER_STUDY,
    DefineByRun,
    StudySearch,
    optuna_quiet,
    searcher_storage,
)
from search.backends.ray_tune.trials import ASHA_METRIC, ASHA_TIME, RayJob, ray_trainable
from search.backends.settings import DEFAULT_STRATEGY, STRATEGIES, SearchSettings
from search.errors import UserError
from search.study import (
    STUDIES_DIR,
    StudyInfo,
    counted,
    mark_interrupted,
    open_storage,
    profiles_to_run,
    trial_record,
)
from search.trials.trial import top_budget_steps
from search.workloads import Workload, WorkloadSpec


@dataclasses.dataclass(frozen=True)
class RayBackend:
    """Runs trials on Ray Tune: a local Ray, or the cluster at ``address``, with ``cpus_per_trial``
    and ``gpus_per_trial`` reserved for each trial."""

    name: ClassVar[str] = "ray"
    address: str | None = None
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0

    def __post_init__(self) -> None:
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise UserError(
                f"--cpus-per-trial must be > 0 and --gpus-per-trial >= 0, but got "
                f"(cpus_per_trial={self.cpus_per_trial}, gpus_per_trial={self.gpus_per_trial})"
            )

    def run(self, settings: SearchSettings, workload: Workload, *, deadline: float | None) -> None:
        run(
            settings,
            workload.spec,
            address=self.address,
            cpus_per_trial=self.cpus_per_trial,
            gpus_per_trial=self.gpus_per_trial,
            deadline=deadline,
            top_steps=top_budget_steps(settings.space, int(workload.data.train.x.shape[0])),
        )


def run(
    settings: SearchSettings,
    spec: WorkloadSpec,
    *,
    address: str | None,
    cpus_per_trial: float,
    gpus_per_trial: float,
    deadline: float | None,
    top_steps: int | None = None,
) -> None:
    """Run the study's remaining trials on Ray Tune (the study must exist: ``create_or_resume``).

    Starts a local Ray unless ``address`` names a cluster to join (or Ray is already running in
    this process, which is then used and left running). Returns when the study holds
    ``settings.trials`` counted trials or ``deadline`` (epoch seconds) passes; Ctrl-C raises
    KeyboardInterrupt after Ray stopped, with the unfinished trials marked interrupted.
    Under a multi-fidelity strategy Ray Tune's ASHA scheduler decides at each rung which trials
    train on, up to ``top_steps`` (the most steps a trial trains; required then).
    """
    if settings.max_samples is not None:
        # Tune starts its trials up front: a budget in samples is known only as trials end.
        raise UserError("a compute budget (max_samples) is run by the optuna backend only, not by ray")
    settings = dataclasses.replace(settings, storage=absolute_storage(settings.storage))
    storage = open_storage(settings.storage, create=False)
    study = optuna.load_study(
        study_name=settings.study, storage=storage, sampler=optuna.samplers.RandomSampler()
    )
    info = StudyInfo.load(study)
    remaining = settings.trials - counted(study)
    if remaining <= 0 or (deadline is not None and time.time() >= deadline):
        return
    job = RayJob(
        settings=settings,
        spec=absolute_spec(spec),
        studies_dir=STUDIES_DIR.resolve(),
        run_id=uuid.uuid4().hex[:12],
        gpus_per_trial=gpus_per_trial,
    )
    profiles = profiles_to_run(study, settings.space, queued_count=False) if settings.profiles else []
    try:
        with quiet_env(), connected(address):
            check_fits(cpus_per_trial, gpus_per_trial)
            _fit(job, study, info, profiles, remaining, deadline, cpus_per_trial, gpus_per_trial, top_steps)
    finally:
        # After Ray stopped, so no worker finishes a trial this marks.
        _fail_unfinished(study, job.run_id)


def _fit(
    job: RayJob,
    study: optuna.Study,
    info: StudyInfo,
    profiles: list[str],
    remaining: int,
    deadline: float | None,
    cpus_per_trial: float,
    gpus_per_trial: float,
    top_steps: int | None,
) -> None:
    settings = job.settings
    with optuna_quiet():
        searcher = StudySearch(
            space=DefineByRun(settings.space),
            metric=list(METRICS),
            mode=["max", "max"],
            # Offset by the trials so far: a resumed search draws new values, reproducibly.
            sampler=settings.make_sampler(len(study.get_trials(deepcopy=False))),
            storage=searcher_storage(study, settings.space, profiles),
            study_name=SEARCHER_STUDY,
            deadline=deadline,
        )
    multi_fidelity = STRATEGIES[settings.strategy or DEFAULT_STRATEGY].multi_fidelity
    trainable = tune.with_resources(ray_trainable(job), {"cpu": cpus_per_trial, "gpu": gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=remaining,
            max_concurrent_trials=settings.jobs,
            reuse_actors=True,  # a worker process loads the workload once and runs many trials
            trial_dirname_creator=_trial_dirname,
            scheduler=asha_scheduler(top_steps, info.first_rung) if multi_fidelity else None,
        ),
        run_config=tune.RunConfig(
            storage_path=str(Path(info.artifacts_dir, "ray").resolve()),
            name=f"{settings.study}-{job.run_id}",
            verbose=0,
            log_to_file=False,
        ),
    )
    ray_logger = logging.getLogger("ray")
    level = ray_logger.level
    # Also quiet when Ray was started by someone else: Tune logs, for one, that it found no
    # result files (we turned them off) when it gathers the results.
    ray_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # TPE over a long study can take over a second to ask; Ray warns about that as if
            # the define-by-run function trained a model.
            warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space`")
            tuner.fit()
    finally:
        ray_logger.setLevel(level)


def asha_scheduler(top_steps: int | None, first_rung: int) -> ASHAScheduler:
    """Ray Tune's ASHA on the Optuna workers' rungs (``first_rung``, the study's, then
    x``REDUCTION``, up to ``top_steps``) and the promotion rule's score: it keeps the best third
    at each rung, as the rule's quantile cutoff does; the trial itself stops for the bound (see
    trials.AshaJudge)."""
    if top_steps is None or top_steps < 1:
        raise ValueError(f"a multi-fidelity Ray run needs its top budget in steps, but got {top_steps!r}")
    # An implausible trial reports no score (NaN), which the cutoff's nanpercentile leaves out; a
    # rung whose trials so far were all implausible has no cutoff (NaN: every plausible one goes
    # on), which numpy announces with a warning per result.
    warnings.filterwarnings("ignore", message="All-NaN slice encountered", category=RuntimeWarning)
    return ASHAScheduler(
        time_attr=ASHA_TIME,
        metric=ASHA_METRIC,
        mode="max",
        grace_period=first_rung,
        reduction_factor=REDUCTION,
        max_t=max(top_steps, first_rung),
    )


def _trial_dirname(trial: Any) -> str:
    return str(trial.trial_id)


def _fail_unfinished(study: optuna.Study, run_id: str) -> None:
    """Mark this run's trials still RUNNING (their Ray trial was stopped or its worker died) as
    interrupted: they are replaced on the next run, as in the Optuna backend."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial_record(t).ray_run == run_id:
            mark_interrupted(study, t.number, "its Ray trial stopped without a result")


