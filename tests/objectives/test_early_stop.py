"""Early stopping of hopeless trials and skipping of configs dominated before training."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from objectives import (
    EarlyStop,
    ObjectiveError,
    Point,
    dominated_before_training,
    hypervolume,
    pareto_front,
)

fractions = st.floats(min_value=0.0, max_value=1.0)
accuracies = st.floats(min_value=0.0, max_value=100.0)
early_stops = st.builds(
    EarlyStop, grace=fractions, slack_points=st.floats(min_value=0.0, max_value=20.0)
)


def test_examples_with_defaults() -> None:
    rule = EarlyStop()
    assert not rule.should_stop(0.2, 10.0, 90.0)  # hopeless, but still in the grace period
    assert rule.should_stop(0.3, 80.0, 90.0)  # 10 pt missing, slack 4.2 pt
    assert not rule.should_stop(0.5, 88.0, 90.0)  # 2 pt missing, slack 3 pt
    assert rule.should_stop(0.9, 89.0, 90.0)  # 1 pt missing, slack 0.6 pt
    assert not rule.should_stop(1.0, 90.0, 90.0)  # exactly there
    assert rule.should_stop(1.0, 89.99, 90.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"grace": -0.1}, r"grace must lie in \[0, 1\], but got -0.1"),
        ({"grace": 1.5}, "but got 1.5"),
        ({"slack_points": -1.0}, "slack_points must be >= 0, but got -1.0"),
        ({"slack_points": float("inf")}, "slack_points must be a finite number"),
    ],
)
def test_bad_fields_are_rejected(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ObjectiveError, match=message):
        EarlyStop(**kwargs)


@pytest.mark.parametrize("fraction", [-0.01, 1.01, float("nan")])
def test_fraction_must_lie_in_unit_interval(fraction: float) -> None:
    with pytest.raises(ObjectiveError, match="fraction"):
        EarlyStop().should_stop(fraction, 50.0, 90.0)


@given(early_stops, fractions, accuracies, accuracies)
def test_should_stop_matches_the_rule(
    rule: EarlyStop, fraction: float, val: float, required: float
) -> None:
    stop = rule.should_stop(fraction, val, required)
    if fraction < rule.grace:
        assert not stop
    else:
        assert stop == (val < required - rule.slack_points * (1 - fraction))
    if val >= required:
        assert not stop  # a trial already meeting the bound is never stopped


@given(early_stops, fractions, fractions, accuracies, accuracies, accuracies)
def test_should_stop_is_monotone(
    rule: EarlyStop, f1: float, f2: float, val: float, lower: float, required: float
) -> None:
    """Stopping stays right with less accuracy or more of the budget spent."""
    if rule.should_stop(f1, val, required):
        assert rule.should_stop(f1, min(val, lower), required)
        assert rule.should_stop(max(f1, f2), val, required)


FRONT = [Point(0, 91.0, 4.0), Point(1, 89.0, 40.0), Point(2, 95.0, 100.0, feasible=False)]


def test_dominated_before_training_examples() -> None:
    assert dominated_before_training(3.0, FRONT, accuracy_ceiling=90.5) == FRONT[0]  # point 0 beats it
    # At best equal to point 1: a duplicate, which the front keeps beside it.
    assert dominated_before_training(40.0, FRONT, accuracy_ceiling=89.0) is None
    assert dominated_before_training(39.0, FRONT, accuracy_ceiling=89.0) == FRONT[1]
    assert dominated_before_training(3.0, FRONT, accuracy_ceiling=89.0) == FRONT[0]  # the most accurate
    assert not dominated_before_training(5.0, FRONT, accuracy_ceiling=90.0)  # more compressed
    assert not dominated_before_training(3.0, FRONT, accuracy_ceiling=92.0)  # could be better
    # The infeasible point 2 would dominate, but does not count.
    assert not dominated_before_training(50.0, FRONT, accuracy_ceiling=90.0)
    assert not dominated_before_training(1.0, [], accuracy_ceiling=0.0)
    with pytest.raises(ObjectiveError, match="ratio_bound must be > 0"):
        dominated_before_training(0.0, FRONT, accuracy_ceiling=90.0)


grid_points = st.lists(
    st.tuples(
        st.integers(0, 10).map(lambda a: 85.0 + a),
        st.integers(0, 10).map(lambda k: 2.0**k),
        st.booleans(),
    ),
    max_size=10,
)


@given(grid_points, st.integers(0, 10).map(lambda k: 2.0**k), st.integers(0, 10), st.data())
def test_dominated_before_training_means_it_cannot_help(
    specs: list[tuple[float, float, bool]], est: float, ceiling_step: int, data: st.DataObject
) -> None:
    points = [Point(i, a, r, f) for i, (a, r, f) in enumerate(specs)]
    front = pareto_front(points)
    ceiling = 85.0 + ceiling_step
    new_id = len(points)
    if dominated_before_training(est, front, accuracy_ceiling=ceiling):
        # Whatever accuracy up to the ceiling and ratio up to the bound training reaches, the
        # config never enters the front (brute force: pareto_front itself), nor grows its area.
        # (the corner itself, the best it can do, is drawn often)
        acc = data.draw(st.just(ceiling) | st.floats(min_value=0.0, max_value=ceiling))
        got_ratio = data.draw(st.just(est) | st.floats(min_value=1e-3, max_value=est))
        grown = points + [Point(new_id, acc, got_ratio)]
        assert new_id not in {p.id for p in pareto_front(grown)}
        assert hypervolume(grown, ref_accuracy=80.0) == pytest.approx(
            hypervolume(points, ref_accuracy=80.0)
        )
    else:
        # Reaching the ceiling would put the config on the front.
        grown = points + [Point(new_id, ceiling, est)]
        assert new_id in {p.id for p in pareto_front(grown)}
