"""Study storage and the record format shared by the search drivers, report, show and export.

A study is an Optuna multi-objective study (maximise validation accuracy, maximise the compression
ratio on the target). What it was run for (workload, target, constraint, the teacher's measured
baseline) lives in study user attributes; what each trial did (config, metrics, per-stage records,
artifact path, failure reason) lives in trial user attributes. Both backends write the same format,
so ``report``, ``show`` and ``export`` work whichever ran the trials.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from objectives import Constraint
from search.errors import UserError

STUDIES_DIR = Path("studies")
DEFAULT_STORAGE = STUDIES_DIR / "mcaas.journal"
_RDB_SCHEMES = ("sqlite:", "postgresql:", "postgresql+", "mysql:", "mysql+")

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
            return RDBStorage(url, engine_kwargs=_sqlite_kwargs(url))
        except Exception as exc:  # SQLAlchemy raises many kinds for an unreachable database
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"cannot open storage {url!r}: {first}") from None
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
    try:
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as exc:
        raise UserError(f"cannot open storage {url!r}: {exc.strerror or exc}") from None


def _require_file(path: Path, url: str) -> None:
    if not path.is_file():
        raise UserError(f"no study storage at {url!r} (run a search first, or pass --storage)")


def _sqlite_kwargs(url: str) -> dict[str, Any]:
    # Several worker processes write one SQLite file: wait for the lock instead of failing at once.
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}


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
        study.set_user_attr(WORKLOAD, self.workload)
        study.set_user_attr(TARGET, self.target)
        study.set_user_attr(CONSTRAINT, self.constraint.to_dict())
        study.set_user_attr(BASELINE, self.baseline)
        study.set_user_attr(BASELINE_ONNX, self.baseline_onnx)
        study.set_user_attr(ARTIFACTS, self.artifacts_dir)
        study.set_user_attr(SPACE, self.space)

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
    )


def trial_records(study: optuna.Study) -> list[TrialRecord]:
    return [trial_record(t) for t in study.get_trials(deepcopy=False)]
