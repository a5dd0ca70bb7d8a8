"""The accuracy drop of a student against its teacher on the same images, with a confidence
interval: a paired difference of two proportions, decided only by the images one model gets right
and the other wrong (``lost``: only the teacher; ``gained``: only the student)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

# 95 % two-sided normal quantile.
Z95 = 1.959963984540054


@dataclasses.dataclass(frozen=True)
class PairedDrop:
    """Accuracy drop of a student against the teacher on the same ``n`` images, with the counts
    of images only the teacher (``lost``) or only the student (``gained``) got right."""

    n: int
    lost: int
    gained: int

    def __post_init__(self) -> None:
        if self.n <= 0 or self.lost < 0 or self.gained < 0 or self.lost + self.gained > self.n:
            raise ValueError(
                f"need 0 <= lost + gained <= n and n > 0, but got n={self.n}, "
                f"lost={self.lost}, gained={self.gained}"
            )

    @property
    def drop(self) -> float:
        """The drop in points: teacher accuracy minus student accuracy on these images."""
        return 100.0 * (self.lost - self.gained) / self.n

    def interval(self) -> tuple[float, float]:
        """95 % interval of the drop in points: Agresti and Min's adjusted Wald interval for a
        paired difference of proportions (half an image added to each discordant count, so two
        models that agree on every image of a small split still get an honest width)."""
        n = self.n + 2
        lost, gained = self.lost + 0.5, self.gained + 0.5
        diff = (lost - gained) / n
        var = max((lost + gained) / n - diff * diff, 0.0) / n
        half = Z95 * math.sqrt(var)
        return 100.0 * (diff - half), 100.0 * (diff + half)


def paired_drop(teacher_correct: Any, student_correct: Any) -> PairedDrop:
    """Counts of images lost and gained from per-image correctness (boolean numpy arrays in the
    same image order) of teacher and student."""
    if teacher_correct.shape != student_correct.shape or teacher_correct.size == 0:
        raise ValueError("need per-image results of teacher and student on the same non-empty split")
    lost = int((teacher_correct & ~student_correct).sum())
    gained = int((~teacher_correct & student_correct).sum())
    return PairedDrop(int(teacher_correct.size), lost, gained)


def zero_drop_upper(n: int) -> float:
    """The upper end (points) of the 95 % interval of a student that agrees with the teacher on
    every one of ``n`` images: the smallest drop bound a split of ``n`` images can vouch for."""
    return PairedDrop(n, 0, 0).interval()[1]


def images_to_decide(allowed_drop: float) -> int | None:
    """The fewest validation images on which a student that agrees with the teacher everywhere
    is vouched for within ``allowed_drop`` points (``zero_drop_upper(n) <= allowed_drop``); None
    for a bound of 0, which no split can vouch for."""
    if not math.isfinite(allowed_drop) or allowed_drop < 0:
        raise ValueError(f"allowed_drop must be a finite number >= 0, but got {allowed_drop!r}")
    if allowed_drop == 0:
        return None
    # zero_drop_upper(n) is 100 * Z95 / (n + 2): solve, then step past rounding at the edge.
    n = max(1, math.ceil(100.0 * Z95 / allowed_drop) - 2)
    while n > 1 and zero_drop_upper(n - 1) <= allowed_drop:
        n -= 1
    while zero_drop_upper(n) > allowed_drop:
        n += 1
    return n
