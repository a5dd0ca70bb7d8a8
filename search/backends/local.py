"""The local backend: Optuna's ask/tell in this process (``--jobs 1``) or in ``--jobs N`` spawned
worker processes, all sharing the study storage.

Trials are asked and told explicitly (not ``study.optimize``) so that ``--trials N`` is the study's
total across reruns and workers: the count and the ask happen under the study's ask lock.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import signal
import time
from typing import ClassVar

import optuna

from search.backends.settings import DEFAULT_STRATEGY, STRATEGIES, SearchSettings
from search.interrupts import redeliver_lost_interrupts, stops_deferred
from search.study import (
    ask_lock,
    awaited,
    counted,
    counted_samples,
    fail_orphaned,
    mark_interrupted,
    open_storage,
    worker_id,
)
from search.study.lifecycle import server_database
from search.study.records import StudyInfo, TrialRecord
from search.study.storage import STUDIES_DIR
from search.trials.worker import requeue_interrupted, run_and_record, worker_setup
from search.workloads import Workload, WorkloadSpec, load_workload, pick_device
from spaces import trial_config

# How often a worker that reached the study's total looks again at its peers' running trials.
AWAIT_S = 1.0


@dataclasses.dataclass(frozen=True)
class OptunaBackend:
    """Runs trials in this process, or in ``settings.jobs`` worker processes."""

    name: ClassVar[str] = "optuna"

    def run(self, settings: SearchSettings, workload: Workload, *, deadline: float | None) -> None:
        if settings.jobs == 1:
            run_worker(settings, workload, deadline=deadline)
            return
        procs = run_workers(settings, workload.spec, deadline)
        try:
            for p in procs:
                p.join()
        except KeyboardInterrupt:
            stop_workers(procs)
            raise


def run_worker(
    settings: SearchSettings,
    workload: Workload,
    *,
    worker: int = 0,
    deadline: float | None = None,
) -> None:
    """Ask, run and tell trials until the study holds ``settings.trials`` counted trials (or
    they have seen ``settings.max_samples`` training samples: checked between trials). When
    the total is reached while other workers still run trials, wait for them: one that dies is
    failed as interrupted (its pid gone, or its heartbeats stopped) and its trial run again."""
    study = optuna.load_study(study_name=settings.study, storage=open_storage(settings.storage, create=False))
    # Seeded by worker and by the trials already there, so a resumed search does not re-draw
    # the values it drew before the interruption.
    study.sampler = settings.make_sampler(worker + len(study.trials))
    info = StudyInfo.load(study)
    # A study in a database server may be run from machines with no common folder: each writes
    # its trial files in its own working folder (and uploads them with --artifacts).
    artifacts = (STUDIES_DIR / settings.study).resolve() if server_database(study) is not None else None
    setup = worker_setup(
        study,
        info,
        workload,
        artifacts=artifacts,
        threads=settings.threads,
        seed=settings.seed or 0,
        early_stop=settings.early_stop,
        skip_dominated=settings.skip_dominated,
        multi_fidelity=STRATEGIES[settings.strategy or DEFAULT_STRATEGY].multi_fidelity,
    )
    while deadline is None or time.time() < deadline:
        trial = None
        try:
            with stops_deferred(), ask_lock(study, info):
                fail_orphaned(study)
                if setup.multi_fidelity:
                    requeue_interrupted(study)
                if counted(study) < settings.trials and not spent(study, settings):
                    trial = study.ask()
                    TrialRecord(worker=worker_id()).save(trial)
                elif not awaited(study):
                    return
            if trial is None:
                time.sleep(AWAIT_S)
                continue
            profile = TrialRecord.from_attrs(trial.user_attrs).profile
            run_and_record(
                trial, setup, lambda: trial_config(settings.space, trial, profile=profile), profile=profile
            )
        except KeyboardInterrupt:
            if trial is not None:  # Ctrl-C outside the trial's own handler (claiming, telling)
                mark_interrupted(study, trial.number, "Ctrl-C")
            raise


def spent(study: optuna.Study, settings: SearchSettings) -> bool:
    """Whether the study has used its compute budget (``settings.max_samples``), if it has one."""
    return settings.max_samples is not None and counted_samples(study) >= settings.max_samples


def _stop_requested(signum: int, frame: object) -> None:
    """A worker process's SIGTERM handler: the parent asks it to stop, as Ctrl-C stops a search."""
    raise KeyboardInterrupt


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
