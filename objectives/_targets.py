"""Compression targets and their ratios against the teacher (bigger is better).

``TARGET_REGISTRY`` holds one ``Target`` per name; ``TARGETS`` (the names, as ``--target``
offers them) and ``TARGET_METRIC`` are derived from it, so a new target is one entry here.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Mapping, Sequence

from objectives import metrics
from objectives._errors import ObjectiveError, check_positive

# (teacher metrics, pruned model's torch metrics, bytes per weight of the quantization mode)
# -> the best ratio a config can still reach, known right after pruning.
Estimate = Callable[[Mapping[str, float], Mapping[str, float], float], float]


@dataclasses.dataclass(frozen=True)
class Target:
    """What a study can maximise: the teacher's ``metric`` over the trial's.

    ``reference_metric`` names the teacher's value measured in the trial's own run (preferred
    over the baseline, so machine drift cancels); ``estimate`` bounds the ratio right after
    pruning (None when only measuring the final file tells); ``label`` and ``unit`` head tables;
    ``gain`` says what a ratio above 1 means ("3.0x smaller"); ``untrained_slack`` how much
    (relative) the trained file's ratio may exceed the ratio its untrained structural student
    measured (None: that measurement bounds nothing, see ``untrained_ratio_bound``).
    """

    metric: str
    label: str
    unit: str
    description: str
    gain: str = "smaller"
    reference_metric: str | None = None
    estimate: Estimate | None = None
    untrained_slack: float | None = 0.0


def _counted(metric: str) -> Estimate:
    """Params and MACs are final once pruning is done: the ratio is already known."""
    return lambda baseline, pruned, bytes_per_weight: baseline[metric] / max(pruned[metric], 1.0)


def _file_bytes(baseline: Mapping[str, float], pruned: Mapping[str, float], bpw: float) -> float:
    """The file holds at least every weight at the mode's width."""
    return baseline[metrics.BYTES] / max(pruned[metrics.PARAMS] * bpw, 1.0)


TARGET_REGISTRY: dict[str, Target] = {
    # Training changes weight values, not tensor shapes or the number format: the file holds
    # the same tensors (the trained file measured 1.6-14 % larger on the tiny test model, never
    # smaller: what the final file records beside them, quantization ranges; see tests/search/test_run.py).
    "size": Target(
        metrics.BYTES, "size", "bytes", "file bytes of the exported model", estimate=_file_bytes,
        untrained_slack=0.01,
    ),
    "latency": Target(
        metrics.LATENCY_MS,
        "latency",
        "ms",
        "ONNX Runtime batch-1 latency",
        gain="faster",
        reference_metric=metrics.TEACHER_LATENCY_MS,
        # The same graph timed twice: the slack is the timing's own run-to-run noise on a busy
        # machine (the interleaved teacher cancels drift, not jitter).
        untrained_slack=0.25,
    ),
    "macs": Target(metrics.MACS, "MACs", "", "multiply-accumulates", "fewer", estimate=_counted(metrics.MACS)),
    "params": Target(
        metrics.PARAMS, "params", "", "parameters", "fewer", estimate=_counted(metrics.PARAMS)
    ),
    # gzip can shrink clustered or sparse weights far below their width: no bound before training.
    "gzip-size": Target(
        metrics.GZIP_BYTES, "gzip size", "bytes", "gzip bytes of the exported model", untrained_slack=None
    ),
}

TARGETS: tuple[str, ...] = tuple(TARGET_REGISTRY)

# target -> the metric key (see objectives/metrics.py) it is measured by.
TARGET_METRIC: dict[str, str] = {name: t.metric for name, t in TARGET_REGISTRY.items()}


def target(name: str) -> Target:
    """The registry entry of ``name``; an unknown name raises listing the valid ones."""
    if name not in TARGET_REGISTRY:
        raise ObjectiveError(f"target must be one of {', '.join(TARGETS)}, but got {name!r}.")
    return TARGET_REGISTRY[name]


def _reference(entry: Target, baseline: Mapping[str, float], metrics: Mapping[str, float]) -> str | None:
    """Where the teacher's value comes from: ``"metrics"``, ``"baseline"`` or None (nowhere)."""
    if entry.reference_metric is not None and entry.reference_metric in metrics:
        return "metrics"
    return "baseline" if entry.metric in baseline else None


def ratio(target_name: str, baseline: Mapping[str, float], metrics: Mapping[str, float]) -> float:
    """Compression ratio of a trial on ``target_name``: teacher metric / trial metric.

    ``baseline`` holds the teacher's metrics, ``metrics`` the trial's. A target's
    ``reference_metric`` in ``metrics`` (latency's ``teacher_latency_ms``, the teacher timed
    interleaved in the same run) is used instead of the baseline's, so machine drift cancels out.
    """
    entry = target(target_name)
    key = entry.metric
    if key not in metrics:
        raise ObjectiveError(
            f"metrics lack {key!r} needed for target {target_name!r}; got keys {sorted(metrics)}."
        )
    value = check_positive(f"metrics[{key!r}]", metrics[key])
    source = _reference(entry, baseline, metrics)
    if source == "metrics":
        ref = entry.reference_metric
        reference = check_positive(f"metrics[{ref!r}]", metrics[ref])  # type: ignore[index]
    elif source == "baseline":
        reference = check_positive(f"baseline[{key!r}]", baseline[key])
    else:
        raise ObjectiveError(
            f"baseline lacks {key!r} needed for target {target_name!r}; "
            f"got keys {sorted(baseline)}."
        )
    return reference / value


def ratios(baseline: Mapping[str, float], metrics: Mapping[str, float]) -> dict[str, float]:
    """Ratios for every target whose metric the trial has and the teacher can be compared on.

    A target is left out when ``metrics`` lacks its metric, or when ``baseline`` lacks it too
    (latency can still use the interleaved ``teacher_latency_ms``).
    """
    return {
        name: ratio(name, baseline, metrics)
        for name, entry in TARGET_REGISTRY.items()
        if entry.metric in metrics and _reference(entry, baseline, metrics) is not None
    }


def estimate_ratio(
    target_name: str,
    baseline: Mapping[str, float],
    pruned: Mapping[str, float],
    *,
    bytes_per_weight: float,
) -> float | None:
    """The best ``target_name`` ratio a config can reach, known right after pruning from the
    pruned model's ``params``/``macs`` and the quantization mode's ``bytes_per_weight``; None
    when the target cannot be bounded before measuring (latency, gzip size)."""
    entry = target(target_name)
    if entry.estimate is None:
        return None
    return entry.estimate(baseline, pruned, bytes_per_weight)


def untrained_ratio_bound(target_name: str, measured: float, *, slack: float | None = None) -> float | None:
    """The most ``target_name`` ratio a config's trained file can have, given the ratio
    ``measured`` on its untrained structural student (exported in its number format): that ratio
    plus ``slack`` (relative; by default the target's ``untrained_slack``, see
    ``fit_untrained_slack`` for a study's own); None when training can move it without bound
    (gzip bytes, which clustering and sparsity shrink)."""
    fixed = target(target_name).untrained_slack
    if fixed is None:
        return None
    slack = fixed if slack is None else slack
    if slack < 0:
        raise ObjectiveError(f"slack must be >= 0, but got {slack!r}.")
    return check_positive("measured", measured) * (1.0 + slack)


# Finished trials that measured both their untrained structural student and their trained file a
# study needs before its own slack replaces the target's fixed one.
MIN_SLACK_PAIRS = 8
# The fitted slack reaches this many sample sds beyond the mean excess, never below the largest
# excess the study saw, nor below SLACK_FLOOR.
SLACK_SDS = 3.0
SLACK_FLOOR = 0.01


def fit_untrained_slack(target_name: str, pairs: Sequence[tuple[float, float]]) -> float | None:
    """The slack the study's own trials support: ``pairs`` of (ratio measured on the untrained
    structural student, ratio measured on the trained file) of its finished trials. The trained
    file has the untrained student's graph (its weights changed), so what separates the two is
    the measurement's own noise: the relative excess ``trained / untrained - 1``, bounded by
    ``max(largest excess, mean + SLACK_SDS sds, SLACK_FLOOR)``. Narrower than the target's fixed
    slack on a quiet machine (more configs skipped before training), wider on a noisy one
    (none skipped on a lucky timing). The target's fixed slack with fewer than
    ``MIN_SLACK_PAIRS`` pairs; None for a target the untrained ratio bounds nothing of."""
    fixed = target(target_name).untrained_slack
    if fixed is None or len(pairs) < MIN_SLACK_PAIRS:
        return fixed
    excess = [check_positive("trained ratio", t) / check_positive("untrained ratio", u) - 1.0 for u, t in pairs]
    spread = statistics.fmean(excess) + SLACK_SDS * statistics.stdev(excess)
    return max(SLACK_FLOOR, max(excess), spread)
