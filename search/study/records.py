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
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from objectives import Constraint
from objectives import metrics as m
from search.errors import UserError

# Keys of the study's user attributes.
WORKLOAD, TARGET, CONSTRAINT, BASELINE, BASELINE_ONNX, ARTIFACTS, SPACE, ANALYSIS = (
    "workload",
    "target",
    "constraint",
    "baseline",
    "baseline_onnx",
    "artifacts_dir",
    "space",
    "analysis",
)


# Keys of a trial's user attributes that more than one module reads or writes.
PROFILE, REASON, WORKER, CONFIG, SAVED_S = "profile", "reason", "worker", "config", "saved_s"

# A failed trial whose reason starts so was interrupted (its worker was stopped or died): it is
# not counted towards --trials and a resumed search replaces it.
INTERRUPTED = "interrupted"


def is_interrupted(reason: str | None) -> bool:
    """Whether a failed trial's ``reason`` says it was interrupted."""
    return str(reason or "").startswith(INTERRUPTED)


def was_interrupted(trial: FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and is_interrupted(trial.user_attrs.get(REASON))


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
        profile=attrs.get(PROFILE),
        config=attrs.get(CONFIG, {}),
        metrics=attrs.get("metrics", {}),
        ratios=attrs.get("ratios", {}),
        violations=attrs.get("violations", {}),
        stages=attrs.get("stages", []),
        artifact=attrs.get("artifact"),
        reason=attrs.get(REASON),
        seconds=seconds,
        values=tuple(trial.values) if trial.values else None,
        saved_s=float(attrs.get(SAVED_S, 0.0)),
    )


def trial_records(study: optuna.Study) -> list[TrialRecord]:
    return [trial_record(t) for t in study.get_trials(deepcopy=False)]
