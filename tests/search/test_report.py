"""``mcaas-search report``: the front table, the self-contained HTML report and trials.csv, on the
hand-made study, through the CLI and as the search calls them."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from rich.console import Console

from objectives import PairedDrop
from search.reporting import page
from search.reporting.format import settings_summary
from search.reporting.progress import snapshot
from search.reporting.tables import print_front, print_trial
from search.study import load_study, open_storage, trial_records
from tests.search.study_fixtures import (
    HandMadeStudy,
    assert_refused,
    load_hand_made,
    make_study,
    tiny_artifacts,
)
from tests.support import RunCli

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def loaded(hand: HandMadeStudy) -> tuple[optuna.Study, list]:
    return load_hand_made(hand)


def test_report_writes_html_and_csv_and_prints_the_front(
    hand: HandMadeStudy, tmp_path: Path, run_cli: RunCli
) -> None:
    code, out, err = run_cli(["report", "--study", "hand", "--storage", hand.storage, "--out", str(tmp_path)])
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
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, run_cli: RunCli
) -> None:
    fresh = make_study(tmp_path, tiny_artifacts(tmp_path_factory), name="fresh")
    code, _, err = run_cli(["report", "--study", "fresh", "--storage", fresh.storage])
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
    html_path = page.write_report(study, fresh.info)
    assert html_path == fresh.artifacts_dir / "report.html" and html_path.is_file()
    assert "mcaas-search export --study ended --best" in html_path.read_text()
    assert (fresh.artifacts_dir / "trials.csv").is_file()


def test_report_without_feasible_trial_names_the_closest(
    studies: tuple[HandMadeStudy, HandMadeStudy], tmp_path: Path, run_cli: RunCli
) -> None:
    hopeless = studies[1]
    code, out, err = run_cli(["report", "--study", "hopeless", "--storage", hopeless.storage, "--out", str(tmp_path)])
    assert code == 0, err
    assert "No feasible trial" in out
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert rows[0].split("│")[1].strip() == "0" and "accuracy_drop by 0.7 pt" in rows[0]
    assert "--trial 0 --out hopeless-t0.onnx" in out
    page = (tmp_path / "report.html").read_text()
    assert "No trial is feasible yet" in page and "closest to feasible" in page


def test_report_refusals(
    hand: HandMadeStudy, tmp_path: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_refused(run_cli, "report", "--study", "nope", "--storage", hand.storage, says="no study named 'nope'")
    assert_refused(run_cli, "report", "--study", "foreign", "--storage", hand.storage, says="not made by mcaas-search")
    missing = str(tmp_path / "missing.journal")
    assert_refused(run_cli, "report", "--study", "hand", "--storage", missing, says="no study storage at")
    monkeypatch.chdir(tmp_path)  # the default storage, studies/mcaas.journal, does not exist here
    assert_refused(run_cli, "report", "--study", "hand", says="no study storage at 'studies/mcaas.journal'")
    assert_refused(run_cli, "report", "--study", "hand", "--storage", hand.storage, "--out", str(tmp_path),
        "--screenshot", str(tmp_path / "no" / "shot.png"), says="--screenshot folder",
    )
    monkeypatch.setattr("search.commands.report.find_chromium", lambda: None)
    assert_refused(run_cli, "report", "--study", "hand", "--storage", hand.storage, "--out", str(tmp_path),
        "--screenshot", str(tmp_path / "shot.png"), says="--screenshot needs Chromium",
    )


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
    settings = settings_summary(pick.config)
    if width < 140:  # settings listed under the table, one line per trial
        assert f"  {pick.number}: {settings}" in text
    else:  # a settings column in the table
        assert re.search(r"┃\s*settings\s*┃", text)


def test_the_progress_line_and_the_front_table_give_the_drop_one_sign(
    hand: HandMadeStudy, loaded: tuple[optuna.Study, list]
) -> None:
    study, records = loaded
    console = Console(width=200, record=True, color_system=None)
    pick = print_front(console, hand.info, records, study_name=hand.name, storage=hand.storage)
    assert pick is not None
    lost = hand.info.teacher_acc - pick.metrics["val_acc"]
    assert lost > 0  # the recommended trial lost points: both must print them positive
    line = snapshot(study, hand.info, total=8, jobs=1).describe(hand.info.target)
    assert f"drop {lost:.2f} pt" in line and "-" not in line.partition("recommended")[2]
    rows = [r.split("│") for r in console.export_text().splitlines() if r.startswith("│")]
    row = next(cells for cells in rows if cells[1].strip() == f"{pick.number}*")
    assert row[3].strip().partition("±")[0] == f"{lost:.2f}"  # trial, val %, drop pt (± interval)
    console = Console(width=200, record=True, color_system=None)
    print_trial(console, hand.info, pick, records, study_name=hand.name, storage=hand.storage)
    assert f"drop {lost:.2f} pt" in console.export_text()  # `show`'s final metrics


def _pick_above_teacher(info, records: list, gain: float, lost: int | None = None, gained: int | None = None) -> list:
    """The records with trial 3 (the recommended one) ``gain`` pt above the teacher on validation,
    with paired counts ``lost`` / ``gained`` of 360 images where given."""
    out = []
    for r in records:
        if r.number == 3:
            m = {**r.metrics, "val_acc": info.teacher_acc + gain}
            if lost is not None:
                m.update(n_val=360.0, val_lost=float(lost), val_gained=float(gained))
            r = dataclasses.replace(r, metrics=m)
        out.append(r)
    return out


def _front_text(hand: HandMadeStudy, records: list) -> str:
    console = Console(width=200, record=True, color_system=None)
    # `point`: trial 3 is recommended whatever paired counts it is given.
    pick = print_front(console, hand.info, records, study_name=hand.name, storage=hand.storage, select="point")
    assert pick is not None and pick.number == 3
    return " ".join(console.export_text().split())


def test_a_student_far_above_its_teacher_says_the_teacher_is_undertrained(
    hand: HandMadeStudy, loaded: tuple[optuna.Study, list]
) -> None:
    _, records = loaded
    says = "the teacher is probably undertrained"
    # 11 more images right than the teacher's 360 (12 gained, 1 lost): 3.06 pt, its interval below 0.
    assert PairedDrop(360, 1, 12).interval()[1] < 0
    text = _front_text(hand, _pick_above_teacher(hand.info, records, 3.06, lost=1, gained=12))
    assert "note: trial 3 is 3.06 pt above its teacher on validation: " + says in text
    assert "mcaas-search train --epochs N" in text  # the demo: `train` without --model
    # Within what distillation can add: no note.
    assert says not in _front_text(hand, _pick_above_teacher(hand.info, records, 1.5))
    # Far above, but as many images lost as gained beyond the 11: noise the interval does not exclude.
    assert PairedDrop(360, 30, 41).interval()[1] >= 0
    assert says not in _front_text(hand, _pick_above_teacher(hand.info, records, 3.06, lost=30, gained=41))


def test_settings_summary_says_what_depth_removed() -> None:
    config = {"depth.cut": 2, "depth.fraction": 0.5, "prune.ratio": 0.3, "prune.criterion": "l2",
              "distill.epochs": 4, "distill.alpha": 0.0, "quantize.mode": "int8-static"}
    assert settings_summary(config).startswith("cut 2 stages, drop 0.50 of blocks | prune 0.30 l2 | fine-tune 4 ep")
    assert settings_summary({**config, "depth.cut": 0, "depth.fraction": 0.0}).startswith("prune 0.30")
    boosted = settings_summary({**config, "distill.size_boost": 8.0})
    assert "fine-tune 4 ep (up to x8 for a smaller student)" in boosted
    # Sampled floats read at three figures (the ViT latency report said "KD 2.0412 ep T2.78917").
    sampled = {**config, "distill.epochs": 2.041234, "distill.alpha": 0.2, "distill.temperature": 2.789171}
    assert "KD 2.04 ep T2.79 a0.2" in settings_summary(sampled)


def _with_pairs(info, records: list, lost: int, gained: int) -> list:
    """The records with paired validation counts whose drop equals each record's own drop."""
    out = []
    for r in records:
        m = dict(r.metrics)
        if r.state == "complete" and "val_acc" in m:
            m.update(n_val=360.0, val_lost=float(lost), val_gained=float(gained))
        out.append(dataclasses.replace(r, metrics=m))
    return out


def test_front_table_shows_the_drop_with_its_interval_and_says_when_the_bound_is_inside(
    hand: HandMadeStudy, loaded: tuple[optuna.Study, list]
) -> None:
    _, records = loaded
    # Few disagreements: a narrow interval, below the bound; nothing is cut on a narrow terminal.
    console = Console(width=80, record=True, color_system=None)
    pick = print_front(console, hand.info, _with_pairs(hand.info, records, 1, 1),
                       study_name=hand.name, storage=hand.storage)
    text = console.export_text()
    assert pick is not None
    low, high = PairedDrop(360, 1, 1).interval()
    drop = hand.info.teacher_acc - pick.metrics["val_acc"]
    assert f"{drop:.2f}±{(high - low) / 2:.2f}" in text
    assert "…" not in text
    assert "± its 95 % interval (paired, on the same 360 images)" in " ".join(text.split())
    allowed = hand.info.constraint.allowed_drop(hand.info.teacher_acc)
    assert high < allowed and "lies inside the 95 % interval" not in text
    # Many disagreements on 360 images: the interval reaches past the bound. The default rule
    # recommends nothing and says what the data vouches for; the point rule recommends the
    # trial and says the bound lies inside its interval.
    wide = _with_pairs(hand.info, records, 12, 10)
    console = Console(width=200, record=True, color_system=None)
    assert print_front(console, hand.info, wide, study_name=hand.name, storage=hand.storage) is None
    text = " ".join(console.export_text().split())
    assert "nothing recommended: no feasible trial holds 1.00 pt at 95 % confidence on 360" in text
    console = Console(width=200, record=True, color_system=None)
    print_front(console, hand.info, wide, study_name=hand.name, storage=hand.storage, select="point")
    text = " ".join(console.export_text().split())
    assert PairedDrop(360, 12, 10).interval()[1] > allowed
    assert f"the bound ({allowed:.2f} pt) lies inside the 95 % interval" in text
    assert "on 360 validation images" in text
    # Records written before the counts were recorded still print, without an interval.
    console = Console(width=200, record=True, color_system=None)
    print_front(console, hand.info, records, study_name=hand.name, storage=hand.storage)
    assert "lies inside" not in console.export_text()
