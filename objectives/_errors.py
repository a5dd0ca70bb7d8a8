"""The error raised for bad objective, constraint or early-stopping input, and the validators
that raise it (each failure is one line: what was wrong, what was expected, the input)."""

from __future__ import annotations

import math
import numbers


class ObjectiveError(ValueError):
    """An objective, constraint or early-stopping input is unknown or out of range.

    The CLI turns it into a one-line message with exit code 2, like every other bad input.
    """


def check_finite(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ObjectiveError(f"{name} must be a number, but got {value!r}.")
    number = float(value)
    if not math.isfinite(number):
        raise ObjectiveError(f"{name} must be a finite number, but got {value!r}.")
    return number


def check_positive(name: str, value: float) -> float:
    """Return ``value`` as a float, or raise if it is not a finite number > 0."""
    number = check_finite(name, value)
    if number <= 0:
        raise ObjectiveError(f"{name} must be > 0, but got {value!r}.")
    return number


def check_accuracy(name: str, value: float) -> float:
    """Return an accuracy in percent, or raise if it lies outside [0, 100]."""
    number = check_finite(name, value)
    if not 0.0 <= number <= 100.0:
        raise ObjectiveError(f"{name} must be a percentage in [0, 100], but got {value!r}.")
    return number
