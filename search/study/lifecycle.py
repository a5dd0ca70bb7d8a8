"""A study's life across runs and workers: created or resumed, its trials claimed under a lock,
counted towards ``--trials``, and those whose worker is gone marked interrupted.

Both backends use these; it is the one place where a trial is marked interrupted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
from optuna.samplers import BaseSampler
from optuna.trial import TrialState

from objectives import metrics as m
from search.errors import UserError
from search.interrupts import stops_deferred
from search.study.records import (
    BASELINE,
    INTERRUPTED,
    PROFILE,
    REASON,
    WORKER,
    StudyInfo,
    trial_record,
    was_interrupted,
)
from search.study.storage import open_storage
from spaces import SearchSpace, named_configs, profile_params

ASK_LOCK = ".ask.lock"


def worker_id() -> str:
    """``host:pid`` of this process, recorded on each trial it claims."""
    return f"{socket.gethostname()}:{os.getpid()}"


def create_or_resume(
    name: str,
    storage: str | None,
    info: StudyInfo,
    *,
    sampler: BaseSampler,
    profiles: SearchSpace | None = None,
) -> tuple[optuna.Study, StudyInfo]:
    """Open study ``name`` (refusing one run for another workload, target or constraint) or
    create it with ``info``; mark trials whose worker died as interrupted; queue the fixed
    profiles of the ``profiles`` space that have not run yet. Returns the study and its stored
    record (which keeps the first run's baseline)."""
    study = optuna.create_study(
        study_name=name,
        storage=open_storage(storage, create=True),
        directions=["maximize", "maximize"],
        sampler=sampler,
        load_if_exists=True,
    )
    if BASELINE in study.user_attrs:
        stored = StudyInfo.load(study)
        check_resumable(name, stored, info)
        info = stored
    else:
        info.save(study)
        with warnings.catch_warnings():  # experimental since Optuna 3.2, still the way to name them
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([m.VAL_ACC, f"{info.target}_ratio"])
    # Under the lock that workers create and claim trials with: a trial with no owner is orphaned.
    with ask_lock(info):
        fail_orphaned(study)
    if profiles is not None:
        queue_profiles(study, profiles)
    return study, info


def check_resumable(name: str, stored: StudyInfo, info: StudyInfo) -> None:
    """Refuse to continue study ``name`` for another workload, target or constraint."""
    why = stored.mismatch(info.workload, info.target, info.constraint)
    if why:
        raise UserError(
            f"study {name!r} was run for other settings ({why}); "
            "use another --study name, or the same settings to resume it"
        )


@contextlib.contextmanager
def ask_lock(info: StudyInfo) -> Iterator[None]:
    """The lock under which a worker counts the study's trials and claims a new one, so that
    ``--trials`` stays the study's total whatever the number of workers."""
    path = Path(info.artifacts_dir) / ASK_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mark_interrupted(study: optuna.Study, number: int, why: str) -> bool:
    """Mark trial ``number`` failed as interrupted (replaced on resume) if it is still running;
    returns whether it was. Ctrl-C is held off so the reason and state are written together."""
    storage = study._storage
    with stops_deferred():
        study_id = storage.get_study_id_from_name(study.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        if storage.get_trial(trial_id).state != TrialState.RUNNING:
            return False
        storage.set_trial_user_attr(trial_id, REASON, f"{INTERRUPTED} ({why})")
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        return True


def fail_orphaned(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials whose worker process on this host is gone (kill -9, crash) as
    interrupted, and those with no worker recorded: killed between creating the trial and
    claiming it (call this holding ``ask_lock``, so that no live worker is in that step)."""
    host = socket.gethostname()
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get(WORKER)
        if owner is None:
            why = "its worker was stopped before it claimed the trial"
        else:
            owner_host, _, pid = owner.rpartition(":")
            if owner_host != host or not pid.isdigit() or _pid_alive(int(pid)):
                continue
            why = f"worker {owner} is gone"
        if mark_interrupted(study, t.number, why):
            failed.append(t.number)
    return failed


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


def profiles_to_run(study: optuna.Study, space: SearchSpace, *, queued_count: bool = True) -> list[str]:
    """The named configs of ``space`` (MCaaS profiles, then quantization alone) with no trial that
    ran or runs (an interrupted one runs again). A queued (waiting) trial counts as present
    unless ``queued_count`` is False (a backend that asks its own sampler must still run it)."""
    present = {
        t.user_attrs.get(PROFILE)
        for t in study.get_trials(deepcopy=False)
        if not was_interrupted(t) and (queued_count or t.state != TrialState.WAITING)
    }
    return [name for name in named_configs(space) if name not in present]


def queue_profiles(study: optuna.Study, space: SearchSpace) -> None:
    """Queue each named config (MCaaS profiles, quantization alone) that has neither run nor is
    waiting."""
    for name in profiles_to_run(study, space):
        study.enqueue_trial(profile_params(name, space), user_attrs={PROFILE: name})


def counted(study: optuna.Study) -> int:
    """Trials that count towards ``--trials``: done or running; interrupted ones are replaced."""
    return sum(trial_record(t).counted for t in study.get_trials(deepcopy=False))
