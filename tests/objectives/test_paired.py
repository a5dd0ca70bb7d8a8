"""The paired accuracy drop and its interval (teacher and student on the same images)."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from objectives import Z95, PairedDrop, images_to_decide, paired_drop, zero_drop_upper


def test_paired_drop_counts_only_the_images_one_model_gets_right() -> None:
    teacher = np.array([True, True, True, False, False, True])
    student = np.array([True, False, False, True, False, True])
    p = paired_drop(teacher, student)
    assert (p.n, p.lost, p.gained) == (6, 2, 1)
    assert p.drop == pytest.approx(100 / 6)


def test_interval_is_the_adjusted_wald_interval_of_the_difference() -> None:
    p = PairedDrop(n=10_000, lost=300, gained=200)
    low, high = p.interval()
    n, lost, gained = 10_002, 300.5, 200.5
    diff = (lost - gained) / n
    se = math.sqrt(((lost + gained) / n - diff**2) / n)
    assert (low + high) / 2 == pytest.approx(100 * diff)
    assert high - low == pytest.approx(2 * Z95 * se * 100)
    # On a large split the adjustment hardly moves the interval off the plain drop.
    assert (low + high) / 2 == pytest.approx(p.drop, abs=0.01)
    # More disagreement, wider interval at the same drop.
    wide = PairedDrop(n=10_000, lost=1100, gained=1000).interval()
    assert wide[1] - wide[0] > high - low


def test_models_that_agree_on_a_small_split_still_get_a_width() -> None:
    low, high = PairedDrop(n=360, lost=0, gained=0).interval()
    assert low == pytest.approx(-high)
    # Half an image each way on 362: about +-0.5 pt, not the plain Wald interval's zero width.
    assert 0.3 < high < 1.0
    # One image more or less on a 360-image split moves the drop by 0.28 pt: inside the interval.
    one = PairedDrop(n=360, lost=1, gained=0)
    assert one.interval()[0] < 0 < one.interval()[1]


def test_bad_counts_and_splits_are_refused() -> None:
    with pytest.raises(ValueError, match="same non-empty split"):
        paired_drop(np.array([True, False]), np.array([True]))
    with pytest.raises(ValueError, match="lost \\+ gained <= n"):
        PairedDrop(n=3, lost=2, gained=2)


@settings(deadline=None)  # the brute force walks up to 19,600 split sizes
@given(st.integers(min_value=1, max_value=400).map(lambda k: k / 100))
def test_images_to_decide_is_the_smallest_split_that_vouches_for_a_perfect_student(allowed: float) -> None:
    """Against brute force: every split size from 1 up, the first whose zero-drop interval ends
    within the bound."""
    n = images_to_decide(allowed)
    brute = next(k for k in range(1, 100_000) if PairedDrop(k, 0, 0).interval()[1] <= allowed)
    assert n == brute and zero_drop_upper(brute) <= allowed


def test_a_split_of_144_images_cannot_decide_one_point_and_360_can() -> None:
    assert zero_drop_upper(144) == pytest.approx(1.34, abs=0.005)
    assert zero_drop_upper(360) == pytest.approx(0.54, abs=0.005)
    assert images_to_decide(1.0) == 194
    assert images_to_decide(0.0) is None
