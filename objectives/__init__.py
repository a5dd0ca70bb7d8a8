"""Scoring of compression trials: ratios against the teacher, constraints, Pareto front,
hypervolume, the recommended trial (and the rule that picks it), early stopping and the promotion
rule of successive halving. Pure Python (no torch, no Optuna)."""

from objectives._constraints import (
    DEFAULT_MAX_DROP,
    DROP_TYPES,
    Constraint,
    closest_infeasible,
    drop_points,
    format_violations,
)
from objectives._early_stop import EarlyStop, dominated_before_training
from objectives._errors import ObjectiveError
from objectives._paired import Z95, PairedDrop, images_to_decide, paired_drop, zero_drop_upper
from objectives._pareto import Point, hypervolume, pareto_front, recommend
from objectives._promotion import (
    REDUCTION,
    Calibration,
    RungResult,
    fit_calibration,
    plausible,
    promotion_score,
    rung_steps,
    should_promote,
)
from objectives._selection import (
    DEFAULT_SELECTION,
    SELECTIONS,
    Selection,
    recommend_confident,
    selection,
    tightest_vouched,
    vouched,
)
from objectives._targets import (
    TARGET_METRIC,
    TARGET_REGISTRY,
    TARGETS,
    Target,
    estimate_ratio,
    ratio,
    ratios,
    target,
    untrained_ratio_bound,
)

__all__ = [
    "DEFAULT_MAX_DROP",
    "DEFAULT_SELECTION",
    "SELECTIONS",
    "DROP_TYPES",
    "REDUCTION",
    "TARGETS",
    "TARGET_METRIC",
    "TARGET_REGISTRY",
    "Z95",
    "Calibration",
    "Constraint",
    "EarlyStop",
    "ObjectiveError",
    "PairedDrop",
    "RungResult",
    "Point",
    "Selection",
    "Target",
    "closest_infeasible",
    "dominated_before_training",
    "drop_points",
    "fit_calibration",
    "estimate_ratio",
    "untrained_ratio_bound",
    "format_violations",
    "hypervolume",
    "images_to_decide",
    "paired_drop",
    "plausible",
    "promotion_score",
    "pareto_front",
    "ratio",
    "ratios",
    "rung_steps",
    "should_promote",
    "recommend",
    "recommend_confident",
    "selection",
    "target",
    "tightest_vouched",
    "vouched",
    "zero_drop_upper",
]
