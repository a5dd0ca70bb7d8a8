"""Study storage and the record format shared by the search drivers, report, show and export.

A study is an Optuna multi-objective study (maximise validation accuracy, maximise the compression
ratio on the target). What it was run for (workload, target, constraint, the teacher's measured
baseline) lives in study user attributes; what each trial did (config, metrics, per-stage records,
artifact path, failure reason) lives in trial user attributes. Both backends write the same format,
so ``report``, ``show`` and ``export`` work whichever ran the trials.
"""

from __future__ import annotations

import dataclasses
import fcntl
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial, TrialState

from objectives import Constraint
from search.errors import UserError, first_line

# Optuna logs every trial at INFO; the progress display says what matters.
optuna.logging.set_verbosity(optuna.logging.WARNING)

STUDIES_DIR = Path("studies")
DEFAULT_STORAGE = STUDIES_DIR / "mcaas.journal"
_RDB_SCHEMES = ("sqlite:", "postgresql:", "postgresql+", "mysql:", "mysql+")
# Seconds to wait for a database server before giving up (an unreachable host must not hang).
CONNECT_TIMEOUT_S = 10

# Keys of the study's user attributes.
WORKLOAD, TARGET, CONSTRAINT, BASELINE, BASELINE_ONNX, ARTIFACTS, SPACE = (
    "workload",
    "target",
    "constraint",
    "baseline",
    "baseline_onnx",
    "artifacts_dir",
    "space",
)


def storage_url(url: str | None) -> str:
    """The storage a study lives in: ``url`` as given, or the default journal file."""
    return url if url else str(DEFAULT_STORAGE)


def open_storage(url: str | None, *, create: bool) -> BaseStorage:
    """Open the study storage: an RDB URL (``sqlite:///x.db``, ``postgresql://...``) or a journal file.

    ``create=False`` (report, show, export, list) refuses a journal file that does not exist rather
    than silently creating an empty one.
    """
    url = storage_url(url)
    if url.startswith(_RDB_SCHEMES):
        if url.startswith("sqlite:///") and not create:
            _require_file(Path(url.removeprefix("sqlite:///")), url)
        try:
            return RDBStorage(url, engine_kwargs=rdb_engine_kwargs(url))
        except Exception as exc:  # SQLAlchemy raises many kinds for an unreachable database
            raise UserError(f"cannot open storage {url!r}: {first_line(exc)}") from None
    if "://" in url:
        raise UserError(
            f"unsupported storage URL {url!r}; use a journal file path (e.g. studies/x.journal), "
            "sqlite:///path.db, postgresql://... or mysql://..."
        )
    path = Path(url.removeprefix("journal:"))
    if not create:
        _require_file(path, url)
    elif path == DEFAULT_STORAGE:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise UserError(f"storage folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise UserError(f"storage {url!r} is a folder; expected a journal file such as {path / 'mcaas.journal'}")
    lock = FlockJournalLock(str(path))
    try:
        if path.is_file() and path.stat().st_size and not _starts_as_journal(path):
            raise ValueError("not a journal")  # never append logs to someone else's file
        repair_journal_tail(path, lock)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
    except OSError as exc:
        raise UserError(f"cannot open storage {url!r}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError):  # a line that is not one of Optuna's journal logs
        raise UserError(f"storage {url!r} is not an Optuna journal file (or it is damaged)") from None


def check_storage(url: str | None) -> None:
    """Fail fast on a storage that cannot be opened, before any work: a journal whose folder is
    missing, an unreachable database. Writes nothing to a journal (a database is connected to)."""
    url = storage_url(url)
    if url.startswith(_RDB_SCHEMES) or "://" in url:
        open_storage(url, create=True)
        return
    path = Path(url.removeprefix("journal:"))
    if path.is_dir():
        raise UserError(f"storage {url!r} is a folder; expected a journal file such as {path / 'mcaas.journal'}")
    if path.exists():
        open_storage(url, create=False)
    elif path != DEFAULT_STORAGE and not path.parent.is_dir():
        raise UserError(f"storage folder {str(path.parent)!r} does not exist")


class FlockJournalLock(JournalFileOpenLock):
    """The journal's write lock as an ``flock`` on a side file. Optuna's own locks are files that
    a killed writer leaves behind, so the next run would wait 30 s and warn; the kernel drops an
    flock when its holder dies. (Optuna's lock base class is private: this subclasses a public one
    and replaces all of it.)"""

    def __init__(self, journal: str) -> None:
        super().__init__(journal, grace_period=None)
        self._path = journal + ".flock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


_JOURNAL_LOG = b'{"op_code":'


def _starts_as_journal(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(_JOURNAL_LOG)) == _JOURNAL_LOG


def repair_journal_tail(path: Path, lock: FlockJournalLock) -> bool:
    """Cut a last log that a writer killed mid-append left without its newline; returns whether
    it did. Optuna would glue the next log onto it and then refuse the whole file. Only a file
    that is a journal is touched: any other file given as ``--storage`` stays as it is."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    if not _starts_as_journal(path):
        return False
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return False
    lock.acquire()
    try:
        with open(path, "rb+") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1
            # Another writer may have finished the line meanwhile; a cut log starts as every log.
            if data.endswith(b"\n") or end == 0 or not data[end:].startswith(b"{"):
                return False
            f.truncate(end)
            return True
    finally:
        lock.release()


def _require_file(path: Path, url: str) -> None:
    if not path.is_file():
        raise UserError(f"no study storage at {url!r} (run a search first, or pass --storage)")


def rdb_engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine arguments: SQLite waits for a lock held by a parallel worker instead of
    failing at once; a database server must answer within ``CONNECT_TIMEOUT_S``."""
    if url.startswith("sqlite:"):
        return {"connect_args": {"timeout": 60}}
    return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}


def load_study(name: str, storage: BaseStorage) -> optuna.Study:
    """An existing study, or a UserError listing the studies that do exist."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise UserError(f"no study named {name!r} in this storage; studies: {known}")
    return optuna.load_study(study_name=name, storage=storage)


@dataclasses.dataclass(frozen=True)
class StudyInfo:
    """What a study was run for; a rerun must match it to resume."""

    workload: dict[str, Any]
    target: str
    constraint: Constraint
    baseline: dict[str, float]
    baseline_onnx: str
    artifacts_dir: str
    space: list[list[str]] = dataclasses.field(default_factory=list)

    @property
    def teacher_acc(self) -> float:
        return float(self.baseline["val_acc"])

    def save(self, study: optuna.Study) -> None:
        # The baseline goes last: it marks the record complete (a run killed halfway through
        # saving leaves a study that the next run saves again, not one missing attributes).
        study.set_user_attr(WORKLOAD, self.workload)
        study.set_user_attr(TARGET, self.target)
        study.set_user_attr(CONSTRAINT, self.constraint.to_dict())
        study.set_user_attr(BASELINE_ONNX, self.baseline_onnx)
        study.set_user_attr(ARTIFACTS, self.artifacts_dir)
        study.set_user_attr(SPACE, self.space)
        study.set_user_attr(BASELINE, self.baseline)

    @classmethod
    def load(cls, study: optuna.Study) -> StudyInfo:
        attrs = study.user_attrs
        if BASELINE not in attrs:
            raise UserError(f"study {study.study_name!r} was not made by mcaas-search (no baseline)")
        return cls(
            workload=attrs[WORKLOAD],
            target=attrs[TARGET],
            constraint=Constraint.from_dict(attrs[CONSTRAINT]),
            baseline=attrs[BASELINE],
            baseline_onnx=attrs[BASELINE_ONNX],
            artifacts_dir=attrs[ARTIFACTS],
            space=attrs.get(SPACE, []),
        )

    def mismatch(self, workload: Mapping[str, Any], target: str, constraint: Constraint) -> str | None:
        """Why a rerun with these settings may not continue this study, or None if it may."""
        diffs = [
            f"{key}: stored {self.workload.get(key)!r}, given {workload.get(key)!r}"
            for key in sorted(set(self.workload) | set(workload))
            if self.workload.get(key) != workload.get(key)
        ]
        if target != self.target:
            diffs.append(f"target: stored {self.target!r}, given {target!r}")
        if constraint != self.constraint:
            diffs.append(
                f"constraint: stored {self.constraint.describe()!r}, given {constraint.describe()!r}"
            )
        return "; ".join(diffs) or None


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One trial as the report, show and export read it."""

    number: int
    state: str  # complete | pruned | failed | running | waiting
    profile: str | None
    config: dict[str, Any]
    metrics: dict[str, float]
    ratios: dict[str, float]
    violations: dict[str, float]
    stages: list[dict[str, Any]]
    artifact: str | None
    reason: str | None
    seconds: float | None
    values: tuple[float, ...] | None
    saved_s: float = 0.0  # a stopped trial: the training time its stop saved (estimated)

    @property
    def feasible(self) -> bool:
        return self.state == "complete" and all(v <= 0 for v in self.violations.values())

    def ratio(self, target: str) -> float:
        return self.ratios.get(target, math.nan)


_STATE_NAMES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def trial_record(trial: FrozenTrial) -> TrialRecord:
    attrs = trial.user_attrs
    seconds = (
        (trial.datetime_complete - trial.datetime_start).total_seconds()
        if trial.datetime_complete and trial.datetime_start
        else None
    )
    return TrialRecord(
        number=trial.number,
        state=_STATE_NAMES[trial.state],
        profile=attrs.get("profile"),
        config=attrs.get("config", {}),
        metrics=attrs.get("metrics", {}),
        ratios=attrs.get("ratios", {}),
        violations=attrs.get("violations", {}),
        stages=attrs.get("stages", []),
        artifact=attrs.get("artifact"),
        reason=attrs.get("reason"),
        seconds=seconds,
        values=tuple(trial.values) if trial.values else None,
        saved_s=float(attrs.get("saved_s", 0.0)),
    )


def trial_records(study: optuna.Study) -> list[TrialRecord]:
    return [trial_record(t) for t in study.get_trials(deepcopy=False)]
