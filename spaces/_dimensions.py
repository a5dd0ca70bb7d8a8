"""The kinds of search dimension: a float range, an int range, a list of choices, a fixed value.

Each is a small frozen type validated where it is built, so a malformed range never reaches a
sampler (Optuna would only warn about some of these, and warnings must not reach the user).
"""

from __future__ import annotations

import dataclasses
import math
from decimal import Decimal
from typing import Any, Protocol

from stages.errors import ConfigError

Scalar = bool | int | float | str


class SpaceError(ConfigError):
    """A search space or space file is malformed (the user's input is wrong)."""


class TrialLike(Protocol):
    """What a define-by-run function needs from a trial: Optuna's ``Trial`` (also what Ray
    Tune's ``OptunaSearch`` hands over) has all of it."""

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...

    def suggest_int(
        self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
    ) -> int: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _same(a: object, b: object) -> bool:
    """Equality that does not take ``True`` for ``1`` (Python does)."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _describe_range(low: float, high: float, *, log: bool, step: float | None) -> str:
    """``low .. high``, then `` log`` and `` step s`` where they apply (``step`` None: no grid)."""
    text = f"{low} .. {high}"
    if log:
        text += " log"
    if step is not None:
        text += f" step {step}"
    return text


@dataclasses.dataclass(frozen=True)
class FloatRange:
    """Floats in ``[low, high]``; ``log`` samples on a log scale, ``step`` on a grid from low."""

    low: float
    high: float
    log: bool = False
    step: float | None = None

    def __post_init__(self) -> None:
        for name in ("low", "high"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value):
                raise SpaceError(f"FloatRange {name} must be a finite number, but got {value!r}.")
            object.__setattr__(self, name, float(value))
        if self.low > self.high:
            raise SpaceError(
                f"`low <= high` must hold, but got (low={self.low}, high={self.high})."
            )
        if not isinstance(self.log, bool):
            raise SpaceError(f"log must be true or false, but got {self.log!r}.")
        if self.log and self.low <= 0:
            raise SpaceError(
                f"a log range needs low > 0, but got (low={self.low}, high={self.high})."
            )
        if self.step is None:
            return
        if not _is_number(self.step) or not math.isfinite(self.step) or self.step <= 0:
            raise SpaceError(f"step must be a number > 0, but got step={self.step!r}.")
        object.__setattr__(self, "step", float(self.step))
        if self.log:
            raise SpaceError(
                f"a range takes log or step, not both, but got (log=true, step={self.step})."
            )
        # Decimal, like Optuna's own check, so 0.1-style steps are not misjudged by binary rounding.
        if (Decimal(str(self.high)) - Decimal(str(self.low))) % Decimal(str(self.step)) != 0:
            raise SpaceError(
                f"high - low must be a multiple of step, but got "
                f"(low={self.low}, high={self.high}, step={self.step})."
            )

    def contains(self, value: object) -> bool:
        """Whether a sampler could return ``value`` (on the grid when there is a step)."""
        if not _is_number(value):
            return False
        if not self.low <= value <= self.high:
            return False
        if self.step is None:
            return True
        k = (value - self.low) / self.step
        return abs(k - round(k)) < 1e-8

    def extremes(self) -> tuple[float, ...]:
        """The values that bound what the dimension can produce."""
        return (self.low, self.high)

    def suggest(self, trial: TrialLike, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        return _describe_range(self.low, self.high, log=self.log, step=self.step)


@dataclasses.dataclass(frozen=True)
class IntRange:
    """Integers in ``[low, high]`` every ``step``; ``log`` samples on a log scale (step 1 only)."""

    low: int
    high: int
    log: bool = False
    step: int = 1

    def __post_init__(self) -> None:
        for name in ("low", "high", "step"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise SpaceError(f"IntRange {name} must be an integer, but got {value!r}.")
        if self.low > self.high:
            raise SpaceError(
                f"`low <= high` must hold, but got (low={self.low}, high={self.high})."
            )
        if not isinstance(self.log, bool):
            raise SpaceError(f"log must be true or false, but got {self.log!r}.")
        if self.step < 1:
            raise SpaceError(f"step must be an integer >= 1, but got step={self.step}.")
        if self.log and self.low < 1:
            raise SpaceError(
                f"a log range needs low >= 1, but got (low={self.low}, high={self.high})."
            )
        if self.log and self.step != 1:
            raise SpaceError(f"a log range takes no step, but got (log=true, step={self.step}).")
        if (self.high - self.low) % self.step:
            raise SpaceError(
                f"high - low must be a multiple of step, but got "
                f"(low={self.low}, high={self.high}, step={self.step})."
            )

    def contains(self, value: object) -> bool:
        """Whether a sampler could return ``value``."""
        if not _is_number(value):
            return False
        if not math.isfinite(value) or value != int(value):
            return False
        return self.low <= value <= self.high and (int(value) - self.low) % self.step == 0

    def extremes(self) -> tuple[int, ...]:
        return (self.low, self.high)

    def suggest(self, trial: TrialLike, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def describe(self) -> str:
        return _describe_range(
            self.low, self.high, log=self.log, step=None if self.step == 1 else self.step
        )


@dataclasses.dataclass(frozen=True)
class Choice:
    """One of a few values (strings, numbers or booleans), none repeated."""

    choices: tuple[Scalar, ...]

    def __post_init__(self) -> None:
        if isinstance(self.choices, (str, bytes)) or not hasattr(self.choices, "__iter__"):
            raise SpaceError(f"choices must be a list of values, but got {self.choices!r}.")
        choices = tuple(self.choices)
        if not choices:
            raise SpaceError("choices must hold at least one value, but got none.")
        for choice in choices:
            if not isinstance(choice, (bool, int, float, str)):
                raise SpaceError(
                    f"a choice must be a string, number or boolean, but got {choice!r}."
                )
        for i, choice in enumerate(choices):
            if any(_same(choice, other) for other in choices[:i]):
                raise SpaceError(
                    f"choices must not repeat, but {choice!r} appears twice in {list(choices)}."
                )
        object.__setattr__(self, "choices", choices)

    def contains(self, value: object) -> bool:
        return any(_same(value, choice) for choice in self.choices)

    def extremes(self) -> tuple[Scalar, ...]:
        return self.choices

    def suggest(self, trial: TrialLike, name: str) -> Any:
        return trial.suggest_categorical(name, self.choices)

    def describe(self) -> str:
        return " | ".join(str(choice) for choice in self.choices)


@dataclasses.dataclass(frozen=True)
class Fixed:
    """A setting held at one value in every trial (not a parameter the sampler sees)."""

    value: Scalar

    def __post_init__(self) -> None:
        if not isinstance(self.value, (bool, int, float, str)):
            raise SpaceError(
                f"a fixed value must be a string, number or boolean, but got {self.value!r}."
            )

    def contains(self, value: object) -> bool:
        return _same(value, self.value)

    def extremes(self) -> tuple[Scalar, ...]:
        return (self.value,)

    def describe(self) -> str:
        return f"= {self.value}"


Dimension = FloatRange | IntRange | Choice | Fixed
DIMENSION_TYPES = (FloatRange, IntRange, Choice, Fixed)
