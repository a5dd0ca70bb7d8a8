"""The accuracy-drop limit (plus optional size and latency bounds) a trial must meet.

Constraint values follow Optuna's convention: a value <= 0 means satisfied, a positive value is
by how much the bound is broken (points of accuracy, bytes, milliseconds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from objectives._errors import (
    ObjectiveError,
    check_accuracy,
    check_finite,
    check_positive,
)

DROP_TYPES: tuple[str, ...] = ("absolute", "relative")

_VAL_ACC = "val_acc"
_BYTES = "bytes"
_LATENCY_MS = "latency_ms"


def drop_points(teacher_acc: float, acc: float) -> float:
    """Accuracy lost against the teacher in percentage points (negative: the trial is better)."""
    return check_finite("teacher_acc", teacher_acc) - check_finite("acc", acc)


def _format_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:g} bytes"


def _metric(metrics: Mapping[str, float], key: str, needed_for: str) -> float:
    if key not in metrics:
        raise ObjectiveError(
            f"metrics lack {key!r} needed for {needed_for}; got keys {sorted(metrics)}."
        )
    return check_finite(f"metrics[{key!r}]", metrics[key])


# The promise a search makes when the user names none: at most 1 point of accuracy lost.
DEFAULT_MAX_DROP = 1.0


@dataclasses.dataclass(frozen=True)
class Constraint:
    """What a trial must satisfy to count as feasible.

    ``max_drop`` is the accuracy the trial may lose against the teacher: percentage points when
    ``drop_type`` is ``"absolute"``, percent of the teacher's accuracy when ``"relative"``
    (2 with a 90 % teacher allows 1.8 points). ``max_size`` (bytes of the artifact) and
    ``max_latency`` (ms, batch 1) are optional hard bounds.
    """

    max_drop: float
    drop_type: str = "absolute"
    max_size: float | None = None
    max_latency: float | None = None

    def __post_init__(self) -> None:
        max_drop = check_finite("max_drop", self.max_drop)
        if not 0.0 <= max_drop < 100.0:
            raise ObjectiveError(
                f"max_drop must satisfy 0 <= max_drop < 100, but got {self.max_drop!r}."
            )
        if self.drop_type not in DROP_TYPES:
            raise ObjectiveError(
                f"drop_type must be one of {', '.join(DROP_TYPES)}, but got {self.drop_type!r}."
            )
        if self.max_size is not None:
            check_positive("max_size (bytes)", self.max_size)
        if self.max_latency is not None:
            check_positive("max_latency (ms)", self.max_latency)

    def allowed_drop(self, teacher_acc: float) -> float:
        """The accuracy drop allowed in points, given the teacher's accuracy in percent."""
        teacher_acc = check_accuracy("teacher_acc", teacher_acc)
        if self.drop_type == "relative":
            return teacher_acc * self.max_drop / 100.0
        return float(self.max_drop)

    def required_accuracy(self, teacher_acc: float) -> float:
        """The lowest validation accuracy (percent) that still satisfies the drop limit."""
        return check_accuracy("teacher_acc", teacher_acc) - self.allowed_drop(teacher_acc)

    def violations(self, teacher_acc: float, metrics: Mapping[str, float]) -> dict[str, float]:
        """Constraint values of a trial (<= 0 satisfied), one per bound that is set.

        ``accuracy_drop`` is the drop in points beyond the allowed one, ``max_size`` the bytes
        over the size bound, ``max_latency`` the milliseconds over the latency bound.
        """
        drop = drop_points(teacher_acc, _metric(metrics, _VAL_ACC, "the accuracy-drop limit"))
        out = {"accuracy_drop": drop - self.allowed_drop(teacher_acc)}
        if self.max_size is not None:
            out["max_size"] = _metric(metrics, _BYTES, "max_size") - self.max_size
        if self.max_latency is not None:
            out["max_latency"] = _metric(metrics, _LATENCY_MS, "max_latency") - self.max_latency
        return out

    def feasible(self, teacher_acc: float, metrics: Mapping[str, float]) -> bool:
        """Whether the trial meets every bound."""
        return all(v <= 0 for v in self.violations(teacher_acc, metrics).values())

    def describe(self) -> str:
        """The constraint in words, e.g. ``accuracy drop <= 1 pt, size <= 2.5 MB``."""
        if self.drop_type == "relative":
            parts = [f"accuracy drop <= {self.max_drop:g} % of teacher accuracy"]
        else:
            parts = [f"accuracy drop <= {self.max_drop:g} pt"]
        if self.max_size is not None:
            parts.append(f"size <= {_format_bytes(self.max_size)}")
        if self.max_latency is not None:
            parts.append(f"latency <= {self.max_latency:g} ms")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form, as stored in the study."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Constraint:
        """Rebuild a constraint from :meth:`to_dict` output (validated like the constructor)."""
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ObjectiveError(
                f"unknown constraint keys {unknown}; valid keys are {', '.join(fields)}."
            )
        if "max_drop" not in data:
            raise ObjectiveError(f"constraint needs 'max_drop'; got keys {sorted(data)}.")
        return cls(**data)


def closest_infeasible(
    trials: Iterable[tuple[int, Mapping[str, float]]], n: int = 3
) -> list[tuple[int, dict[str, float]]]:
    """The ``n`` infeasible trials closest to feasible, each with only the bounds it broke.

    ``trials`` are (trial id, violations) pairs as from :meth:`Constraint.violations`. Bounds are
    in different units, so trials are ranked by how many bounds they broke, then by how many
    points of accuracy they miss, then by bytes and milliseconds over, then by id. Feasible
    trials are left out. Used for "no trial is feasible; closest: #4 broke accuracy_drop by 0.4 pt".
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ObjectiveError(f"n must be an integer >= 0, but got {n!r}.")
    broken: list[tuple[int, dict[str, float]]] = []
    for trial_id, values in trials:
        over = {k: float(v) for k, v in values.items() if v > 0}
        if over:
            broken.append((trial_id, over))

    def key(item: tuple[int, dict[str, float]]) -> tuple[Any, ...]:
        trial_id, over = item
        return (
            len(over),
            over.get("accuracy_drop", 0.0),
            over.get("max_size", 0.0),
            over.get("max_latency", 0.0),
            trial_id,
        )

    return sorted(broken, key=key)[:n]


def format_violations(broken: Mapping[str, float]) -> str:
    """Broken bounds in words, e.g. ``accuracy_drop by 0.4 pt, max_size by 120 kB``."""
    return ", ".join(f"{k} by {_format_violation(k, v)}" for k, v in broken.items())


def _format_violation(key: str, value: float) -> str:
    if key == "accuracy_drop":
        return f"{value:.3g} pt"
    if key == "max_size":
        return _format_bytes(value)
    if key == "max_latency":
        return f"{value:.3g} ms"
    return f"{value:.3g}"
