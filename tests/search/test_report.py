"""``mcaas-search report``: the front table, a self-contained HTML report, trials.csv, the
reference overlay and the headless-Chromium screenshot, on the hand-made study."""

from __future__ import annotations

import math
import re
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from rich.console import Console

from objectives import Point, hypervolume
from search.reporting import report
from search.errors import UserError
from search.study import load_study, open_storage, trial_records
from search.reporting.tables import print_front
from tests.search.study_fixtures import (
    HandMadeStudy,
    assert_refused,
    make_study,
    run_cli,
    tiny_artifacts,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def loaded(hand: HandMadeStudy) -> tuple[optuna.Study, list]:
    study = load_study(hand.name, open_storage(hand.storage, create=False))
    return study, trial_records(study)


def test_report_writes_html_and_csv_and_prints_the_front(
    hand: HandMadeStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "report", "--study", "hand", "--storage", hand.storage, "--out", str(tmp_path))
    assert code == 0, err
    page = (tmp_path / "report.html").read_text()
    # plotly.js is embedded exactly once (offline), and each of the four figures is drawn.
    assert page.count("plotly.js v") == 1
    assert not re.search(r"<script[^>]+src=[\"']https?:", page)
    assert page.count("Plotly.newPlot(") == 4
    for title in ("Pareto front", "Per-stage progression", "Search history", "Parameter importance"):
        assert f"<h2>{title}</h2>" in page
    assert "Recommended: trial 3" in page
    assert "mcaas-search export --study hand" in page
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files

    frame = pd.read_csv(tmp_path / "trials.csv")
    assert list(frame["trial"]) == list(range(8))
    assert dict(zip(frame["trial"], frame["state"])) == {
        0: "complete", 1: "complete", 2: "complete", 3: "complete", 4: "complete",
        5: "pruned", 6: "failed", 7: "complete",
    }
    assert set(frame.loc[frame["on_front"], "trial"]) == {0, 1, 3}
    assert list(frame.loc[frame["recommended"], "trial"]) == [3]
    assert frame.loc[3, "config.prune.ratio"] == 0.75
    assert frame.loc[3, "size_ratio"] == pytest.approx(12.0)
    assert frame.loc[6, "reason"].startswith("StageError")
    assert {"metrics.test_acc", "metrics.latency_ms", "violation.accuracy_drop"} <= set(frame.columns)

    assert "recommended (*): trial 3" in out
    assert f"mcaas-search export --study hand --storage {hand.storage} --best --out hand.onnx" in out
    table_rows = [line for line in out.splitlines() if line.startswith("│")]
    front_rows = [line.split("│")[1].strip() for line in table_rows]
    assert front_rows[:3] == ["3*", "1", "0"]  # the front, most compressed first
    assert "2" in front_rows[3:]  # the infeasible max-compression profile, shown beside it
    assert "report: " in out and "trials: " in out


def test_report_defaults_to_the_study_folder(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    fresh = make_study(tmp_path, tiny_artifacts(tmp_path_factory), name="fresh")
    code, _, err = run_cli(capsys, "report", "--study", "fresh", "--storage", fresh.storage)
    assert code == 0, err
    assert (fresh.artifacts_dir / "report.html").is_file()
    assert (fresh.artifacts_dir / "trials.csv").is_file()


def test_write_report_and_print_front_as_the_search_calls_them(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    fresh = make_study(tmp_path, tiny_artifacts(tmp_path_factory), name="ended")
    study = load_study("ended", open_storage(fresh.storage, create=False))
    console = Console(record=True, width=200)
    pick = print_front(console, fresh.info, trial_records(study), study_name="ended", storage=None)
    assert pick is not None and pick.number == 3
    assert "mcaas-search export --study ended --best --out ended.onnx" in console.export_text()
    html_path = report.write_report(study, fresh.info)
    assert html_path == fresh.artifacts_dir / "report.html" and html_path.is_file()
    assert "mcaas-search export --study ended --best" in html_path.read_text()
    assert (fresh.artifacts_dir / "trials.csv").is_file()


def test_pareto_record_tells_trials_apart(hand: HandMadeStudy, loaded: tuple[optuna.Study, list]) -> None:
    _, records = loaded
    data = report.gather_pareto(hand.info, records, study_name="hand")
    by_number = {p.number: p for p in data.points}
    assert sorted(by_number) == [0, 1, 2, 3, 4, 7]  # pruned and failed trials have no metrics
    assert data.front == [0, 1, 3] and data.recommended == 3
    assert data.counts == {"feasible": 4, "infeasible": 2, "pruned": 1, "failed": 1, "running": 0, "waiting": 0}
    assert data.allowed_drop == 1.0
    assert by_number[4].drop == pytest.approx(1.4) and not by_number[4].feasible
    assert by_number[2].profile == "max-compression" and by_number[2].ratio == pytest.approx(40.0)
    assert "trial 3" in by_number[3].hover and "prune 0.75" in by_number[3].hover


def test_pareto_figure_draws_every_kind_of_trial(hand: HandMadeStudy, loaded: tuple[optuna.Study, list]) -> None:
    refs = [report.ReferencePoint("NNCF int8", 4.0, 0.0)]
    fig = report.draw_pareto(report.gather_pareto(hand.info, loaded[1], study_name="hand", references=refs))
    traces = {t.name: t for t in fig.data}
    assert set(traces) == {
        "feasible trials", "infeasible trials", "Pareto front (feasible)",
        "MCaaS profile: balanced", "MCaaS profile: high-accuracy", "MCaaS profile: max-compression",
        "recommended: trial 3", "published results",
    }
    assert list(traces["Pareto front (feasible)"].x) == pytest.approx([3.9, 8.0, 12.0])
    symbols = {traces[f"MCaaS profile: {p}"].marker.symbol for p in ("balanced", "high-accuracy", "max-compression")}
    assert len(symbols) == 3
    assert traces["MCaaS profile: max-compression"].marker.color == (report.INFEASIBLE_COLOUR,)
    assert list(traces["infeasible trials"].x) == pytest.approx([15.0])
    assert fig.layout.xaxis.type == "log"
    assert any(shape.y0 == 1.0 for shape in fig.layout.shapes)  # the max-drop line
    assert "1 pruned, 1 failed" in fig.layout.title.subtitle.text


def test_stage_progression_is_the_recommended_trials(hand: HandMadeStudy, loaded: tuple[optuna.Study, list]) -> None:
    data = report.gather_stages(hand.info, loaded[1])
    assert data is not None and data.trial == 3 and data.why == "recommended"
    assert [s.stage for s in data.steps] == ["teacher", "prune", "distill", "export"]
    assert data.steps[0].val_acc == 96.0 and data.steps[-1].val_acc == pytest.approx(95.1)
    assert data.steps[1].latency_ms is None  # torch stages are not timed
    fig = report.draw_stages(data)
    assert len(fig.data) == 4


def test_history_tracks_best_ratio_and_hypervolume(hand: HandMadeStudy, loaded: tuple[optuna.Study, list]) -> None:
    history = report.gather_history(hand.info, loaded[1])
    assert history.numbers == list(range(8))
    assert history.best_ratio == pytest.approx([3.9, 8.0, 8.0, 12.0, 12.0, 12.0, 12.0, 12.0])
    assert all(b >= a for a, b in zip(history.hypervolume, history.hypervolume[1:]))
    feasible = [Point(n, 96.0 - d, r) for n, d, r in ((0, 0.2, 3.9), (1, 0.6, 8.0), (3, 0.9, 12.0), (7, 0.8, 5.0))]
    assert history.hypervolume[-1] == pytest.approx(hypervolume(feasible, ref_accuracy=95.0))
    assert history.ref_accuracy == 95.0


def test_importances_need_two_completed_trials(
    loaded: tuple[optuna.Study, list], tmp_path: Path
) -> None:
    importances = report.gather_importances(loaded[0])
    assert isinstance(importances, dict)
    assert set(importances) <= {"prune.ratio", "distill.epochs", "quantize.mode"}
    assert math.isclose(sum(importances.values()), 1.0, abs_tol=1e-6)
    lonely = optuna.create_study(directions=["maximize", "maximize"])
    lonely.add_trial(loaded[0].trials[3])
    assert "needs at least 2 completed trials" in report.gather_importances(lonely)


def test_reference_overlay_keeps_the_targets_rows(
    hand: HandMadeStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "published.csv"
    csv.write_text(
        "method,size_ratio,latency_ratio,accuracy_drop\n"
        "NNCF int8,4.0,1.9,0.0\n"
        "MCaaS balanced,9.5,,0.8\n"
        "TensorRT fp16,,2.5,0.1\n"
    )
    refs = report.read_reference(csv, "size")
    assert refs == [report.ReferencePoint("NNCF int8", 4.0, 0.0), report.ReferencePoint("MCaaS balanced", 9.5, 0.8)]
    assert [r.method for r in report.read_reference(csv, "latency")] == ["NNCF int8", "TensorRT fp16"]
    out = tmp_path / "out"
    code, _, err = run_cli(
        capsys, "report", "--study", "hand", "--storage", hand.storage, "--reference", str(csv), "--out", str(out)
    )
    assert code == 0, err
    page = (out / "report.html").read_text()
    assert "published results" in page and "MCaaS balanced" in page and "TensorRT fp16" not in page


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "does not exist"),
        ("method,latency_ratio,accuracy_drop\nx,2,0.1\n", "lacks column(s) size_ratio"),
        ("method,size_ratio,accuracy_drop\nx,two,0.1\n", "line 2: size_ratio must be a number"),
        ("method,size_ratio,accuracy_drop\nx,2,\n", "line 2: accuracy_drop must be a number"),
        ("method,size_ratio,accuracy_drop\nx,-3,0.1\n", "line 2: size_ratio must be > 0"),
        ("method,size_ratio,accuracy_drop\n", "has no row with a size_ratio value"),
        ("method,size_ratio,accuracy_drop\n,2,0.1\n", "line 2: empty method name"),
    ],
)
def test_bad_reference_csv_is_refused(
    hand: HandMadeStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, says: str
) -> None:
    csv = tmp_path / "ref.csv"
    if content is not None:
        csv.write_text(content)
    assert_refused(
        capsys, "report", "--study", "hand", "--storage", hand.storage, "--reference", str(csv),
        "--out", str(tmp_path / "out"), says=says,
    )
    assert not (tmp_path / "out").exists()  # refused before writing anything


def test_report_without_feasible_trial_names_the_closest(
    studies: tuple[HandMadeStudy, HandMadeStudy], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hopeless = studies[1]
    code, out, err = run_cli(
        capsys, "report", "--study", "hopeless", "--storage", hopeless.storage, "--out", str(tmp_path)
    )
    assert code == 0, err
    assert "No feasible trial" in out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert rows[0].split("│")[1].strip() == "0" and "accuracy_drop by 0.7 pt" in rows[0]
    assert "--trial 0 --out hopeless-t0.onnx" in out
    page = (tmp_path / "report.html").read_text()
    assert "No trial is feasible yet" in page and "closest to feasible" in page


def test_report_refusals(
    hand: HandMadeStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_refused(capsys, "report", "--study", "nope", "--storage", hand.storage, says="no study named 'nope'")
    assert_refused(capsys, "report", "--study", "foreign", "--storage", hand.storage, says="not made by mcaas-search")
    missing = str(tmp_path / "missing.journal")
    assert_refused(capsys, "report", "--study", "hand", "--storage", missing, says="no study storage at")
    monkeypatch.chdir(tmp_path)  # the default storage, studies/mcaas.journal, does not exist here
    assert_refused(capsys, "report", "--study", "hand", says="no study storage at 'studies/mcaas.journal'")
    assert_refused(
        capsys, "report", "--study", "hand", "--storage", hand.storage, "--out", str(tmp_path),
        "--screenshot", str(tmp_path / "no" / "shot.png"), says="--screenshot folder",
    )
    monkeypatch.setattr("search.commands.report.find_chromium", lambda: None)
    assert_refused(
        capsys, "report", "--study", "hand", "--storage", hand.storage, "--out", str(tmp_path),
        "--screenshot", str(tmp_path / "shot.png"), says="--screenshot needs Chromium",
    )


def test_screenshot_failure_is_one_line(tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text("<html></html>")

    def crashing(command: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        assert "--headless" in command and command[-1] == page.resolve().as_uri()
        return subprocess.CompletedProcess(command, 1, b"", b"noise\n[0101/0:ERROR] no display\n")

    with pytest.raises(UserError, match=r"^Chromium could not take the screenshot: \[0101/0:ERROR\] no display$"):
        report.take_screenshot(page, tmp_path / "shot.png", chromium="/bin/false", run=crashing)
    assert not (tmp_path / "shot.png").exists()


@pytest.mark.skipif(not Path("/usr/bin/chromium").exists(), reason="needs /usr/bin/chromium")
def test_screenshot_shows_the_pareto_plot(
    hand: HandMadeStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    png = tmp_path / "report.png"
    code, out, err = run_cli(
        capsys, "report", "--study", "hand", "--storage", hand.storage, "--out", str(tmp_path), "--screenshot", str(png)
    )
    assert code == 0, err
    image = Image.open(png).convert("RGB")
    assert image.size == (1400, 2000)
    pixels = np.asarray(image, dtype=np.int32)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # not blank

    # The Pareto plot is drawn near the top: its feasible green and infeasible red are on screen.
    def near(colour: str) -> int:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels[:900] - rgb).sum(axis=2) < 40).sum())

    assert near(report.FEASIBLE_COLOUR) > 100
    assert near(report.INFEASIBLE_COLOUR) > 100


@pytest.mark.parametrize("width", [80, 180])
def test_front_table_never_cuts_numbers_and_always_shows_settings(
    hand: HandMadeStudy, loaded: tuple[optuna.Study, list], width: int
) -> None:
    study, records = loaded
    console = Console(width=width, record=True, color_system=None)
    pick = print_front(console, hand.info, records, study_name=hand.name, storage=hand.storage)
    text = console.export_text()
    assert pick is not None
    assert "…" not in text  # no value ellipsized, however narrow the terminal
    assert f"{pick.ratios[hand.info.target]:.2f}x" in text
    settings = report.settings_summary(pick.config)
    if width < 140:  # settings listed under the table, one line per trial
        assert f"  {pick.number}: {settings}" in text
    else:  # a settings column in the table
        assert re.search(r"┃\s*settings\s*┃", text)


def test_a_queued_trial_counts_as_waiting_not_running() -> None:
    from search.study import TrialRecord

    def record(number: int, state: str) -> TrialRecord:
        return TrialRecord(number, state, None, {}, {}, {}, {}, [], None, None, None, None)

    counts = report.state_counts([record(0, "running"), record(1, "waiting"), record(2, "waiting")])
    assert counts["running"] == 1 and counts["waiting"] == 2
    assert report.describe_counts(counts) == "3 trials: 0 feasible, 0 infeasible, 0 pruned, 0 failed, 1 running, 2 waiting"
