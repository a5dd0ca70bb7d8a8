"""Early stopping for constrained multi-objective studies, which Optuna's pruners do not cover
(they are single-objective only).

Two rules: stop a trial whose validation accuracy during distillation is too far below the
required accuracy to catch up in the budget left, and skip a config before any training when
even the best accuracy it could reach would not get it onto the front.
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
    estimated_ratio: float, front: Sequence[Point], accuracy_ceiling: float
) -> bool:
    """Whether a config is already beaten before it is trained.

    ``estimated_ratio`` is the config's ratio known before training (MACs or params after
    pruning, or an estimated size); ``accuracy_ceiling`` the best accuracy it could reach (e.g.
    the teacher's). True when a feasible front point has at least that ratio and at least that
    accuracy: training the config cannot add a non-dominated point.
    """
    estimated_ratio = check_positive("estimated_ratio", estimated_ratio)
    accuracy_ceiling = check_finite("accuracy_ceiling", accuracy_ceiling)
    return any(
        p.feasible and p.ratio >= estimated_ratio and p.accuracy >= accuracy_ceiling
        for p in front
    )
