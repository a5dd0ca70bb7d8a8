"""Pareto front, hypervolume and the recommended trial, checked against brute force."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from objectives import ObjectiveError, Point, hypervolume, pareto_front, recommend

# Coarse grids so that ties in accuracy, in ratio and in both come up often.
accuracies = st.integers(min_value=0, max_value=12).map(lambda a: 85.0 + a / 2)
ratio_values = st.integers(min_value=-2, max_value=12).map(lambda k: 2.0 ** (k / 2))


@st.composite
def point_lists(draw: st.DrawFn, max_size: int = 15) -> list[Point]:
    specs = draw(
        st.lists(
            st.tuples(accuracies, ratio_values, st.booleans() | st.just(True)),
            max_size=max_size,
        )
    )
    return [Point(i, a, r, f) for i, (a, r, f) in enumerate(specs)]


def dominates(q: Point, p: Point) -> bool:
    return (
        q.accuracy >= p.accuracy
        and q.ratio >= p.ratio
        and (q.accuracy > p.accuracy or q.ratio > p.ratio)
    )


def brute_front(points: list[Point]) -> set[int]:
    feasible = [p for p in points if p.feasible]
    return {p.id for p in feasible if not any(dominates(q, p) for q in feasible)}


def brute_hypervolume(points: list[Point], ref_accuracy: float, ref_ratio: float) -> float:
    """Area of the union of boxes, summed cell by cell over the grid of their corners."""
    boxes = [
        (p.accuracy - ref_accuracy, math.log10(p.ratio / ref_ratio))
        for p in points
        if p.feasible and p.accuracy > ref_accuracy and p.ratio > ref_ratio
    ]
    xs = sorted({0.0} | {x for x, _ in boxes})
    ys = sorted({0.0} | {y for _, y in boxes})
    area = 0.0
    for x0, x1 in zip(xs, xs[1:]):
        for y0, y1 in zip(ys, ys[1:]):
            if any(x >= x1 and y >= y1 for x, y in boxes):
                area += (x1 - x0) * (y1 - y0)
    return area


@given(point_lists())
def test_front_matches_brute_force(points: list[Point]) -> None:
    front = pareto_front(points)
    assert {p.id for p in front} == brute_front(points)
    assert len(front) == len({p.id for p in front})
    ratios = [p.ratio for p in front]
    assert ratios == sorted(ratios)
    # Along a front, more compression costs accuracy (equal only for duplicates).
    accs = [p.accuracy for p in front]
    assert accs == sorted(accs, reverse=True)


def test_front_examples() -> None:
    points = [
        Point(0, 90.0, 2.0),
        Point(1, 89.0, 4.0),
        Point(2, 89.0, 4.0),  # duplicate of 1: both kept
        Point(3, 88.0, 3.0),  # dominated by 1
        Point(4, 95.0, 50.0, feasible=False),  # would dominate everything
        Point(5, 90.0, 1.5),  # dominated by 0 (same accuracy, lower ratio)
        Point(6, 80.0, 10.0),
    ]
    assert [p.id for p in pareto_front(points)] == [0, 1, 2, 6]
    assert pareto_front([]) == []
    assert pareto_front([Point(0, 90.0, 2.0, feasible=False)]) == []


@pytest.mark.parametrize(("accuracy", "ratio"), [(float("nan"), 2.0), (90.0, 0.0), (90.0, -1.0)])
def test_point_rejects_bad_values(accuracy: float, ratio: float) -> None:
    with pytest.raises(ObjectiveError, match="trial 7"):
        Point(7, accuracy, ratio)


def test_hypervolume_of_one_point_is_its_rectangle() -> None:
    assert hypervolume([Point(0, 92.0, 100.0)], ref_accuracy=90.0) == pytest.approx(4.0)
    assert hypervolume(
        [Point(0, 92.0, 100.0)], ref_accuracy=91.0, ref_ratio=10.0
    ) == pytest.approx(1.0)


def test_hypervolume_two_points() -> None:
    # Boxes 2 x 2 and 1 x 3 (log10 units) overlap in 1 x 2: union 4 + 3 - 2 = 5.
    points = [Point(0, 92.0, 100.0), Point(1, 91.0, 1000.0)]
    assert hypervolume(points, ref_accuracy=90.0) == pytest.approx(5.0)


def test_hypervolume_ignores_points_at_or_below_the_reference_and_infeasible() -> None:
    assert hypervolume([Point(0, 90.0, 100.0)], ref_accuracy=90.0) == 0.0
    assert hypervolume([Point(0, 95.0, 1.0)], ref_accuracy=90.0) == 0.0
    assert hypervolume([Point(0, 95.0, 0.5)], ref_accuracy=90.0) == 0.0
    assert hypervolume([Point(0, 95.0, 100.0, feasible=False)], ref_accuracy=90.0) == 0.0
    assert hypervolume([], ref_accuracy=90.0) == 0.0


def test_hypervolume_rejects_bad_reference() -> None:
    with pytest.raises(ObjectiveError, match="ref_ratio must be > 0, but got 0"):
        hypervolume([], ref_accuracy=90.0, ref_ratio=0)
    with pytest.raises(ObjectiveError, match="ref_accuracy"):
        hypervolume([], ref_accuracy=float("nan"))


ref_accuracies = st.sampled_from([84.0, 86.0, 88.75, 90.0])
ref_ratios = st.sampled_from([0.5, 1.0, 3.0])


@given(point_lists(), ref_accuracies, ref_ratios)
def test_hypervolume_matches_brute_force(
    points: list[Point], ref_accuracy: float, ref_ratio: float
) -> None:
    got = hypervolume(points, ref_accuracy=ref_accuracy, ref_ratio=ref_ratio)
    assert got == pytest.approx(brute_hypervolume(points, ref_accuracy, ref_ratio), abs=1e-9)
    # Only the front matters.
    assert got == pytest.approx(
        hypervolume(pareto_front(points), ref_accuracy=ref_accuracy, ref_ratio=ref_ratio),
        abs=1e-9,
    )


@given(point_lists(), point_lists(max_size=5), ref_accuracies)
def test_hypervolume_is_monotone(points: list[Point], more: list[Point], ref: float) -> None:
    more = [Point(len(points) + p.id, p.accuracy, p.ratio, p.feasible) for p in more]
    before = hypervolume(points, ref_accuracy=ref)
    assert hypervolume(points + more, ref_accuracy=ref) >= before - 1e-12


@given(point_lists(), st.data())
def test_hypervolume_ignores_dominated_points(points: list[Point], data: st.DataObject) -> None:
    front = pareto_front(points)
    if not front:
        return
    anchor = data.draw(st.sampled_from(front))
    worse_acc = data.draw(st.floats(min_value=0.0, max_value=anchor.accuracy))
    worse_ratio = data.draw(st.floats(min_value=1e-3, max_value=anchor.ratio))
    dominated = Point(len(points), worse_acc, worse_ratio)
    for ref in (84.0, 88.0):
        assert hypervolume(points + [dominated], ref_accuracy=ref) == pytest.approx(
            hypervolume(points, ref_accuracy=ref), abs=1e-12
        )


@given(accuracies, ratio_values, ref_accuracies, ref_ratios)
def test_hypervolume_single_point_rectangle(
    acc: float, ratio: float, ref_accuracy: float, ref_ratio: float
) -> None:
    expected = max(acc - ref_accuracy, 0.0) * max(math.log10(ratio / ref_ratio), 0.0)
    got = hypervolume([Point(0, acc, ratio)], ref_accuracy=ref_accuracy, ref_ratio=ref_ratio)
    assert got == pytest.approx(expected, abs=1e-12)


def test_recommend_picks_highest_ratio_then_accuracy() -> None:
    points = [
        Point(0, 91.0, 3.0),
        Point(1, 89.5, 40.0),
        Point(2, 89.9, 40.0),
        Point(3, 92.0, 400.0, feasible=False),
    ]
    assert recommend(points) == Point(2, 89.9, 40.0)
    # Duplicates: the earlier trial.
    assert recommend([Point(5, 90.0, 8.0), Point(3, 90.0, 8.0)]) == Point(3, 90.0, 8.0)
    assert recommend([Point(0, 90.0, 5.0, feasible=False)]) is None
    assert recommend([]) is None


@given(point_lists())
def test_recommend_properties(points: list[Point]) -> None:
    pick = recommend(points)
    feasible = [p for p in points if p.feasible]
    if not feasible:
        assert pick is None
        return
    assert pick is not None and pick.feasible
    assert pick.id in brute_front(points)
    assert pick.ratio == max(p.ratio for p in feasible)
    assert pick.accuracy == max(p.accuracy for p in feasible if p.ratio == pick.ratio)
