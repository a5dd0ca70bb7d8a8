"""One search trial: config -> pipeline -> scored, constrained record. Shared by both backends.

Early stopping lives here because Optuna's pruners are single-objective and know nothing of the
accuracy bound: a trial stops (state pruned) when its validation accuracy during distillation can
no longer plausibly reach the bound, or before any training when a feasible trial dominates every
outcome it can plausibly reach (see ``run_trial``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from objectives import (
    REDUCTION,
    Calibration,
    Constraint,
    EarlyStop,
    ObjectiveError,
    Point,
    RungResult,
    dominated_before_training,
    estimate_ratio,
    fit_calibration,
    plausible,
    ratio,
    ratios,
    should_promote,
    target,
    untrained_ratio_bound,
)
from objectives import metrics as m
from search.study import StudyInfo, TrialRecord
from spaces import MIN_STEPS, Choice, Fixed, FloatRange, IntRange, SearchSpace
from stages import QUANT_MODES, Context, StageRecord
from stages.config import DistillConfig, PipelineConfig
from stages.distill import checkpointed_step
from stages.pipeline import TORCH_ARTIFACT, run_pipeline


class TrialStopped(Exception):
    """A trial stopped early on purpose; ``saved_s`` estimates the time this saved, ``stages``
    records what ran before the stop (a stop during distillation: the samples it had seen), and
    ``record`` what else the stop learned, stored with it (a skip: the trial that beat it)."""

    def __init__(
        self,
        reason: str,
        saved_s: float,
        *,
        stages: Sequence[dict[str, Any]] = (),
        record: TrialRecord | None = None,
    ) -> None:
        super().__init__(reason)
        self.saved_s = saved_s
        self.stages = list(stages)
        self.record = record


@dataclasses.dataclass(frozen=True)
class Scoring:
    """What a trial is scored against: the target, the constraint and the teacher's metrics."""

    target: str
    constraint: Constraint
    baseline: dict[str, float]
    early_stop: EarlyStop | None = EarlyStop()
    skip_dominated: bool = True

    @classmethod
    def for_study(cls, info: StudyInfo, *, early_stop: EarlyStop | None, skip_dominated: bool) -> Scoring:
        """How the trials of the study ``info`` describes are scored (what it stored, no copy)."""
        return cls(info.target, info.constraint, info.baseline, early_stop, skip_dominated)

    @property
    def required_accuracy(self) -> float:
        return self.constraint.required_accuracy(self.baseline[m.VAL_ACC])


class StudyView(Protocol):
    """What a running trial may read of its study (other workers may add trials meanwhile)."""

    def feasible_front(self) -> Sequence[Point]: ...

    def median_trial_seconds(self) -> float: ...

    def untrained_slack(self) -> float | None:
        """How much (relative) a trained file's ratio may exceed its untrained student's, as
        the study's finished trials support (see search.study.rungs.untrained_slack)."""
        ...


class RungLog(Protocol):
    """Where a multi-fidelity trial's rungs are kept (the study storage, which every worker and
    machine of the study shares): its own results, and the other trials' it is judged against."""

    def record(self, steps: int, accuracy: float, ratio: float) -> None:
        """This trial reached ``steps`` with validation ``accuracy``, at its untrained ``ratio``."""

    def results_at(self, steps: int) -> list[RungResult]:
        """The other trials that reached the rung at ``steps`` (each: accuracy there, ratio, and
        final accuracy where it has finished since)."""
        ...

    def pairs_at(self, steps: int) -> list[tuple[float, float]]:
        """(accuracy at the rung at ``steps``, final accuracy) of the trials that finished."""
        ...

    def promoted(self, steps: int, total: int) -> None:
        """This trial trains on from the rung at ``steps`` (of ``total``): its rung checkpoint is
        what a run continuing it after an interruption starts from."""


class RungJudge(Protocol):
    """Decides at a rung whether a multi-fidelity trial trains on: the Optuna workers apply the
    promotion rule themselves (``successive_halving``), a Ray trial hands its score to Ray Tune's
    ASHA scheduler."""

    def __call__(
        self, steps: int, result: RungResult, earlier: Sequence[RungResult], required: float, calibration: Calibration
    ) -> str | None:
        """None to train on, else why the trial stops at the rung at ``steps``."""
        ...


def implausible(result: RungResult, required: float, calibration: Calibration) -> str | None:
    """Why ``result`` stops for the bound (the promotion rule's plausibility half), or None."""
    if plausible(result, required, calibration):
        return None
    return f"cannot plausibly reach the required {required:.2f} % ({calibration.describe()})"


def successive_halving(
    steps: int, result: RungResult, earlier: Sequence[RungResult], required: float, calibration: Calibration
) -> str | None:
    """The promotion rule against the ``earlier`` trials at the rung (see objectives.should_promote)."""
    if should_promote(result, earlier, required_accuracy=required, calibration=calibration):
        return None
    return implausible(result, required, calibration) or (
        f"not in the best third of the {len(earlier) + 1} trials at this rung"
    )


def rung_ladder(first: int) -> tuple[int, ...]:
    """The optimizer steps a multi-fidelity trial is judged at: ``first``, then x``REDUCTION``
    (Distill stops at those below its budget; the end of its budget is its last rung)."""
    if first < 1:
        raise ValueError(f"the first rung must be >= 1 step, but got {first!r}.")
    return tuple(first * REDUCTION**k for k in range(16))


def first_rung_steps(space: SearchSpace, train_size: int, batch_size: int = Context.batch_size) -> int:
    """Where a multi-fidelity study of ``space`` (before the strategy holds its budget at the
    top) first judges a trial: ``MIN_STEPS``, or the bottom of the space's own budget where that
    is lower. Such a space (the demo's: 5 epochs of 8 steps, 40) runs trials that short to the
    end under the full-budget strategy, so judging one there is no harsher than the space; a
    first rung above it would make every config pay more than the cheapest whole trial (on the
    demo, a 120-step rung under a 240-step top left one rung of reduction 2). A space whose
    floor is higher (ResNet-18 / Fashion-MNIST: 211 steps) keeps ``MIN_STEPS``."""
    floor = _steps(space, train_size, batch_size, top=False)
    return max(1, min(MIN_STEPS, floor))


def top_budget_steps(space: SearchSpace, train_size: int, batch_size: int = Context.batch_size) -> int:
    """The most optimizer steps a trial of ``space`` trains on a ``train_size``-sample training
    split (the top of ``distill.epochs``, boosted at most ``distill.size_boost`` times, as
    stages.distill.training_plan counts them): the end of every multi-fidelity trial's rungs."""
    return max(1, _steps(space, train_size, batch_size, top=True))


def _steps(space: SearchSpace, train_size: int, batch_size: int, *, top: bool) -> int:
    """Optimizer steps at the top (or bottom, unboosted) of ``space``'s distillation budget."""
    epochs = _end(space.dimensions.get("distill.epochs"), DistillConfig().epochs, top=top)
    # The boost lengthens the training of small students only: the bottom is a teacher-sized one's.
    boost = max(1.0, _end(space.dimensions.get("distill.size_boost"), DistillConfig().size_boost, top=True)) if top else 1.0
    return round(epochs * boost * (train_size // max(1, min(batch_size, train_size))))


def _end(dimension: object, default: float, *, top: bool) -> float:
    """The highest (``top``) or lowest value ``dimension`` takes."""
    if isinstance(dimension, Fixed):
        return float(dimension.value)  # type: ignore[arg-type]
    if isinstance(dimension, (FloatRange, IntRange)):
        return float(dimension.high if top else dimension.low)
    if isinstance(dimension, Choice):
        pick = max if top else min
        return float(pick(dimension.choices))  # type: ignore[type-var,arg-type]
    return default


@dataclasses.dataclass(frozen=True)
class TrialOutcome:
    """A finished trial's objective values, constraint values and the record to store."""

    values: tuple[float, float]
    constraints: dict[str, float]
    record: TrialRecord


def estimated_ratio(target: str, baseline: dict[str, float], pruned: dict[str, float], mode: str) -> float | None:
    """The target ratio a config can reach at best, known right after pruning (None: unknown)."""
    bytes_per_weight = QUANT_MODES[mode].bytes_per_weight
    return estimate_ratio(target, baseline, pruned, bytes_per_weight=bytes_per_weight)


def run_trial(
    config: PipelineConfig,
    ctx: Context,
    scoring: Scoring,
    study: StudyView,
    *,
    stop_early: bool = True,
    rung_log: RungLog | None = None,
    judge: RungJudge = successive_halving,
    first_rung: int = MIN_STEPS,
) -> TrialOutcome:
    """Run the pipeline for ``config`` with both early stops armed, and score the result.

    With ``rung_log`` (the multi-fidelity strategy) distillation stops at each rung of
    ``rung_ladder(first_rung)`` below its budget, and the trial trains on only when ``judge`` promotes it (its ratio is
    the untrained student's, measured in ONNX Runtime) and it can still add to the feasible front: the skip below,
    with the accuracy it can plausibly reach by its rung's calibration in place of the ceiling. It continues from
    ``ctx.rung_checkpoint`` when an earlier run of the same config left one there.

    Before any training a config is skipped when it cannot add to the feasible front:
    ``dominated_before_training`` with its ratio bounded by its untrained structural student,
    exported in its number format and measured (``untrained_ratio_bound``: measured ratio plus
    the slack the study's finished trials support, ``StudyView.untrained_slack``; also bounded
    by the params/MACs estimate where the target has one), and
    its accuracy by the plausibility ceiling max(teacher's validation accuracy, the most accurate
    feasible trial's). The untrained student is measured when the rungs need it, or when that
    gate is armed and the study has a feasible front to compare with (seconds, against a
    training budget of minutes); otherwise only the estimate bounds it.

    The final file's test accuracy is measured only when it is within the accuracy bound on
    validation: any other trial is never a pick, so its test pass would be spent for nothing.
    Raises TrialStopped when a stop fires. ``stop_early=False`` (the fixed profiles, which every
    study shows complete as reference points) disarms both stops.
    """
    started = time.perf_counter()
    resumed = checkpointed_step(ctx.rung_checkpoint) if rung_log is not None else 0
    # When distillation starts (after_prune runs right before it) and the samples it is to see.
    distill_plan: list[float] = []
    measured: list[float] = []  # the untrained student's ratio, measured in ONNX Runtime
    untrained: list[float] = []  # the ratio known before training: what rungs judge a trial at
    ratio_bound: list[float] = []  # the most ratio its trained file can have (see after_prune)
    skip_armed = stop_early and scoring.skip_dominated

    def beaten(ratio_most: float, accuracy_most: float | None = None) -> tuple[Point, float] | None:
        """The feasible trial that dominates every outcome within (``ratio_most``, accuracy at
        most ``accuracy_most`` and the plausibility ceiling), with that ceiling; None if none."""
        points = list(study.feasible_front()) if skip_armed else []
        if not points:
            return None
        ceiling = max([scoring.baseline[m.VAL_ACC], *(p.accuracy for p in points)])
        reach = ceiling if accuracy_most is None else min(ceiling, accuracy_most)
        beaten_by = dominated_before_training(ratio_most, points, reach)
        return None if beaten_by is None else (beaten_by, reach)

    def after_prune(pruned: dict[str, float]) -> None:
        distill_plan[:] = [time.perf_counter(), pruned.get(m.SAMPLES_SEEN, 0.0)]
        est = estimated_ratio(scoring.target, scoring.baseline, pruned, config.quantize.mode)
        untrained[:] = measured or ([est] if est is not None else [])
        # Both are upper bounds on the trained ratio: the tighter one decides.
        from_measure = untrained_ratio_bound(scoring.target, measured[0], slack=study.untrained_slack()) if measured else None
        bounds = [b for b in (from_measure, est) if b is not None]
        if not bounds:
            return
        bound = min(bounds)
        ratio_bound[:] = [bound]
        found = beaten(bound)
        if found is not None:
            beaten_by, ceiling = found
            known = f"measured {measured[0]:.2f}x untrained" if measured else "estimated from its params"
            raise TrialStopped(
                f"skipped before training: at most {bound:.2f}x {scoring.target} ({known}), and "
                f"feasible trial {beaten_by.id} already has {beaten_by.ratio:.2f}x at "
                f"{beaten_by.accuracy:.2f} %, at or above the most accuracy a trial is expected to "
                f"reach ({ceiling:.2f} %: the teacher's or the best feasible trial's)",
                saved_s=max(study.median_trial_seconds() - (time.perf_counter() - started), 0.0),
                record=TrialRecord(skipped_by=beaten_by.id, untrained_ratio=measured[0] if measured else None),
            )

    def on_untrained(metrics: dict[str, float]) -> None:
        try:
            measured[:] = [ratio(scoring.target, scoring.baseline, metrics)]
        except ObjectiveError:  # a target the untrained file does not measure: the estimate
            pass

    def on_progress(stage: str, fraction: float, val_acc: float) -> None:
        # At the end of its budget a trial is measured, feasible or not: it is data for the front.
        if stage != "distill" or scoring.early_stop is None or not stop_early or fraction >= 1.0:
            return
        if rung_log is not None:  # the rungs judge it instead
            return
        if scoring.early_stop.should_stop(fraction, val_acc, scoring.required_accuracy):
            distill_started, planned = distill_plan
            spent = time.perf_counter() - distill_started
            saved = spent / max(fraction, 1e-6) * (1 - fraction)
            seen = StageRecord("distill", spent, {m.SAMPLES_SEEN: float(round(fraction * planned))})
            raise TrialStopped(
                f"stopped at {fraction:.0%} of distillation: validation accuracy {val_acc:.2f} % "
                f"cannot plausibly reach the required {scoring.required_accuracy:.2f} %",
                saved_s=saved,
                stages=[seen.to_dict()],
            )

    def on_rung(stage: str, done: int, total: int, val_acc: float) -> None:
        assert rung_log is not None
        rung_ratio = untrained[0] if untrained else 1.0
        result = RungResult(val_acc, rung_ratio)
        earlier = rung_log.results_at(done)
        calibration = fit_calibration(rung_log.pairs_at(done), steps=done, top=total)
        rung_log.record(done, val_acc, rung_ratio)
        if done >= total:
            return
        why = judge(done, result, earlier, scoring.required_accuracy, calibration)
        # Promoted or not by its rung, a trial that can no longer add to the feasible front stops:
        # the skip before training, with the rung's calibrated reach instead of the ceiling.
        found = beaten(ratio_bound[0], calibration.upper_bound(val_acc)) if why is None and ratio_bound else None
        if found is not None:
            beaten_by, reach = found
            why = (
                f"cannot add to the feasible front: feasible trial {beaten_by.id} has "
                f"{beaten_by.ratio:.2f}x at {beaten_by.accuracy:.2f} %, at or above the most this trial "
                f"can plausibly reach (at most {ratio_bound[0]:.2f}x, {reach:.2f} %: {calibration.describe()})"
            )
        if why is None:
            rung_log.promoted(done, total)
            return
        distill_started, planned = distill_plan
        spent = time.perf_counter() - distill_started
        # Samples this trial saw: its own steps (those before ``resumed`` an earlier run saw).
        fraction = (done - resumed) / max(1, total - resumed)
        seen = StageRecord("distill", spent, {m.SAMPLES_SEEN: float(round(fraction * planned))})
        raise TrialStopped(
            f"stopped at {done} of {total} steps: validation accuracy {val_acc:.2f} % at "
            f"{rung_ratio:.1f}x {scoring.target} (untrained) {why}",
            saved_s=spent / max(1, done - resumed) * (total - done),
            stages=[seen.to_dict()],
        )

    # Each report is a pass over the validation split: only those a stop can act on, and the
    # last (the pipeline keeps it as the stage's accuracy instead of measuring again).
    grace = scoring.early_stop.grace if scoring.early_stop is not None and stop_early else 1.0
    if rung_log is not None:
        grace = 1.0
    ctx = dataclasses.replace(
        ctx,
        on_progress=on_progress,
        report_fractions=tuple(f for f in ctx.report_fractions if f >= grace) or (1.0,),
        test_min_val_acc=scoring.required_accuracy,
    )
    if rung_log is not None:
        ctx = dataclasses.replace(ctx, rungs=rung_ladder(first_rung), on_rung=on_rung)
    # Multi-fidelity judges trials at their ratio before any training: measured, not estimated;
    # the skip gate measures too where the measurement bounds the ratio and a front exists.
    measure = rung_log is not None or (
        skip_armed and target(scoring.target).untrained_slack is not None and bool(study.feasible_front())
    )
    result = run_pipeline(
        config,
        ctx,
        after_prune=after_prune,
        on_untrained=on_untrained if measure else None,
        untrained_latency=scoring.target == "latency",
    )
    outcome = score(result.metrics, scoring, stages=[r.to_dict() for r in result.stages],
                    artifact=result.artifact, seconds=result.seconds)
    if not measured:
        return outcome
    return dataclasses.replace(outcome, record=dataclasses.replace(outcome.record, untrained_ratio=measured[0]))


def score(
    metrics: dict[str, float], scoring: Scoring, *, stages: list[dict[str, Any]], artifact: Path, seconds: float
) -> TrialOutcome:
    """The outcome of a trial whose final file ``artifact`` measured ``metrics``: its objective
    values, its constraint values and the record stored with it (``stages``: what each stage
    took and measured; a torch.export file beside the artifact is recorded too)."""
    teacher_acc = scoring.baseline[m.VAL_ACC]
    violations = scoring.constraint.violations(teacher_acc, metrics)
    value = ratio(scoring.target, scoring.baseline, metrics)
    torch_artifact = artifact.parent / TORCH_ARTIFACT
    record = TrialRecord(
        metrics=metrics,
        ratios=ratios(scoring.baseline, metrics),
        drop=teacher_acc - metrics[m.VAL_ACC],
        # Measured only for a trial within the accuracy bound on validation (see run_trial).
        test_drop=scoring.baseline[m.TEST_ACC] - metrics[m.TEST_ACC] if m.TEST_ACC in metrics else None,
        violations=violations,
        stages=stages,
        artifact=str(artifact.resolve()),
        run_seconds=seconds,
        torch_artifact=str(torch_artifact.resolve()) if torch_artifact.exists() else None,
    )
    if not all(math.isfinite(v) for v in (metrics[m.VAL_ACC], value)):
        raise ValueError(f"non-finite objective values: accuracy {metrics['val_acc']}, ratio {value}")
    return TrialOutcome(values=(metrics[m.VAL_ACC], value), constraints=violations, record=record)

