"""A study's life across runs and workers: created or resumed, its trials claimed under a lock,
counted towards ``--trials``, and those whose worker is gone marked interrupted.

Both backends use these; it is the one place where a trial is marked interrupted.

On one machine the lock is a file lock and a dead worker is told by its pid. A study in a database
server (PostgreSQL) is shared by machines with no common folder: the lock is then the database's
own (an advisory lock, dropped by the server when its holder's connection dies), and a dead worker
is told by its trials' missing heartbeats.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.samplers import BaseSampler
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from objectives import metrics as m
from search.errors import UserError
from search.interrupts import stops_deferred
from search.study.records import (
    BASELINE,
    INTERRUPTED,
    StudyInfo,
    TrialRecord,
    trial_record,
    was_interrupted,
)
from search.study.storage import advisory_lock, open_storage
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
    # Under the lock that workers create and claim trials with: two runs starting together (on
    # two machines) record the study once and queue its profiles once; a trial with no owner is
    # orphaned.
    with ask_lock(study, info):
        if BASELINE in study.user_attrs:
            stored = StudyInfo.load(study)
            check_resumable(name, stored, info)
            info = stored
        else:
            info.save(study)
            with warnings.catch_warnings():  # experimental since Optuna 3.2, still the way to name them
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([m.VAL_ACC, f"{info.target}_ratio"])
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


def server_database(study: optuna.Study) -> RDBStorage | None:
    """The study's storage when it is a database server that several machines share (it then has
    heartbeats on, see ``storage.heartbeat_kwargs``); None for a journal file or SQLite."""
    # Optuna wraps an RDBStorage in a private cache layer that keeps it as ``_backend``.
    storage = getattr(study._storage, "_backend", study._storage)
    if isinstance(storage, RDBStorage) and storage.get_heartbeat_interval() is not None:
        return storage
    return None


@contextlib.contextmanager
def ask_lock(study: optuna.Study, info: StudyInfo) -> Iterator[None]:
    """The lock under which a worker counts the study's trials and claims a new one, so that
    ``--trials`` stays the study's total whatever the number of workers and machines."""
    database = server_database(study)
    if database is not None:
        if database.engine.dialect.name != "postgresql":
            raise UserError(
                f"a study shared through {database.engine.dialect.name} has no cross-machine lock here; "
                "use PostgreSQL (postgresql://...), or SQLite or a journal file on one machine"
            )
        with advisory_lock(database.engine, f"mcaas-search:{study.study_name}"):
            yield
        return
    path = Path(info.artifacts_dir) / ASK_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def heartbeat(study: optuna.Study, number: int) -> Iterator[None]:
    """While trial ``number`` runs, record its heartbeat every interval (database servers only):
    a trial whose heartbeats stop is taken by other workers as its worker's death."""
    database = server_database(study)
    if database is None:
        yield
        return
    interval = database.get_heartbeat_interval()
    study_id = database.get_study_id_from_name(study.study_name)
    trial_id = database.get_trial_id_from_study_id_trial_number(study_id, number)
    stop = threading.Event()

    def beat() -> None:
        while True:
            # A server restarting misses a beat or two; the next one reconnects (pool pre-ping).
            # Optuna re-raises a failed commit as StorageInternalError.
            with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
                database.record_heartbeat(trial_id)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def mark_interrupted(study: optuna.Study, number: int, why: str) -> bool:
    """Mark trial ``number`` failed as interrupted (replaced on resume) if it is still running;
    returns whether it was. Ctrl-C is held off so the reason and state are written together."""
    storage = study._storage
    with stops_deferred():
        study_id = storage.get_study_id_from_name(study.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
        if storage.get_trial(trial_id).state != TrialState.RUNNING:
            return False
        try:
            for key, value in TrialRecord(reason=f"{INTERRUPTED} ({why})").to_attrs().items():
                storage.set_trial_user_attr(trial_id, key, value)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:  # its worker (or another machine) finished it meanwhile
            return False
        return True


def fail_orphaned(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials whose worker is gone (kill -9, crash, a machine lost) as interrupted:
    on this host, those whose process is gone; in a database server, those whose heartbeats
    stopped; and those with no worker recorded: killed between creating the trial and claiming
    it (call this holding ``ask_lock``, so that no live worker is in that step)."""
    host = socket.gethostname()
    stale = _stale_numbers(study)
    failed = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial_record(t).worker
        if owner is None:
            why = "its worker was stopped before it claimed the trial"
        elif t.number in stale:
            why = f"worker {owner} sent no heartbeat for {stale[t.number]} s"
        else:
            owner_host, _, pid = owner.rpartition(":")
            if owner_host != host or not pid.isdigit() or _pid_alive(int(pid)):
                continue
            why = f"worker {owner} is gone"
        if mark_interrupted(study, t.number, why):
            failed.append(t.number)
    return failed


def _stale_numbers(study: optuna.Study) -> dict[int, int]:
    """Trial number -> grace period, for the running trials of a database-server study whose
    heartbeats stopped more than a grace period ago (none for other storages)."""
    database = server_database(study)
    if database is None:
        return {}
    study_id = database.get_study_id_from_name(study.study_name)
    # The heartbeat contract's query (BaseHeartbeat); Optuna's own fail_stale_trials would fail
    # them without the reason that makes them re-run.
    ids = database._get_stale_trial_ids(study_id)
    grace = database.grace_period or 2 * (database.get_heartbeat_interval() or 0)
    return {database.get_trial_number_from_id(i): grace for i in ids}


def awaited(study: optuna.Study) -> int:
    """Running trials that another live worker may still finish: those of this host (its dead
    ones were just failed by ``fail_orphaned``), and in a database server all of them (a dead
    machine's go stale). A worker that finds the study's total reached waits for these before it
    leaves, so that a trial its peer dies in is run again and the study ends with its total."""
    host = socket.gethostname()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if server_database(study) is not None:
        return len(running)
    return sum(str(trial_record(t).worker or "").rpartition(":")[0] == host for t in running)


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
        trial_record(t).profile
        for t in study.get_trials(deepcopy=False)
        if not was_interrupted(t) and (queued_count or t.state != TrialState.WAITING)
    }
    return [name for name in named_configs(space) if name not in present]


def queue_profiles(study: optuna.Study, space: SearchSpace) -> None:
    """Queue each named config (MCaaS profiles, quantization alone) that has neither run nor is
    waiting."""
    for name in profiles_to_run(study, space):
        study.enqueue_trial(profile_params(name, space), user_attrs=TrialRecord(profile=name).to_attrs())


def counted(study: optuna.Study) -> int:
    """Trials that count towards ``--trials``: done or running; interrupted ones are replaced."""
    return sum(trial_record(t).counted for t in study.get_trials(deepcopy=False))


def counted_samples(study: optuna.Study) -> int:
    """Training samples the study's counted trials recorded: its compute so far (a running
    trial's count once it ends; interrupted ones, replaced, count none)."""
    return sum(r.samples_seen for r in map(trial_record, study.get_trials(deepcopy=False)) if r.counted)
