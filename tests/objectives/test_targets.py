"""Compression ratios against the teacher."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from objectives import (
    MIN_SLACK_PAIRS,
    TARGET_METRIC,
    TARGET_REGISTRY,
    TARGETS,
    ObjectiveError,
    estimate_ratio,
    fit_untrained_slack,
    metrics,
    ratio,
    ratios,
    target,
    untrained_ratio_bound,
)

BASELINE = {"bytes": 4_000_000.0, "latency_ms": 2.4, "macs": 33e6, "params": 11.2e6}

positive = st.floats(min_value=1e-3, max_value=1e9, allow_nan=False, allow_infinity=False)


def test_every_target_has_a_metric() -> None:
    assert set(TARGETS) == set(TARGET_METRIC)
    assert TARGET_METRIC["size"] == "bytes"
    assert TARGET_METRIC["latency"] == "latency_ms"


def test_ratio_is_teacher_over_trial() -> None:
    metrics = {"bytes": 1_000_000.0, "macs": 11e6, "params": 2.8e6, "latency_ms": 0.6}
    assert ratio("size", BASELINE, metrics) == pytest.approx(4.0)
    assert ratio("macs", BASELINE, metrics) == pytest.approx(3.0)
    assert ratio("params", BASELINE, metrics) == pytest.approx(4.0)
    assert ratio("latency", BASELINE, metrics) == pytest.approx(4.0)


def test_latency_prefers_the_teacher_timed_in_the_same_run() -> None:
    metrics = {"latency_ms": 0.5, "teacher_latency_ms": 3.0}
    assert ratio("latency", BASELINE, metrics) == pytest.approx(6.0)
    # Works even when the baseline was never timed.
    assert ratio("latency", {}, metrics) == pytest.approx(6.0)


def test_teacher_latency_does_not_leak_into_other_targets() -> None:
    metrics = {"bytes": 2_000_000.0, "teacher_latency_ms": 100.0}
    assert ratio("size", BASELINE, metrics) == pytest.approx(2.0)


def test_unknown_target_lists_the_choices() -> None:
    with pytest.raises(ObjectiveError, match="size, latency, macs, params.*'energy'"):
        ratio("energy", BASELINE, {"bytes": 1.0})


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_trial_metric_is_rejected(bad: float) -> None:
    with pytest.raises(ObjectiveError, match="bytes"):
        ratio("size", BASELINE, {"bytes": bad})


def test_non_positive_baseline_is_rejected() -> None:
    with pytest.raises(ObjectiveError, match="baseline"):
        ratio("size", {"bytes": 0.0}, {"bytes": 1.0})


def test_missing_metric_names_the_key() -> None:
    with pytest.raises(ObjectiveError, match="'macs'"):
        ratio("macs", BASELINE, {"bytes": 1.0})
    with pytest.raises(ObjectiveError, match="baseline lacks 'macs'"):
        ratio("macs", {}, {"macs": 1.0})


def test_ratios_covers_the_targets_present() -> None:
    out = ratios(BASELINE, {"bytes": 2_000_000.0, "params": 5.6e6})
    assert out == {"size": pytest.approx(2.0), "params": pytest.approx(2.0)}


def test_ratios_uses_interleaved_latency_without_baseline() -> None:
    out = ratios({"bytes": 10.0}, {"bytes": 5.0, "latency_ms": 1.0, "teacher_latency_ms": 2.0})
    assert out == {"size": pytest.approx(2.0), "latency": pytest.approx(2.0)}


@given(teacher=positive, trial=positive)
def test_ratio_property(teacher: float, trial: float) -> None:
    r = ratio("size", {"bytes": teacher}, {"bytes": trial})
    assert r > 0
    assert r * trial == pytest.approx(teacher, rel=1e-9)
    # A smaller trial never has a smaller ratio.
    assert ratio("size", {"bytes": teacher}, {"bytes": trial / 2}) >= r


def test_targets_and_metrics_are_derived_from_the_registry() -> None:
    assert TARGETS == tuple(TARGET_REGISTRY)
    assert TARGET_METRIC == {name: t.metric for name, t in TARGET_REGISTRY.items()}
    assert set(TARGET_METRIC.values()) <= {
        getattr(metrics, n) for n in dir(metrics) if n.isupper()
    }  # every target is measured by a key of objectives/metrics.py
    assert all(t.label and t.description for t in TARGET_REGISTRY.values())


def test_gzip_size_is_the_ratio_of_gzip_bytes() -> None:
    baseline = {**BASELINE, "gzip_bytes": 3_000_000.0}
    trial = {"bytes": 1_000_000.0, "gzip_bytes": 500_000.0}
    assert "gzip-size" in TARGETS and TARGET_METRIC["gzip-size"] == "gzip_bytes"
    assert ratio("gzip-size", baseline, trial) == pytest.approx(6.0)
    assert ratios(baseline, trial) == {"size": pytest.approx(4.0), "gzip-size": pytest.approx(6.0)}
    assert estimate_ratio("gzip-size", baseline, {"params": 1.0}, bytes_per_weight=1.0) is None


def test_unknown_target_is_refused_by_every_entry_point() -> None:
    with pytest.raises(ObjectiveError, match=r"one of size, latency, macs, params, gzip-size, .*'x'"):
        target("x")
    with pytest.raises(ObjectiveError, match="'x'"):
        estimate_ratio("x", BASELINE, {}, bytes_per_weight=4.0)


@given(params=positive, macs=positive, bytes_per_weight=st.sampled_from([1.0, 2.0, 4.0]))
def test_estimates_match_the_former_hand_written_rules(
    params: float, macs: float, bytes_per_weight: float
) -> None:
    pruned = {"params": params, "macs": macs}

    def by_hand(name: str) -> float | None:  # search/trial.py's rules before the registry
        if name in ("macs", "params"):
            return BASELINE[name] / max(pruned[name], 1.0)
        if name == "size":
            return BASELINE["bytes"] / max(pruned["params"] * bytes_per_weight, 1.0)
        return None

    for name in ("size", "latency", "macs", "params"):
        assert estimate_ratio(name, BASELINE, pruned, bytes_per_weight=bytes_per_weight) == by_hand(name)


def test_the_untrained_ratio_bounds_the_trained_one_within_the_targets_slack() -> None:
    # Shapes and number format fix size, params and MACs; a second timing of the same graph
    # differs by its noise; gzip bytes shrink with clustering and sparsity: no bound at all.
    assert untrained_ratio_bound("size", 10.0) == pytest.approx(10.1)
    assert untrained_ratio_bound("latency", 10.0) == pytest.approx(12.5)
    assert untrained_ratio_bound("params", 10.0) == 10.0
    assert untrained_ratio_bound("gzip-size", 10.0) is None
    with pytest.raises(ObjectiveError, match="measured must be > 0"):
        untrained_ratio_bound("size", 0.0)
    # A study's own slack replaces the target's; gzip bytes stay unbounded whatever is given.
    assert untrained_ratio_bound("latency", 10.0, slack=0.05) == pytest.approx(10.5)
    assert untrained_ratio_bound("gzip-size", 10.0, slack=0.05) is None
    with pytest.raises(ObjectiveError, match="slack must be >= 0"):
        untrained_ratio_bound("latency", 10.0, slack=-0.1)


def test_a_study_fits_its_own_latency_slack_from_its_finished_trials() -> None:
    # Too few pairs: the target's fixed slack.
    few = [(10.0, 10.3)] * (MIN_SLACK_PAIRS - 1)
    assert fit_untrained_slack("latency", few) == 0.25
    # A quiet machine: the trained files timed within -2..+3 % of their untrained students. The
    # fit lies above every excess seen and below the fixed 25 %, so more configs are skipped.
    quiet = [(10.0, 10.0 * (1 + e)) for e in (-0.02, 0.0, 0.01, 0.03, 0.0, -0.01, 0.02, 0.01)]
    fitted = fit_untrained_slack("latency", quiet)
    assert fitted is not None and 0.03 <= fitted < 0.25
    excess = [t / u - 1 for u, t in quiet]
    mean = sum(excess) / len(excess)
    sd = (sum((e - mean) ** 2 for e in excess) / (len(excess) - 1)) ** 0.5
    assert fitted == pytest.approx(mean + 3 * sd)
    # A noisy one: one trained file timed 40 % faster than its untrained student. The fit widens
    # past the fixed slack (skipping on a lucky timing would drop a config that can win).
    noisy = [*quiet[:-1], (10.0, 14.0)]
    wide = fit_untrained_slack("latency", noisy)
    assert wide is not None and wide >= 0.40
    # File bytes agree exactly: the floor, not zero.
    assert fit_untrained_slack("size", [(10.0, 10.0)] * MIN_SLACK_PAIRS) == 0.01
    assert fit_untrained_slack("gzip-size", quiet) is None
    with pytest.raises(ObjectiveError, match="untrained ratio must be > 0"):
        fit_untrained_slack("latency", [(0.0, 1.0)] * MIN_SLACK_PAIRS)
