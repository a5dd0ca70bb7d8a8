"""Is a teacher worth compressing? A teacher near chance level makes every number a study prints
meaningless (its students are "within 1 point" of a guess), so it is refused before a study,
``try`` or ``bench`` spends anything, and ``train`` warns when it produces one.

The rule: a teacher is weak when its validation accuracy is below the chance level plus
``max(5 points, 10 % of the distance from chance to 100 %)``, where the chance level is the
accuracy of always answering the most frequent validation class (10 % for 10 balanced classes,
so the bound is 19 %).
"""

from __future__ import annotations

import dataclasses

import torch

__all__ = ["TeacherQuality", "chance_level", "teacher_quality"]

MARGIN_POINTS = 5.0
MARGIN_SHARE = 0.1


def chance_level(labels: torch.Tensor) -> float:
    """Accuracy in percent of always answering the most frequent class of ``labels``."""
    if labels.numel() == 0:
        return 0.0
    return 100.0 * float(torch.bincount(labels.flatten()).max()) / labels.numel()


@dataclasses.dataclass(frozen=True)
class TeacherQuality:
    """A teacher's validation accuracy beside the chance level of its validation split."""

    val_acc: float
    chance: float
    num_classes: int

    @property
    def bound(self) -> float:
        """The accuracy a teacher must reach not to count as weak."""
        return self.chance + max(MARGIN_POINTS, MARGIN_SHARE * (100.0 - self.chance))

    @property
    def weak(self) -> bool:
        return self.val_acc < self.bound

    def describe(self) -> str:
        """``12.22 % validation accuracy, where chance is 10.00 % for 10 classes (weak below 19.00 %)``."""
        return (
            f"{self.val_acc:.2f} % validation accuracy, where chance is {self.chance:.2f} % for "
            f"{self.num_classes} classes (weak below {self.bound:.2f} %)"
        )


def teacher_quality(val_acc: float, labels: torch.Tensor, num_classes: int) -> TeacherQuality:
    """``val_acc`` (percent) judged against the chance level of the validation ``labels``."""
    return TeacherQuality(val_acc=val_acc, chance=chance_level(labels), num_classes=num_classes)
