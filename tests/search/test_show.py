"""``mcaas-search show``: one trial's state, settings, per-stage metrics, artifact and export
command; refusals for trials and studies that do not exist."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.search.study_fixtures import (
    HandMadeStudy,
    assert_refused,
    make_study,
    tiny_artifacts,
)
from tests.support import RunCli

torch.set_num_threads(1)


def show(run_cli: RunCli, study: HandMadeStudy, trial: int) -> str:
    code, out, err = run_cli(["show", "--study", study.name, "--trial", str(trial), "--storage", study.storage])
    assert code == 0, err
    return out


def test_show_completed_trial(hand: HandMadeStudy, run_cli: RunCli) -> None:
    out = show(run_cli, hand, 3)
    assert "trial 3 of study hand: complete, feasible, on the Pareto front, recommended" in out
    for setting in ("prune.ratio", "distill.temperature", "quantize.mode"):
        assert setting in out
    stage_rows = [line.split("│")[1].strip() for line in out.splitlines() if line.startswith("│")]
    assert ["teacher", "prune", "distill", "export", "measure"] == [
        s for s in stage_rows if s in ("teacher", "prune", "distill", "export", "quantize", "measure")
    ]
    assert "12.00x smaller" in out
    assert "samples seen" in out and "2,560" in out  # the distill stage's training compute
    assert "accuracy_drop -0.1 (ok)" in out
    assert str(hand.artifacts_dir / "trials" / "3" / "model.onnx") in out
    assert "pt2 artifact:" in out
    assert f"mcaas-search export --study hand --storage {hand.storage} --trial 3 --out hand-t3.onnx" in out


def test_show_profile_and_infeasible_trials(hand: HandMadeStudy, run_cli: RunCli) -> None:
    out = show(run_cli, hand, 2)
    assert "complete, infeasible" in out and "(MCaaS profile max-compression)" in out
    assert "accuracy_drop +2.5 (BROKEN)" in out
    assert "quantize" in out and "pt2 artifact" not in out


def test_show_failed_and_pruned_trials_give_the_reason(hand: HandMadeStudy, run_cli: RunCli) -> None:
    failed = show(run_cli, hand, 6)
    assert "trial 6 of study hand: failed" in failed
    assert "failure reason: StageError: prune: layer features.0.0 cannot be pruned" in failed
    assert "no model to export: the trial failed" in failed and "export it" not in failed
    pruned = show(run_cli, hand, 5)
    assert "stopped because: stopped at 40% of distillation" in pruned
    assert "no model to export: the trial was stopped early (pruned)" in pruned


def test_show_flags_a_missing_artifact(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, run_cli: RunCli
) -> None:
    study = make_study(tmp_path, tiny_artifacts(tmp_path_factory), name="moved")
    shutil.rmtree(study.artifacts_dir / "trials" / "3")
    assert "(MISSING: moved or deleted since the search)" in show(run_cli, study, 3)


def test_show_refusals(hand: HandMadeStudy, tmp_path: Path, run_cli: RunCli) -> None:
    assert_refused(run_cli, "show", "--study", "hand", "--trial", "42", "--storage", hand.storage,
                   says="study 'hand' has no trial 42; trials are numbered 0..7")
    assert_refused(run_cli, "show", "--study", "nope", "--trial", "0", "--storage", hand.storage,
                   says="no study named 'nope' in this storage; studies: foreign, hand, hopeless")
    assert_refused(run_cli, "show", "--study", "hand", "--trial", "0", "--storage", str(tmp_path / "x.journal"),
                   says="no study storage at")


def test_show_json_is_json_alone_on_stdout(hand: HandMadeStudy, run_cli: RunCli) -> None:
    code, out, err = run_cli(["show", "--study", "hand", "--trial", "3", "--storage", hand.storage, "--json"])
    assert code == 0, err
    trial = json.loads(out)
    assert trial["number"] == 3 and trial["state"] == "complete" and trial["feasible"] is True
    assert trial["ratios"]["size"] == pytest.approx(12.0)
    assert trial["drop"] == pytest.approx(0.9)  # lost points positive, as the tables print them
    assert trial["config"]["prune.ratio"] == 0.75
    assert trial["export"] == f"mcaas-search export --study hand --storage {hand.storage} --trial 3 --out hand-t3.onnx"
    # Without --trial: the study, its front, the recommended trial, its analysis and space.
    code, out, err = run_cli(["show", "--study", "hand", "--storage", hand.storage, "--json"])
    assert code == 0, err
    study = json.loads(out)
    assert study["study"] == "hand" and study["target"] == "size"
    assert sorted(t["number"] for t in study["front"]) == [0, 1, 3]
    assert study["recommended"]["number"] == 3
    assert study["export"].startswith("mcaas-search export --study hand")
    assert {"space", "analysis"} <= set(study)


def test_show_json_names_the_recommended_trial_under_either_rule(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, run_cli: RunCli
) -> None:
    # On 1,000 validation images only trial 0 (0.2 pt lost, 3.9x) is vouched for; trial 3
    # (0.9 pt, 12x) is within the bound on its point estimate: each rule reads its own pick.
    small = make_study(tmp_path / "studies", tiny_artifacts(tmp_path_factory), name="small", n_val=1000)
    picks = {}
    for select in ("confident", "point"):
        code, out, err = run_cli(["show", "--study", "small", "--storage", small.storage, "--select", select, "--json"])
        assert code == 0, err
        picks[select] = json.loads(out)["recommended"]["number"]
    assert picks == {"confident": 0, "point": 3}
