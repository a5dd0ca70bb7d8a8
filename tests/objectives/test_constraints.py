"""The accuracy-drop constraint, optional bounds, and the closest infeasible trials."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from objectives import (
    Constraint,
    ObjectiveError,
    closest_infeasible,
    drop_points,
    format_violations,
)

accuracy = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
max_drop = st.floats(min_value=0.0, max_value=99.9, allow_nan=False)
bound = st.none() | st.floats(min_value=1e-3, max_value=1e9, allow_nan=False)
constraints = st.builds(
    Constraint,
    max_drop=max_drop,
    drop_type=st.sampled_from(["absolute", "relative"]),
    max_size=bound,
    max_latency=bound,
)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_drop": -0.5}, "max_drop must satisfy 0 <= max_drop < 100, but got -0.5"),
        ({"max_drop": 100}, "but got 100"),
        ({"max_drop": float("nan")}, "max_drop must be a finite number"),
        ({"max_drop": "1"}, "max_drop must be a number, but got '1'"),
        ({"max_drop": 1, "drop_type": "percent"}, "absolute, relative, but got 'percent'"),
        ({"max_drop": 1, "max_size": 0}, r"max_size \(bytes\) must be > 0, but got 0"),
        ({"max_drop": 1, "max_latency": -2.0}, r"max_latency \(ms\) must be > 0, but got -2.0"),
    ],
)
def test_bad_constraint_is_one_line_echoing_input(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ObjectiveError, match=message) as info:
        Constraint(**kwargs)
    assert "\n" not in str(info.value)


def test_allowed_drop_absolute_and_relative() -> None:
    assert Constraint(1.0).allowed_drop(90.0) == pytest.approx(1.0)
    assert Constraint(2.0, "relative").allowed_drop(90.0) == pytest.approx(1.8)
    assert Constraint(2.0, "relative").required_accuracy(90.0) == pytest.approx(88.2)
    assert Constraint(0.5).required_accuracy(91.3) == pytest.approx(90.8)


def test_teacher_accuracy_must_be_percent() -> None:
    with pytest.raises(ObjectiveError, match=r"teacher_acc must be a percentage in \[0, 100\]"):
        Constraint(1.0).allowed_drop(120.0)


def test_violations_only_for_bounds_that_are_set() -> None:
    metrics = {"val_acc": 89.5, "bytes": 2_000.0, "latency_ms": 1.5}
    assert Constraint(1.0).violations(90.0, metrics) == {"accuracy_drop": pytest.approx(-0.5)}
    both = Constraint(1.0, max_size=1_500.0, max_latency=2.0).violations(90.0, metrics)
    assert both == {
        "accuracy_drop": pytest.approx(-0.5),
        "max_size": pytest.approx(500.0),
        "max_latency": pytest.approx(-0.5),
    }


def test_feasible_on_the_boundary_and_not_beyond() -> None:
    c = Constraint(1.0)
    assert c.feasible(90.0, {"val_acc": 89.0})
    assert not c.feasible(90.0, {"val_acc": 88.9})
    assert not Constraint(1.0, max_size=10.0).feasible(90.0, {"val_acc": 90.0, "bytes": 11.0})


def test_violations_need_the_metric_of_each_bound() -> None:
    with pytest.raises(ObjectiveError, match="'bytes' needed for max_size"):
        Constraint(1.0, max_size=10.0).violations(90.0, {"val_acc": 90.0})
    with pytest.raises(ObjectiveError, match="'val_acc'"):
        Constraint(1.0).violations(90.0, {"bytes": 1.0})


def test_describe() -> None:
    assert Constraint(1.0).describe() == "accuracy drop <= 1 pt"
    assert Constraint(2, "relative").describe() == "accuracy drop <= 2 % of teacher accuracy"
    assert (
        Constraint(0.5, max_size=2_500_000, max_latency=1.2).describe()
        == "accuracy drop <= 0.5 pt, size <= 2.5 MB, latency <= 1.2 ms"
    )


@given(constraints)
def test_dict_round_trip_through_json(c: Constraint) -> None:
    assert Constraint.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_from_dict_rejects_unknown_and_missing_keys() -> None:
    with pytest.raises(ObjectiveError, match=r"unknown constraint keys \['max_dorp'\]"):
        Constraint.from_dict({"max_dorp": 1.0})
    with pytest.raises(ObjectiveError, match="needs 'max_drop'"):
        Constraint.from_dict({"drop_type": "absolute"})
    with pytest.raises(ObjectiveError, match="max_drop"):
        Constraint.from_dict({"max_drop": 200})


@given(c=constraints, teacher=accuracy, val=accuracy)
def test_accuracy_violation_agrees_with_required_accuracy(
    c: Constraint, teacher: float, val: float
) -> None:
    required = c.required_accuracy(teacher)
    assume(abs(val - required) > 1e-9)  # exact float ties may round either way
    value = c.violations(teacher, {"val_acc": val, "bytes": 1.0, "latency_ms": 1e-6})
    assert (value["accuracy_drop"] <= 0) == (val >= required)
    assert value["accuracy_drop"] == pytest.approx(
        drop_points(teacher, val) - c.allowed_drop(teacher), abs=1e-9
    )
    assert 0.0 <= c.allowed_drop(teacher) <= max(c.max_drop, teacher)


@given(
    c=constraints,
    size=st.floats(min_value=1.0, max_value=1e9),
    latency=st.floats(min_value=1e-3, max_value=1e3),
)
def test_feasible_iff_every_bound_holds(c: Constraint, size: float, latency: float) -> None:
    metrics = {"val_acc": 95.0, "bytes": size, "latency_ms": latency}
    expected = (c.max_size is None or size <= c.max_size) and (
        c.max_latency is None or latency <= c.max_latency
    )
    # Teacher at the trial's accuracy: the drop bound holds, so only size/latency decide.
    assert c.feasible(95.0, metrics) == expected
    assert set(c.violations(95.0, metrics)) == {"accuracy_drop"} | {
        k for k in ("max_size", "max_latency") if getattr(c, k) is not None
    }


def test_drop_points() -> None:
    assert drop_points(91.3, 90.3) == pytest.approx(1.0)
    assert drop_points(90.0, 91.0) == pytest.approx(-1.0)


def test_closest_infeasible_ranks_by_broken_count_then_accuracy() -> None:
    trials = [
        (1, {"accuracy_drop": 2.0, "max_size": 10.0}),  # two bounds broken
        (2, {"accuracy_drop": 0.9, "max_size": -5.0}),
        (3, {"accuracy_drop": -0.1, "max_size": -1.0}),  # feasible: left out
        (4, {"accuracy_drop": 0.4}),
        (5, {"accuracy_drop": -1.0, "max_size": 3.0}),
    ]
    out = closest_infeasible(trials, n=3)
    assert out == [(5, {"max_size": 3.0}), (4, {"accuracy_drop": 0.4}), (2, {"accuracy_drop": 0.9})]
    assert closest_infeasible(trials, n=10)[-1] == (1, {"accuracy_drop": 2.0, "max_size": 10.0})
    assert closest_infeasible(trials, n=0) == []


@pytest.mark.parametrize("n", [-1, 1.5, True])
def test_closest_infeasible_rejects_bad_n(n: Any) -> None:
    with pytest.raises(ObjectiveError, match="n must be an integer >= 0"):
        closest_infeasible([], n=n)


violation_value = st.floats(min_value=-5.0, max_value=5.0, allow_nan=False)
violation_dicts = st.fixed_dictionaries(
    {"accuracy_drop": violation_value},
    optional={"max_size": violation_value, "max_latency": violation_value},
)


@given(st.lists(violation_dicts, max_size=12), st.integers(min_value=0, max_value=6))
def test_closest_infeasible_properties(dicts: list[dict[str, float]], n: int) -> None:
    trials = list(enumerate(dicts))
    infeasible = {i for i, d in trials if any(v > 0 for v in d.values())}
    out = closest_infeasible(trials, n=n)
    assert len(out) == min(n, len(infeasible))
    chosen = {i for i, _ in out}
    assert chosen <= infeasible
    for i, broken in out:
        assert broken == {k: v for k, v in dicts[i].items() if v > 0}
    counts = [len(broken) for _, broken in out]
    assert counts == sorted(counts)
    # Nothing left out is strictly closer (fewer broken bounds) than anything returned.
    for i in infeasible - chosen:
        missed = sum(v > 0 for v in dicts[i].values())
        assert all(missed >= c for c in counts)


def test_format_violations() -> None:
    text = format_violations({"accuracy_drop": 0.4, "max_size": 120_000.0, "max_latency": 0.25})
    assert text == "accuracy_drop by 0.4 pt, max_size by 120 kB, max_latency by 0.25 ms"
