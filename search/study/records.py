"""The record format every part of mcaas-search reads and writes.

A study is an Optuna multi-objective study (maximise validation accuracy, maximise the compression
ratio on the target). What it was run for (workload, target, constraint, the teacher's measured
baseline) lives in study user attributes (``StudyInfo``); what each trial did (config, metrics,
per-stage records, artifact path, failure reason) lives in trial user attributes
(``TrialRecord``). Both backends write the same format, so ``report``, ``show`` and ``export``
work whichever ran the trials.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives import Constraint
from objectives import metrics as m
from search.errors import UserError

# Keys of the study's user attributes.
WORKLOAD, TARGET, CONSTRAINT, BASELINE, BASELINE_ONNX, ARTIFACTS, SPACE, ANALYSIS, STRATEGY, FIRST_RUNG = (
    "workload",
    "target",
    "constraint",
    "baseline",
    "baseline_onnx",
    "artifacts_dir",
    "space",
    "analysis",
    "strategy",
    "first_rung",
)

# The first rung, in optimizer steps, of a multi-fidelity study that did not record its own (made
# before rungs started at the space's floor): spaces.MIN_STEPS, which those studies judged at.
LEGACY_FIRST_RUNG = 120


# A failed trial whose reason starts so was interrupted (its worker was stopped or died): it is
# not counted towards --trials and a resumed search replaces it.
INTERRUPTED = "interrupted"


def is_interrupted(reason: str | None) -> bool:
    """Whether a failed trial's ``reason`` says it was interrupted."""
    return str(reason or "").startswith(INTERRUPTED)


def was_interrupted(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and is_interrupted(TrialRecord.from_attrs(trial.user_attrs).reason)


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
    # The pre-flight analysis of the teacher (search.workloads.analysis.Analysis.to_dict());
    # empty for studies made before it existed.
    analysis: dict[str, Any] = dataclasses.field(default_factory=dict)
    # How the study spends its training budget (search.backends.settings.STRATEGIES); studies
    # made before there was a choice trained every trial in full.
    strategy: str = "full"
    # Where a multi-fidelity trial is first judged, in optimizer steps (its later rungs are
    # x objectives.REDUCTION): fixed when the study is created, so a resumed study keeps the
    # rungs its trials were judged at (see search.trials.trial.first_rung_steps).
    first_rung: int = LEGACY_FIRST_RUNG

    @property
    def teacher_acc(self) -> float:
        return float(self.baseline[m.VAL_ACC])

    def save(self, study: optuna.Study) -> None:
        # The baseline goes last: it marks the record complete (a run killed halfway through
        # saving leaves a study that the next run saves again, not one missing attributes).
        study.set_user_attr(WORKLOAD, self.workload)
        study.set_user_attr(TARGET, self.target)
        study.set_user_attr(CONSTRAINT, self.constraint.to_dict())
        study.set_user_attr(BASELINE_ONNX, self.baseline_onnx)
        study.set_user_attr(ARTIFACTS, self.artifacts_dir)
        study.set_user_attr(SPACE, self.space)
        study.set_user_attr(ANALYSIS, self.analysis)
        study.set_user_attr(STRATEGY, self.strategy)
        study.set_user_attr(FIRST_RUNG, self.first_rung)
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
            analysis=attrs.get(ANALYSIS, {}),
            strategy=attrs.get(STRATEGY, "full"),
            first_rung=int(attrs.get(FIRST_RUNG, LEGACY_FIRST_RUNG)),
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


ATTR = "attr"
"""Field metadata key: the trial user attribute a ``TrialRecord`` field is stored under."""


def _stored(attr: str, default: Any = None, *, factory: Callable[[], Any] | None = None) -> Any:
    """A ``TrialRecord`` field stored as the trial user attribute ``attr``. Studies made by earlier
    versions hold these names: a field may be added, never renamed or re-keyed."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={ATTR: attr})
    return dataclasses.field(default=default, metadata={ATTR: attr})


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One trial as every part of mcaas-search writes and reads it: the one schema of a trial's
    user attributes (``to_attrs`` writes them, ``from_trial`` reads them back), beside what
    Optuna itself knows of the trial (number, state, objective values, wall time).

    A record made to be stored names only what it stores, as the trial learns it
    (``TrialRecord(reason=...).to_attrs()``); fields left at their default are not written, and
    read back as that default (so are the attributes an older study lacks). Adding an attribute
    is adding a field here, with ``_stored``.
    """

    # Optuna's, never stored as attributes (read by from_trial).
    number: int = -1
    state: str = "running"  # complete | pruned | failed | running | waiting
    # Stored as user attributes.
    profile: str | None = _stored("profile")  # the named config (MCaaS profile) the trial runs
    config: dict[str, Any] = _stored("config", factory=dict)  # the flat pipeline config
    metrics: dict[str, float] = _stored("metrics", factory=dict)  # measured on the final file
    ratios: dict[str, float] = _stored("ratios", factory=dict)  # teacher / trial, per target
    violations: dict[str, float] = _stored("violations", factory=dict)  # <= 0: feasible
    stages: list[dict[str, Any]] = _stored("stages", factory=list)  # what each stage took, measured
    artifact: str | None = _stored("artifact")  # the final file
    reason: str | None = _stored("reason")  # why it stopped early or failed
    # Optuna's: start to completion, in seconds, and the objective values.
    seconds: float | None = None
    values: tuple[float, ...] | None = None
    # Stored as user attributes.
    saved_s: float = _stored("saved_s", 0.0)  # a stopped trial: the training time its stop saved (estimated)
    drop: float | None = _stored("drop")  # validation accuracy drop from the teacher, points
    # Measured only for a trial within the accuracy bound on validation (see run_trial).
    test_drop: float | None = _stored("test_drop")
    run_seconds: float | None = _stored("seconds")  # the pipeline's own time
    torch_artifact: str | None = _stored("torch_artifact")  # a torch.export file beside the artifact
    worker: str | None = _stored("worker")  # host:pid of the process that runs it
    ray_run: str | None = _stored("ray_run")  # the Ray run that placed it
    ray_trial: str | None = _stored("ray_trial")  # its Ray Tune trial id
    ray_node: str | None = _stored("ray_node")  # the Ray node it ran on
    # Multi-fidelity (--strategy asha): [steps, validation accuracy] at each rung reached (the
    # last is the budget it received), its ratio measured before training (any strategy, where
    # it was measured), the step an earlier,
    # interrupted run of its config had trained to (it continued from there), and that trial.
    rungs: list[list[float]] = _stored("rungs", factory=list)
    untrained_ratio: float | None = _stored("untrained_ratio")
    resumed_from: int = _stored("resumed_from", 0)
    resumes: int | None = _stored("resumes")
    # Its last promoted rung's checkpoint as uploaded to the study's artifact store (step, total,
    # artifact id, sha256): what the replacement of the trial continues from on another machine
    # (removed from the store once the trial ends other than interrupted).
    rung_artifact: dict[str, Any] | None = _stored("rung_artifact")
    # Skipped before training: the feasible trial that dominates every outcome it could reach.
    skipped_by: int | None = _stored("skipped_by")

    @property
    def budget_steps(self) -> int | None:
        """The distillation steps a multi-fidelity trial received (None: not one)."""
        return int(self.rungs[-1][0]) if self.rungs else None

    def accuracy_at(self, steps: int) -> float | None:
        """Validation accuracy at the rung at ``steps`` (None: the trial did not reach it)."""
        return next((float(acc) for s, acc in self.rungs if int(s) == steps), None)

    @property
    def feasible(self) -> bool:
        return self.state == "complete" and all(v <= 0 for v in self.violations.values())

    @property
    def interrupted(self) -> bool:
        return self.state == "failed" and is_interrupted(self.reason)

    @property
    def counted(self) -> bool:
        """Whether it counts towards ``--trials``: done or running; interrupted ones are replaced."""
        return self.state in ("complete", "pruned", "running") or (
            self.state == "failed" and not self.interrupted
        )

    def ratio(self, target: str) -> float:
        return self.ratios.get(target, math.nan)

    @property
    def samples_seen(self) -> int:
        """Training samples the trial's distillation saw (its compute): from its distill stage
        record, a stopped trial's included; 0 when it did not train, and for journals written
        before the figure was recorded (their stage records do not hold what it derives from)."""
        return sum(int(s.get("metrics", {}).get(m.SAMPLES_SEEN, 0)) for s in self.stages if s.get("stage") == "distill")

    def to_attrs(self) -> dict[str, Any]:
        """The trial user attributes that store this record: each stored field not at its default."""
        return {
            field.metadata[ATTR]: getattr(self, field.name)
            for field in _STORED
            if getattr(self, field.name) != _default(field)
        }

    def save(self, trial: optuna.Trial) -> None:
        """Store this record's attributes (``to_attrs``) in the running ``trial``."""
        for key, value in self.to_attrs().items():
            trial.set_user_attr(key, value)

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], **optuna_fields: Any) -> TrialRecord:
        """The record stored in user attributes ``attrs`` (a live trial's, or a study's trial);
        ``optuna_fields``: number, state, seconds, values where they are known."""
        stored = {field.name: attrs.get(field.metadata[ATTR], _default(field)) for field in _STORED}
        stored["saved_s"] = float(stored["saved_s"])
        return cls(**stored, **optuna_fields)

    @classmethod
    def from_trial(cls, trial: FrozenTrial) -> TrialRecord:
        """The record of a study's trial: its stored attributes and what Optuna knows of it."""
        seconds = (
            (trial.datetime_complete - trial.datetime_start).total_seconds()
            if trial.datetime_complete and trial.datetime_start
            else None
        )
        return cls.from_attrs(
            trial.user_attrs,
            number=trial.number,
            state=_STATE_NAMES[trial.state],
            seconds=seconds,
            values=tuple(trial.values) if trial.values else None,
        )


_STORED = tuple(field for field in dataclasses.fields(TrialRecord) if ATTR in field.metadata)


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


_STATE_NAMES = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "failed",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def trial_record(trial: FrozenTrial) -> TrialRecord:
    return TrialRecord.from_trial(trial)


def trial_records(study: optuna.Study) -> list[TrialRecord]:
    return [trial_record(t) for t in study.get_trials(deepcopy=False)]
