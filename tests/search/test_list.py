"""``mcaas-search list``: every study of a storage with trial counts, target, constraint and the
best feasible ratio."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.search.study_fixtures import HandMadeStudy, assert_refused, run_cli

torch.set_num_threads(1)


def test_list_shows_every_study(hand: HandMadeStudy, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "list", "--storage", hand.storage)
    assert code == 0, err
    rows = {
        cells[0]: cells[1:]
        for cells in ([c.strip() for c in line.split("│")[1:-1]] for line in out.splitlines() if line.startswith("│"))
    }
    assert list(rows) == ["foreign", "hand", "hopeless"]
    # trials, complete, feasible, pruned, failed, target, constraint, best feasible ratio
    assert rows["hand"] == ["8", "6", "4", "1", "1", "size", "accuracy drop <= 1 pt", "12.00x (trial 3)"]
    assert rows["hopeless"] == ["3", "2", "0", "0", "1", "size", "accuracy drop <= 1 pt", "-"]
    assert rows["foreign"][5:] == ["-", "not an mcaas-search study", "-"]


def test_list_of_an_empty_storage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.journal"
    empty.touch()
    code, out, _ = run_cli(capsys, "list", "--storage", str(empty))
    assert code == 0 and f"no studies in {empty}" in out


def test_list_refuses_a_missing_storage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert_refused(capsys, "list", "--storage", str(tmp_path / "none.journal"), says="no study storage at")
    assert_refused(capsys, "list", "--storage", "redis://localhost", says="unsupported storage URL")
