"""Compression targets and their ratios against the teacher (bigger is better)."""

from __future__ import annotations

from collections.abc import Mapping

from objectives._errors import ObjectiveError, check_positive

TARGETS: tuple[str, ...] = ("size", "latency", "macs", "params")

# target -> the metric key (see objectives/metrics.py) it is measured by.
TARGET_METRIC: dict[str, str] = {
    "size": "bytes",
    "latency": "latency_ms",
    "macs": "macs",
    "params": "params",
}

_TEACHER_LATENCY = "teacher_latency_ms"


def _check_target(target: str) -> str:
    if target not in TARGET_METRIC:
        raise ObjectiveError(f"target must be one of {', '.join(TARGETS)}, but got {target!r}.")
    return TARGET_METRIC[target]


def ratio(target: str, baseline: Mapping[str, float], metrics: Mapping[str, float]) -> float:
    """Compression ratio of a trial on ``target``: teacher metric / trial metric.

    ``baseline`` holds the teacher's metrics, ``metrics`` the trial's. For latency, a
    ``teacher_latency_ms`` in ``metrics`` (the teacher timed interleaved in the same run) is used
    instead of the baseline's, so machine drift between runs cancels out.
    """
    key = _check_target(target)
    if key not in metrics:
        raise ObjectiveError(
            f"metrics lack {key!r} needed for target {target!r}; got keys {sorted(metrics)}."
        )
    value = check_positive(f"metrics[{key!r}]", metrics[key])
    if target == "latency" and _TEACHER_LATENCY in metrics:
        reference = check_positive(f"metrics[{_TEACHER_LATENCY!r}]", metrics[_TEACHER_LATENCY])
    elif key in baseline:
        reference = check_positive(f"baseline[{key!r}]", baseline[key])
    else:
        raise ObjectiveError(
            f"baseline lacks {key!r} needed for target {target!r}; got keys {sorted(baseline)}."
        )
    return reference / value


def ratios(baseline: Mapping[str, float], metrics: Mapping[str, float]) -> dict[str, float]:
    """Ratios for every target whose metric the trial has and the teacher can be compared on.

    A target is left out when ``metrics`` lacks its metric, or when ``baseline`` lacks it too
    (latency can still use the interleaved ``teacher_latency_ms``).
    """
    out: dict[str, float] = {}
    for target in TARGETS:
        key = TARGET_METRIC[target]
        has_reference = key in baseline or (target == "latency" and _TEACHER_LATENCY in metrics)
        if key in metrics and has_reference:
            out[target] = ratio(target, baseline, metrics)
    return out
