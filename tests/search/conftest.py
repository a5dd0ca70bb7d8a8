"""Fixtures shared by the report / show / export / list tests: the hand-made study storage,
built once per test module."""

from __future__ import annotations

import pytest

from tests.search.study_fixtures import HandMadeStudy, hand_made_storage


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[HandMadeStudy, HandMadeStudy]:
    """``(hand, hopeless)``: one journal holding them and a ``foreign`` study."""
    return hand_made_storage(tmp_path_factory)


@pytest.fixture(scope="module")
def hand(studies: tuple[HandMadeStudy, HandMadeStudy]) -> HandMadeStudy:
    """The study with feasible trials and exportable artifacts."""
    return studies[0]
