"""Successive halving over the training budget for constrained multi-objective studies (ASHA,
Li et al. 2018): the rungs, the rung -> final accuracy calibration, and the promotion rule.

Optuna's pruners and Ray Tune's schedulers rank trials by one number. Here a trial is judged
against the accuracy bound and at its ratio, so the rule is stated as one score per trial (what
Ray Tune's ``ASHAScheduler`` is fed as its metric) and one quantile cutoff over the scores of the
trials that reached the rung before it (what that scheduler computes itself):

- a trial is *plausible* at a rung when the calibrated upper bound of its final accuracy (see
  ``Calibration``) reaches the required accuracy; an earlier trial that has since finished is
  judged by its outcome instead (its final accuracy reached the required one or not): a
  predicted chance is no reason to rank a trial that ended outside the bound above others;
- a plausible trial's score orders it by ratio, then accuracy at the rung; an implausible one
  has no score (NaN): it is out of the running, not a rival;
- a trial is promoted when it is plausible and its score is at least the ``1 - 1/reduction``
  quantile (linear interpolation, as numpy's and Ray Tune's ``nanpercentile``, which leaves NaN
  out) of the scores of the earlier plausible trials at that rung; the first plausible trial at a
  rung is promoted. Ranking the implausible ones as rivals (below every plausible one) let any
  plausible trial pass a cutoff interpolated between the two groups: on the demo nearly every
  plausible trial went on, and in the first ResNet-18 run a 1.9x trial passed at 120 steps
  behind a feasible 5.1x one, and trained its whole budget.

Pure Python: the adapters in ``search`` read the rung results from the study storage (Optuna
workers) or hand the score to Ray Tune.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from objectives._errors import ObjectiveError, check_accuracy, check_finite, check_positive

# Each rung trains this many times the steps of the one before (ASHA's reduction factor: a third
# of the trials at a rung go on).
REDUCTION = 3
# Points of accuracy the whole remaining budget is trusted to recover while a study has too few
# promoted trials to fit its own rung -> final relation (the search's early stop slack: generous,
# since a stop is final and a rung's model is mid-schedule, at a high learning rate).
DEFAULT_SLACK_POINTS = 20.0
# Pairs (accuracy at a rung, final accuracy) a fit needs; with fewer the default slack holds.
MIN_PAIRS = 5
# Residual standard deviations above the fitted final accuracy that still count as plausible.
SPREAD_SDS = 2.0
# The steepest fitted slope of final on rung accuracy: a trial behind at a rung is not expected to
# fall further behind by the end (see fit_calibration).
MAX_SLOPE = 1.0
# Ratios closer than this (relative) tie in the score (measurement noise is larger), and the
# accuracy at the rung, in steps of ACCURACY_RESOLUTION points, decides between them.
RATIO_RESOLUTION = 1e-3
ACCURACY_RESOLUTION = 1e-3


def rung_steps(first: int, top: int, reduction: int = REDUCTION) -> tuple[int, ...]:
    """The optimizer steps at which a trial is judged: ``first``, ``reduction`` times that, ...
    while below ``top``, then ``top`` (the end of training, where nothing is judged)."""
    if first < 1 or top < 1 or reduction < 2:
        raise ObjectiveError(
            f"rungs need first >= 1, top >= 1 and reduction >= 2, but got ({first=}, {top=}, {reduction=})."
        )
    rungs: list[int] = []
    step = first
    while step < top:
        rungs.append(step)
        step *= reduction
    return (*rungs, top)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """How accuracy at one rung predicts the final accuracy: ``final ~ slope * acc + intercept``,
    with ``spread`` points above that prediction still plausible. ``pairs`` says what it was fitted
    on (0: the default, ``acc + slack`` with the slack shrinking with the budget left)."""

    slope: float = 1.0
    intercept: float = 0.0
    spread: float = DEFAULT_SLACK_POINTS
    pairs: int = 0
    residual_sd: float | None = None

    def __post_init__(self) -> None:
        for name in ("slope", "intercept", "spread"):
            check_finite(name, getattr(self, name))
        if self.spread < 0:
            raise ObjectiveError(f"spread must be >= 0, but got {self.spread!r}.")

    @classmethod
    def default(cls, steps: int, top: int, slack_points: float = DEFAULT_SLACK_POINTS) -> Calibration:
        """The conservative relation used before the study has ``MIN_PAIRS`` pairs at a rung:
        ``slack_points`` of recovery over the whole budget, shrinking linearly to 0 at ``top``."""
        check_positive("top", top)
        left = max(0.0, 1.0 - steps / top)
        return cls(spread=slack_points * left)

    def upper_bound(self, accuracy: float) -> float:
        """The most final accuracy still plausible for ``accuracy`` at the rung."""
        return self.slope * check_finite("accuracy", accuracy) + self.intercept + self.spread

    def describe(self) -> str:
        if self.pairs == 0:
            return f"default: final accuracy up to {self.spread:.1f} pt above the rung's"
        return (
            f"final = {self.slope:.2f} x rung {self.intercept:+.1f} pt, residual sd "
            f"{self.residual_sd or 0.0:.2f} pt over {self.pairs} trials"
        )


def fit_calibration(
    pairs: Sequence[tuple[float, float]], *, steps: int, top: int, min_pairs: int = MIN_PAIRS
) -> Calibration:
    """The least-squares line of final accuracy on accuracy at the rung of ``steps`` (``pairs``
    from the study's promoted trials), plausible up to ``SPREAD_SDS`` residual sds above it; the
    default (``Calibration.default``) with fewer than ``min_pairs`` pairs or no spread in the
    rung accuracies (then widened to cover every pair). The fit never claims less recovery than the data showed: the spread is at
    least the largest residual.

    The slope is at most ``MAX_SLOPE`` (the intercept refitted for it): a steeper line says a
    trial behind at the rung falls further behind by the end, and with the few pairs a study
    has, that is one high-leverage trial, which the line then extrapolates to stop others. On
    the demo at a 40-step rung, five pairs within 97.2-98.9 % at the rung, one of whose final
    file lost 6 points after training, fitted 4.0, which then stopped 11 configs of 4.3-10.1x
    at 79-97.5 % (the bound 97.61 %) as implausible, in a study whose full-budget twin reached
    10.06x within the bound."""
    if len(pairs) < max(3, min_pairs):
        return Calibration.default(steps, top)
    xs = [check_finite("rung accuracy", x) for x, _ in pairs]
    ys = [check_finite("final accuracy", y) for _, y in pairs]
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 1e-12:  # no line to fit: the default, widened to what the pairs recovered
        default = Calibration.default(steps, top)
        return dataclasses.replace(default, spread=max(default.spread, *(y - x for x, y in pairs)))
    slope = min(MAX_SLOPE, sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx)
    intercept = my - slope * mx
    residuals = [y - (slope * x + intercept) for x, y in zip(xs, ys, strict=True)]
    sd = math.sqrt(sum(r * r for r in residuals) / (n - 2))
    spread = max(SPREAD_SDS * sd, *residuals, 0.0)
    return Calibration(slope=slope, intercept=intercept, spread=spread, pairs=n, residual_sd=sd)


@dataclasses.dataclass(frozen=True)
class RungResult:
    """A trial at a rung: its validation accuracy there (%) and its ratio on the target;
    ``final``: its final validation accuracy where it has since finished (None: it is still
    training, or stopped at a later rung)."""

    accuracy: float
    ratio: float
    final: float | None = None


def plausible(result: RungResult, required_accuracy: float, calibration: Calibration) -> bool:
    """Whether ``result`` can still plausibly end within the accuracy bound: a finished trial's
    final accuracy decides; otherwise the calibrated upper bound of its accuracy at the rung."""
    required_accuracy = check_finite("required_accuracy", required_accuracy)
    if result.final is not None:
        return check_finite("final accuracy", result.final) >= required_accuracy
    return calibration.upper_bound(result.accuracy) >= required_accuracy


def promotion_score(result: RungResult, required_accuracy: float, calibration: Calibration) -> float:
    """One number ordering plausible trials at a rung by (ratio at ``RATIO_RESOLUTION``, then
    accuracy at ``ACCURACY_RESOLUTION``): higher is better; NaN for an implausible trial, which
    ``should_promote`` and Ray Tune's ASHA cutoff (``nanpercentile``) leave out."""
    ratio = check_positive("ratio", result.ratio)
    accuracy = check_accuracy("accuracy", result.accuracy)
    if not plausible(result, required_accuracy, calibration):
        return math.nan
    # The accuracy term stays below 0.1, so it never crosses a ratio step.
    ratio_step = round(math.log(ratio) / RATIO_RESOLUTION)
    return ratio_step + round(accuracy / ACCURACY_RESOLUTION) * 1e-6


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` (0..1) quantile of ``values`` by linear interpolation between order statistics
    (numpy's default, which Ray Tune's ASHA cutoff uses)."""
    if not values:
        raise ObjectiveError("quantile of no values.")
    if not 0.0 <= q <= 1.0:
        raise ObjectiveError(f"q must lie in [0, 1], but got {q!r}.")
    ordered = sorted(values)
    h = (len(ordered) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


def should_promote(
    result: RungResult,
    earlier: Sequence[RungResult],
    *,
    required_accuracy: float,
    calibration: Calibration,
    reduction: int = REDUCTION,
) -> bool:
    """Whether a trial that reached a rung with ``result`` trains on to the next one, given the
    results of the trials that reached that rung before it (``earlier``; asynchronous: no trial
    waits for the others). See the module docstring for the rule."""
    if reduction < 2:
        raise ObjectiveError(f"reduction must be >= 2, but got {reduction!r}.")
    score = promotion_score(result, required_accuracy, calibration)
    if math.isnan(score):
        return False
    rivals = [s for s in (promotion_score(r, required_accuracy, calibration) for r in earlier) if not math.isnan(s)]
    return not rivals or score >= quantile(rivals, 1.0 - 1.0 / reduction)
