"""Which feasible trial to recommend: the most compressed one whose accuracy drop the validation
split can vouch for (``confident``), or the most compressed one on its point estimate (``point``).

Why ``confident`` is the default: the recommended trial is the most compressed of many that
passed a noisy test. On a small validation split (digits: 144 to 360 images, one image 0.3 to 0.7
points) the trials that pass on their point estimate include some that lost more than the bound
and got lucky on these images, and the most compressed of them is the likeliest to be one: the
winner's curse. Requiring the upper end of the trial's paired 95 % interval on the drop (see
``PairedDrop.interval``) to lie within the bound makes each trial's pass a test at 2.5 % error,
so luck on a few images no longer carries a trial over. A second held-out split was the other
option; carved from the same small training set it would be as noisy as the first (the same
width at the same size), and re-checking the most compressed few on it would select again on
noise, while costing the teacher and every trial training images.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping

from objectives._errors import ObjectiveError, check_finite
from objectives._pareto import Point, recommend

# A selection rule: (points, upper end of each point's drop interval by id, allowed drop in
# points) -> the point to recommend, or None.
Pick = Callable[[list[Point], Mapping[int, float], float], Point | None]


def vouched(point: Point, drop_upper: Mapping[int, float], allowed_drop: float) -> bool:
    """Whether ``point`` is feasible and the upper end of its drop interval is within
    ``allowed_drop`` (a point without an interval cannot be vouched for)."""
    upper = drop_upper.get(point.id, math.inf)
    return point.feasible and math.isfinite(upper) and upper <= allowed_drop


def recommend_confident(
    points: Iterable[Point], drop_upper: Mapping[int, float], allowed_drop: float
) -> Point | None:
    """The most compressed feasible point whose drop the data vouches for: the upper end of its
    interval (``drop_upper[point.id]``, points) is within ``allowed_drop``. Ties as in
    ``recommend``: higher accuracy, then lower id. None when no point qualifies."""
    allowed_drop = check_finite("allowed_drop", allowed_drop)
    return recommend([p for p in points if vouched(p, drop_upper, allowed_drop)])


def tightest_vouched(
    points: Iterable[Point], drop_upper: Mapping[int, float]
) -> tuple[Point, float] | None:
    """What the data can vouch for: the feasible point with the lowest upper end of its drop
    interval, and that upper end (ties: higher ratio, higher accuracy, lower id). With
    ``--max-drop`` at that value, ``recommend_confident`` could recommend it. None when no
    feasible point has an interval."""
    best: tuple[Point, float] | None = None
    for p in points:
        upper = drop_upper.get(p.id, math.inf)
        if not (p.feasible and math.isfinite(upper)):
            continue
        if best is None or (upper, -p.ratio, -p.accuracy, p.id) < (
            best[1], -best[0].ratio, -best[0].accuracy, best[0].id
        ):
            best = (p, upper)
    return best


def _point(points: list[Point], drop_upper: Mapping[int, float], allowed_drop: float) -> Point | None:
    return recommend(points)


@dataclasses.dataclass(frozen=True)
class Selection:
    """A rule for the recommended trial: its name, what it promises in words, and the pick."""

    name: str
    describe: str
    pick: Pick


SELECTIONS: dict[str, Selection] = {
    s.name: s
    for s in (
        Selection(
            "confident",
            "the most compressed feasible trial whose 95 % interval on the validation drop lies "
            "within the bound",
            recommend_confident,
        ),
        Selection(
            "point",
            "the most compressed feasible trial on its measured validation drop",
            _point,
        ),
    )
}
DEFAULT_SELECTION = "confident"


def selection(name: str) -> Selection:
    """The selection rule called ``name``, or an error listing the valid ones."""
    if name not in SELECTIONS:
        raise ObjectiveError(
            f"selection must be one of {', '.join(SELECTIONS)}, but got {name!r}."
        )
    return SELECTIONS[name]
