"""The Optuna backend: a persistent, resumable, constrained multi-objective study.

Trials are asked and told explicitly (not ``study.optimize``) so that ``--trials N`` is the study's
total across reruns and workers: the count and the ask happen under a file lock, interrupted trials
(their worker died) are marked failed and replaced, and the fixed profiles are re-queued until each
has run once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import multiprocessing
import os
import signal
import socket
import statistics
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
from optuna.trial import TrialState

from objectives import EarlyStop, Point, pareto_front
from search.trials.context import CACHE_DIR, baseline, make_context, trial_context
from search.errors import UserError
from search.interrupts import redeliver_lost_interrupts, stops_deferred
from search.study.storage import StudyInfo, open_storage, trial_record
from search.trials.trial import Scoring, TrialOutcome, TrialStopped, run_trial
from search.workloads.workload import Workload, WorkloadSpec, load_workload, pick_device
from spaces import PROFILES, SearchSpace, profile_params
from stages import Context
from stages.config import PipelineConfig

INTERRUPTED = "interrupted"
# Accuracy after pruning recovers mostly late in a cosine schedule: give a trial half its
# distillation budget, then stop it only when it is far (20 pt, shrinking to 0) below the bound.
EARLY_STOP = EarlyStop(grace=0.5, slack_points=20.0)


def _samplers(seed: int | None, trials: int) -> dict[str, Callable[[], optuna.samplers.BaseSampler]]:
    startup = max(4, min(10, trials // 3))
    return {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(
            seed=seed, population_size=max(4, min(50, trials // 3))
        ),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }


SAMPLERS = tuple(_samplers(0, 10))


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """Everything a worker needs to run trials of one study (picklable for worker processes)."""

    study: str
    storage: str | None
    trials: int
    space: SearchSpace
    sampler: str = "tpe"
    seed: int | None = 0
    timeout_s: float | None = None
    jobs: int = 1
    threads: int = 1
    profiles: bool = True
    early_stop: bool = True
    skip_dominated: bool = True
    device: str = "auto"

    def make_sampler(self, worker: int = 0) -> optuna.samplers.BaseSampler:
        seed = None if self.seed is None else self.seed + worker
        try:
            return _samplers(seed, self.trials)[self.sampler]()
        except KeyError:
            raise UserError(
                f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}"
            ) from None


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed worker that its parent has not reaped yet (a zombie) is gone all the same.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _stop_requested(signum: int, frame: object) -> None:
    """A worker process's SIGTERM handler: the parent asks it to stop, as Ctrl-C stops a search."""
    raise KeyboardInterrupt


def _fail_if_running(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    with stops_deferred():
        storage = study._storage
        if storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
            storage.set_trial_user_attr(trial._trial_id, "reason", reason)
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)


def create_or_resume(settings: SearchSettings, info: StudyInfo) -> optuna.Study:
    """Open the study (checking it was run for the same workload, target and constraint), mark
    trials whose worker died as failed, and queue the fixed profiles that have not run yet."""
    storage = open_storage(settings.storage, create=True)
    study = optuna.create_study(
        study_name=settings.study,
        storage=storage,
        directions=["maximize", "maximize"],
        sampler=settings.make_sampler(),
        load_if_exists=True,
    )
    if "baseline" in study.user_attrs:
        stored = StudyInfo.load(study)
        check_resumable(settings.study, stored, info)
    else:
        info.save(study)
        with warnings.catch_warnings():  # experimental since Optuna 3.2, still the way to name them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["val_acc", f"{info.target}_ratio"])
    # Under the lock that workers create and claim trials with: a trial with no owner is orphaned.
    with _locked(Path(StudyInfo.load(study).artifacts_dir) / ".ask.lock"):
        fail_interrupted(study)
    if settings.profiles:
        queue_profiles(study, settings.space)
    return study


def check_resumable(name: str, stored: StudyInfo, info: StudyInfo) -> None:
    """Refuse to continue study ``name`` for another workload, target or constraint."""
    why = stored.mismatch(info.workload, info.target, info.constraint)
    if why:
        raise UserError(
            f"study {name!r} was run for other settings ({why}); "
            "use another --study name, or the same settings to resume it"
        )


def fail_interrupted(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials whose worker process on this host is gone (kill -9, crash) as failed,
    and those with no worker recorded: killed between creating the trial and claiming it (call
    this holding the ask lock, so that no live worker is in that step)."""
    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("worker")
        if owner is None:
            why = f"{INTERRUPTED} (its worker was stopped before it claimed the trial)"
        else:
            owner_host, _, pid = owner.rpartition(":")
            if owner_host != host or not pid.isdigit() or _pid_alive(int(pid)):
                continue
            why = f"{INTERRUPTED} (worker {owner} is gone)"
        study._storage.set_trial_user_attr(t._trial_id, "reason", why)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        failed.append(t.number)
    return failed


def interrupted(reason: str | None) -> bool:
    """Whether a failed trial's ``reason`` says it was interrupted (it is replaced on resume)."""
    return str(reason or "").startswith(INTERRUPTED)


def was_interrupted(t: optuna.trial.FrozenTrial) -> bool:
    return t.state == TrialState.FAIL and interrupted(t.user_attrs.get("reason"))


def queue_profiles(study: optuna.Study, space: SearchSpace) -> None:
    """Queue each MCaaS profile that has neither run nor is waiting (an interrupted one runs again)."""
    present = {
        t.user_attrs.get("profile")
        for t in study.get_trials(deepcopy=False)
        if not was_interrupted(t)
    }
    for name in PROFILES:
        if name not in present:
            study.enqueue_trial(profile_params(name, space), user_attrs={"profile": name})


def counted(study: optuna.Study) -> int:
    """Trials that count towards ``--trials``: done or running; interrupted ones are replaced."""
    return sum(
        1
        for t in study.get_trials(deepcopy=False)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        or (t.state == TrialState.FAIL and not was_interrupted(t))
    )


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class LiveStudyView:
    """The live study as a running trial sees it (see search.trials.trial.StudyView)."""

    def __init__(self, study: optuna.Study, info: StudyInfo) -> None:
        self.study, self.info = study, info

    def _complete(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))

    def feasible_front(self) -> list[Point]:
        points = []
        for t in self._complete():
            r = trial_record(t)
            if self.info.target in r.ratios:
                points.append(Point(t.number, r.metrics["val_acc"], r.ratios[self.info.target], r.feasible))
        return pareto_front(points)

    def median_trial_seconds(self) -> float:
        secs = [t.user_attrs["seconds"] for t in self._complete() if "seconds" in t.user_attrs]
        return statistics.median(secs) if secs else 0.0


@dataclasses.dataclass
class WorkerSetup:
    """What a worker (a process here, or a Ray actor) needs to run trials of a study."""

    study: optuna.Study
    info: StudyInfo
    base: Context
    scoring: Scoring
    view: LiveStudyView
    artifacts: Path


def worker_setup(
    settings: SearchSettings,
    workload: Workload,
    study: optuna.Study,
    *,
    cache_dir: Path = CACHE_DIR,
) -> WorkerSetup:
    """Build a worker's context (teacher logits from the shared cache), scoring and study view."""
    info = StudyInfo.load(study)
    artifacts = Path(info.artifacts_dir)
    base = make_context(
        workload, artifacts / "trials", threads=settings.threads, seed=settings.seed or 0, cache_dir=cache_dir
    )
    base.baseline_onnx = Path(info.baseline_onnx)
    if not base.baseline_onnx.exists():
        baseline(base, artifacts / "baseline")
    scoring = Scoring(
        target=info.target,
        constraint=info.constraint,
        baseline=info.baseline,
        early_stop=EARLY_STOP if settings.early_stop else None,
        skip_dominated=settings.skip_dominated,
    )
    return WorkerSetup(study, info, base, scoring, LiveStudyView(study, info), artifacts)


def run_worker(
    settings: SearchSettings,
    workload: Workload,
    *,
    worker: int = 0,
    deadline: float | None = None,
) -> None:
    """Ask, run and tell trials until the study holds ``settings.trials`` counted trials."""
    study = optuna.load_study(study_name=settings.study, storage=open_storage(settings.storage, create=False))
    # Seeded by worker and by the trials already there, so a resumed search does not re-draw
    # the values it drew before the interruption.
    study.sampler = settings.make_sampler(worker + len(study.trials))
    setup = worker_setup(settings, workload, study)
    while deadline is None or time.time() < deadline:
        trial = None
        try:
            with stops_deferred(), _locked(setup.artifacts / ".ask.lock"):
                if counted(study) >= settings.trials:
                    return
                trial = study.ask()
                trial.set_user_attr("worker", worker_id())
            _run_one(trial, settings.space, setup)
        except KeyboardInterrupt:
            if trial is not None:  # Ctrl-C outside the trial's own handler (claiming, telling)
                _fail_if_running(study, trial, f"{INTERRUPTED} (Ctrl-C)")
            raise


def _run_one(trial: optuna.Trial, space: SearchSpace, setup: WorkerSetup) -> None:
    run_and_record(trial, setup, lambda: space.suggest(trial), profile=trial.user_attrs.get("profile"))


def run_and_record(
    trial: optuna.Trial,
    setup: WorkerSetup,
    make_config: Callable[[], PipelineConfig],
    *,
    profile: str | None,
) -> tuple[str, TrialOutcome | None]:
    """Run one trial and record it in the study: complete with its constraints and attributes,
    pruned (stopped early) with the reason and time saved, or failed with the reason.

    Shared by both backends. Returns the state name and, for a complete trial, its outcome.
    Ctrl-C marks the trial failed as interrupted (it is replaced on resume) and propagates.
    """
    study = setup.study
    try:
        config = make_config()
        trial.set_user_attr("config", config.to_flat())
        ctx = trial_context(setup.base, setup.artifacts / "trials" / str(trial.number))
        outcome = run_trial(config, ctx, setup.scoring, setup.view, stop_early=profile is None)
    except TrialStopped as stop:
        trial.set_user_attr("reason", str(stop))
        trial.set_user_attr("saved_s", stop.saved_s)
        study.tell(trial, state=TrialState.PRUNED)
        return "pruned", None
    except KeyboardInterrupt:
        trial.set_user_attr("reason", f"{INTERRUPTED} (Ctrl-C)")
        study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as exc:  # a failing trial is recorded with its reason; the study goes on
        trial.set_user_attr("reason", failure_reason(exc))
        study.tell(trial, state=TrialState.FAIL)
        return "failed", None
    for key, value in outcome.constraints.items():
        trial.set_constraint(key, value)
    for key, value in outcome.attrs.items():
        trial.set_user_attr(key, value)
    study.tell(trial, list(outcome.values))
    return "complete", outcome


def failure_reason(exc: BaseException) -> str:
    """One line saying why a trial failed, with where it was raised."""
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return f"out of memory: {exc}"
    where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    place = f" (at {Path(where.filename).name}:{where.lineno})" if where else ""
    return f"{type(exc).__name__}: {exc}{place}"


def _worker_process(settings: SearchSettings, spec: WorkloadSpec, worker: int, deadline: float | None) -> None:
    # Ctrl-C is ignored here (inherited, see run_workers): the parent alone takes it, then asks
    # each worker once, with SIGTERM, to stop.
    signal.signal(signal.SIGTERM, _stop_requested)
    try:
        with redeliver_lost_interrupts(signal.SIGTERM):
            import torch

            torch.set_num_threads(settings.threads)
            workload = load_workload(spec, device=pick_device(settings.device), progress=False)
            run_worker(settings, workload, worker=worker, deadline=deadline)
    except KeyboardInterrupt:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run_workers(settings: SearchSettings, spec: WorkloadSpec, deadline: float | None) -> list[multiprocessing.Process]:
    """Start ``settings.jobs`` worker processes (spawned: torch threads split between them)."""
    mp = multiprocessing.get_context("spawn")
    procs = [
        mp.Process(target=_worker_process, args=(settings, spec, i, deadline), daemon=False)
        for i in range(settings.jobs)
    ]
    # Workers inherit an ignored SIGINT (a handler would not survive exec): a terminal's Ctrl-C
    # reaches the whole process group, and a worker must not stop before the parent says so.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for p in procs:
            p.start()
    finally:
        signal.signal(signal.SIGINT, previous)
    return procs


def stop_workers(procs: list[multiprocessing.Process], grace_s: float = 60.0) -> None:
    """After Ctrl-C: ask each worker once to stop; each records its running trial as interrupted
    and exits. One that has not after ``grace_s`` is killed (the next run marks its trial)."""
    try:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.join(timeout=grace_s)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5.0)
