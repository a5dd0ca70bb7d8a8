"""``mcaas-search list``: every study of a storage with trial counts, target, constraint and the
best feasible ratio."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from search.reporting.tables import StudyRow, print_studies

from tests.search.study_fixtures import HandMadeStudy, assert_refused
from tests.support import RunCli

torch.set_num_threads(1)


def test_list_shows_every_study(hand: HandMadeStudy, run_cli: RunCli) -> None:
    code, out, err = run_cli(["list", "--storage", hand.storage])
    assert code == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("study "))
    rows = {line.split()[0]: line.split()[1:] for line in lines[header + 2: header + 5]}
    assert list(rows) == ["foreign", "hand", "hopeless"]
    # trials, feasible, pruned, failed, target, best (trial)
    assert rows["hand"] == ["8", "4", "1", "1", "size", "12.00x", "(3)"]
    assert rows["hopeless"] == ["3", "0", "0", "1", "size", "-"]
    assert rows["foreign"][4:] == ["-", "-"]
    assert "accuracy drop <= 1 pt: hand, hopeless" in lines
    assert "not an mcaas-search study: foreign" in lines


def _row(name: str, ratio: float | None, target: str = "size") -> StudyRow:
    counts = {"feasible": 22, "infeasible": 11, "pruned": 6, "failed": 1, "running": 0, "waiting": 0}
    return StudyRow(name, counts, target, "accuracy drop <= 1 pt", ratio, None if ratio is None else 17)


def test_list_never_cuts_a_name_a_ratio_or_a_header_in_80_columns() -> None:
    names = ["mobilenet_v3_small-size", "mobilenet_v3_small-lat", "resnet18-fmnist-latency"]
    rows = [_row(names[0], 15.73), _row(names[1], 750.0, "latency"), _row(names[2], None, "latency")]
    console = Console(width=80, record=True, color_system=None)
    print_studies(console, rows, storage="studies/mcaas.journal")
    lines = console.export_text().splitlines()
    assert "…" not in "\n".join(lines)
    header = next(i for i, line in enumerate(lines) if line.startswith("study"))
    assert lines[header].split() == ["study", "trials", "feasible", "pruned", "failed", "target", "recommended"]
    body = lines[header + 2:header + 5]
    assert [line.split()[0] for line in body] == names  # one line per study, each name whole
    assert "15.73x (17)" in body[0] and "750.00x (17)" in body[1]
    assert all(len(line) <= 80 for line in lines)
    assert f"constraint of every study: accuracy drop <= 1 pt" in lines
    # A name longer than the terminal folds onto more lines, every character kept.
    long = "q" * 100
    console = Console(width=80, record=True, color_system=None)
    print_studies(console, [_row(long, 2.0)], storage="s.journal")
    text = console.export_text()
    assert "…" not in text and "".join(c for c in text if c == "q") == long
    assert "2.00x (17)" in text


def test_list_json_is_json_alone_on_stdout(hand: HandMadeStudy, run_cli: RunCli) -> None:
    code, out, err = run_cli(["list", "--storage", hand.storage, "--json"])
    assert code == 0, err
    data = json.loads(out)
    assert data["storage"] == hand.storage
    studies = {s["name"]: s for s in data["studies"]}
    assert list(studies) == ["foreign", "hand", "hopeless"]
    assert studies["hand"]["best_ratio"] == pytest.approx(12.0) and studies["hand"]["best_trial"] == 3
    assert studies["hand"]["counts"]["feasible"] == 4
    assert studies["foreign"]["note"] == "not an mcaas-search study"


def test_list_of_an_empty_storage(tmp_path: Path, run_cli: RunCli) -> None:
    empty = tmp_path / "empty.journal"
    empty.touch()
    code, out, _ = run_cli(["list", "--storage", str(empty)])
    assert code == 0 and f"no studies in {empty}" in out


def test_list_refuses_a_missing_storage(tmp_path: Path, run_cli: RunCli) -> None:
    assert_refused(run_cli, "list", "--storage", str(tmp_path / "none.journal"), says="no study storage at")
    assert_refused(run_cli, "list", "--storage", "redis://localhost", says="unsupported storage URL")
