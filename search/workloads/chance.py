"""Whether a teacher is worth compressing: a teacher near chance level makes every ratio against
it meaningless, so the search refuses it before any work (unless --allow-weak-teacher)."""

from __future__ import annotations

from search.errors import UserError


def chance_margin(num_classes: int) -> tuple[float, float]:
    """``(chance, bound)`` in percent: the accuracy of guessing among ``num_classes`` classes,
    and the accuracy a teacher must exceed to be worth compressing: chance plus 5 points or a
    tenth of the way from chance to 100 %, whichever is more (19 % for 10 classes)."""
    chance = 100.0 / max(1, num_classes)
    return chance, chance + max(5.0, (100.0 - chance) / 10)


def weak_teacher(val_acc: float, num_classes: int) -> str | None:
    """Why a teacher at ``val_acc`` % validation accuracy is too close to chance to compress
    (every ratio against it would be meaningless), or None when it is not."""
    chance, bound = chance_margin(num_classes)
    if val_acc >= bound:
        return None
    return (
        f"the teacher reaches {val_acc:.2f} % validation accuracy, within a few points of chance "
        f"({chance:.2f} % for {num_classes} classes; below {bound:.2f} % counts as chance level)"
    )


def refuse_weak_teacher(val_acc: float, num_classes: int) -> None:
    """Stop with one line before any work when the teacher is near chance level."""
    why = weak_teacher(val_acc, num_classes)
    if why is not None:
        raise UserError(
            f"{why}: compressing it would measure nothing. Train it longer or with another recipe "
            "(mcaas-search train --epochs N), or pass --allow-weak-teacher to go on anyway"
        )
