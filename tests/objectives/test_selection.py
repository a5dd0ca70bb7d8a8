"""The recommended trial under each selection rule, checked against brute force."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from objectives import (
    SELECTIONS,
    ObjectiveError,
    PairedDrop,
    Point,
    recommend,
    recommend_confident,
    selection,
    tightest_vouched,
)

# Coarse grids so that ties in accuracy, ratio and upper bound come up often.
accuracies = st.integers(min_value=0, max_value=12).map(lambda a: 85.0 + a / 2)
ratio_values = st.integers(min_value=-2, max_value=12).map(lambda k: 2.0 ** (k / 2))
uppers = st.none() | st.integers(min_value=-4, max_value=12).map(lambda u: u / 4)
allowed = st.integers(min_value=0, max_value=10).map(lambda a: a / 4)


@st.composite
def scored(draw: st.DrawFn) -> tuple[list[Point], dict[int, float]]:
    specs = draw(st.lists(st.tuples(accuracies, ratio_values, st.booleans(), uppers), max_size=15))
    points = [Point(i, a, r, f) for i, (a, r, f, _) in enumerate(specs)]
    return points, {i: u for i, (*_, u) in enumerate(specs) if u is not None}


def brute_pick(points: list[Point], upper: dict[int, float], allowed_drop: float) -> Point | None:
    """Every trial checked one by one: feasible, with an interval whose upper end is within the
    bound; of those the largest ratio, then the higher accuracy, then the lower id."""
    ok = [p for p in points if p.feasible and p.id in upper and upper[p.id] <= allowed_drop]
    best = None
    for p in ok:
        if best is None or (p.ratio, p.accuracy, -p.id) > (best.ratio, best.accuracy, -best.id):
            best = p
    return best


@given(scored(), allowed)
def test_confident_pick_matches_brute_force(data: tuple[list[Point], dict[int, float]], allowed_drop: float) -> None:
    points, upper = data
    assert recommend_confident(points, upper, allowed_drop) == brute_pick(points, upper, allowed_drop)


@given(scored(), allowed)
def test_confident_pick_is_never_more_compressed_than_the_point_pick(
    data: tuple[list[Point], dict[int, float]], allowed_drop: float
) -> None:
    points, upper = data
    safe, point = recommend_confident(points, upper, allowed_drop), recommend(points)
    assert safe is None or (point is not None and safe.ratio <= point.ratio)


@given(scored())
def test_tightest_vouched_is_the_lowest_upper_bound_and_picks_at_that_bound(
    data: tuple[list[Point], dict[int, float]],
) -> None:
    points, upper = data
    found = tightest_vouched(points, upper)
    candidates = [p for p in points if p.feasible and p.id in upper]
    if not candidates:
        assert found is None
        return
    assert found is not None
    point, bound = found
    assert bound == min(upper[p.id] for p in candidates) == upper[point.id]
    # At that bound the confident rule vouches for it: nothing with a lower interval exists.
    assert brute_pick(points, upper, bound) == point


def test_a_lucky_trial_is_passed_over_for_one_the_split_can_vouch_for() -> None:
    # 144 validation images (digits at --val-fraction 0.1): trial 1 lost no image in all but
    # its interval reaches past 1 point; trial 0 is less compressed and lost nothing on 400.
    lucky, vouched_for = PairedDrop(144, 0, 0), PairedDrop(400, 0, 0)
    points = [Point(0, 98.0, 10.0), Point(1, 98.0, 40.0)]
    upper = {0: vouched_for.interval()[1], 1: lucky.interval()[1]}
    assert upper[1] > 1.0 >= upper[0]
    assert recommend(points).id == 1
    pick = recommend_confident(points, upper, 1.0)
    assert pick is not None and pick.id == 0
    assert SELECTIONS["point"].pick(points, upper, 1.0).id == 1


def test_without_an_interval_no_trial_is_vouched_for() -> None:
    points = [Point(0, 98.0, 10.0)]
    assert recommend_confident(points, {}, 1.0) is None
    assert recommend_confident(points, {0: math.nan}, 1.0) is None
    assert tightest_vouched(points, {}) is None


def test_unknown_rule_and_bad_bound_are_one_line_errors() -> None:
    with pytest.raises(ObjectiveError, match=r"selection must be one of confident, point, but got 'best'\."):
        selection("best")
    with pytest.raises(ObjectiveError, match="allowed_drop must be a finite number"):
        recommend_confident([], {}, math.nan)
