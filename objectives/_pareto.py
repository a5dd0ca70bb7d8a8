"""Pareto front, hypervolume and the recommended trial over (accuracy, compression ratio).

Both objectives are maximised. Only feasible points take part: an infeasible trial is never
recommended, however good it looks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

from objectives._errors import check_finite, check_positive


@dataclasses.dataclass(frozen=True)
class Point:
    """One trial in objective space: accuracy in percent and compression ratio on the target."""

    id: int
    accuracy: float
    ratio: float
    feasible: bool = True

    def __post_init__(self) -> None:
        check_finite(f"accuracy of trial {self.id}", self.accuracy)
        check_positive(f"ratio of trial {self.id}", self.ratio)


def pareto_front(points: Iterable[Point]) -> list[Point]:
    """The feasible points no other feasible point dominates, sorted by ratio ascending.

    ``q`` dominates ``p`` when it is at least as good in both objectives and better in one, so
    duplicates (same accuracy and ratio) do not dominate each other and are all kept.
    """
    candidates = sorted(
        (p for p in points if p.feasible), key=lambda p: (-p.ratio, -p.accuracy, p.id)
    )
    front: list[Point] = []
    best_acc = -math.inf  # best accuracy among points of strictly higher ratio
    i = 0
    # Sweep from the highest ratio down, one group of equal ratio at a time: in a group only the
    # most accurate points survive, and only if beating every higher-ratio point's accuracy.
    while i < len(candidates):
        j = i
        while j < len(candidates) and candidates[j].ratio == candidates[i].ratio:
            j += 1
        group_best = candidates[i].accuracy
        if group_best > best_acc:
            front.extend(p for p in candidates[i:j] if p.accuracy == group_best)
            best_acc = group_best
        i = j
    return sorted(front, key=lambda p: (p.ratio, -p.accuracy, p.id))


def hypervolume(points: Iterable[Point], *, ref_accuracy: float, ref_ratio: float = 1.0) -> float:
    """Area the feasible front dominates above ``(ref_accuracy, ref_ratio)``, in
    (accuracy points) x (log10 ratio) units.

    The ratio axis is logarithmic because compression ratios span orders of magnitude (2x from
    fp16, 100x from pruning plus int8): on a linear axis the area would be ruled by the single
    most compressed trial, and a step from 2x to 4x would count for as little as 100x to 102x.
    In log space every doubling is worth the same. Points at or below the reference in either
    coordinate add nothing; so does every infeasible point.
    """
    ref_accuracy = check_finite("ref_accuracy", ref_accuracy)
    log_ref = math.log10(check_positive("ref_ratio", ref_ratio))
    boxes = [
        (p.accuracy - ref_accuracy, math.log10(p.ratio) - log_ref)
        for p in points
        if p.feasible
    ]
    # Union of the rectangles [0, x] x [0, y]: sweep from the tallest; each box adds the strip
    # of width it reaches beyond every taller box, at its own height.
    area = 0.0
    reach = 0.0
    for x, y in sorted(((x, y) for x, y in boxes if x > 0 and y > 0), key=lambda b: -b[1]):
        if x > reach:
            area += (x - reach) * y
            reach = x
    return area


def recommend(points: Iterable[Point]) -> Point | None:
    """The feasible front point with the highest ratio (ties: higher accuracy, then lower id).

    The constraint already guarantees the accuracy the user asked for, so among feasible trials
    the most compressed one is the one to ship. None when no point is feasible.
    """
    front = pareto_front(points)
    if not front:
        return None
    return max(front, key=lambda p: (p.ratio, p.accuracy, -p.id))
