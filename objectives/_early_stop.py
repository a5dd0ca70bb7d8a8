"""Early stopping for constrained multi-objective studies, which Optuna's pruners do not cover
(they are single-objective only).

Two rules: stop a trial whose validation accuracy during distillation is too far below the
required accuracy to catch up in the budget left, and skip a config before any training when
no outcome it can plausibly reach (its ratio bounded before training, its accuracy by a stated
ceiling) would get it onto the front.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from objectives._errors import ObjectiveError, check_finite, check_positive
from objectives._pareto import Point


@dataclasses.dataclass(frozen=True)
class EarlyStop:
    """Stops a trial that cannot plausibly reach the required accuracy.

    ``grace`` is the fraction of the training budget always granted (early epochs are noisy).
    ``slack_points`` is how many points of accuracy the whole remaining budget is trusted to
    recover; the slack shrinks linearly as the budget is used, reaching 0 at the end.
    """

    grace: float = 0.3
    slack_points: float = 6.0

    def __post_init__(self) -> None:
        grace = check_finite("grace", self.grace)
        if not 0.0 <= grace <= 1.0:
            raise ObjectiveError(f"grace must lie in [0, 1], but got {self.grace!r}.")
        if check_finite("slack_points", self.slack_points) < 0:
            raise ObjectiveError(f"slack_points must be >= 0, but got {self.slack_points!r}.")

    def should_stop(self, fraction: float, val_acc: float, required_acc: float) -> bool:
        """Whether to stop a trial at ``fraction`` (0..1) of its budget with accuracy ``val_acc``.

        True when the grace period is over and ``val_acc`` is below ``required_acc`` by more
        than the slack left: ``val_acc < required_acc - slack_points * (1 - fraction)``.
        """
        fraction = check_finite("fraction", fraction)
        if not 0.0 <= fraction <= 1.0:
            raise ObjectiveError(f"fraction must lie in [0, 1], but got {fraction!r}.")
        val_acc = check_finite("val_acc", val_acc)
        required_acc = check_finite("required_acc", required_acc)
        if fraction < self.grace:
            return False
        return val_acc < required_acc - self.slack_points * (1.0 - fraction)


def dominated_before_training(
    ratio_bound: float, front: Sequence[Point], accuracy_ceiling: float
) -> Point | None:
    """The feasible point that makes training a config pointless, or None.

    The config's trained outcome is plausibly somewhere in the box (accuracy <= ``accuracy_ceiling``,
    ratio <= ``ratio_bound``): ``ratio_bound`` bounds its ratio before training (its untrained
    student's measured ratio plus the target's measurement slack, or the estimate from its
    params / MACs), and ``accuracy_ceiling`` is the plausibility bound on accuracy (the search
    uses the best of the teacher's and every feasible trial's). A new point enters the front
    (``pareto_front``: only a point that is better in one objective and no worse in the other
    removes it) unless one feasible point dominates it, so the whole box is ruled out exactly
    when one feasible point dominates its best corner: ratio above ``ratio_bound`` at an accuracy
    of at least the ceiling, or accuracy above the ceiling at a ratio of at least the bound.
    Returns that point (the most accurate, then the highest ratio, when several do).
    """
    ratio_bound = check_positive("ratio_bound", ratio_bound)
    accuracy_ceiling = check_finite("accuracy_ceiling", accuracy_ceiling)
    beating = [
        p for p in front
        if p.feasible
        and p.ratio >= ratio_bound
        and p.accuracy >= accuracy_ceiling
        and (p.ratio > ratio_bound or p.accuracy > accuracy_ceiling)
    ]
    return max(beating, key=lambda p: (p.accuracy, p.ratio, -p.id), default=None)
