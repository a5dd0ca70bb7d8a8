"""``mcaas-search export``: the stored artifact copied byte for byte with a JSON sidecar, verified
by re-measuring test accuracy; every refusal is one line and exit code 2.

(Named test_exporting.py, after search/exporting/: tests/stages/test_export.py already holds
the basename test_export, and pytest's default import mode needs unique basenames.)"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from search.errors import UserError
from search.exporting import check_accuracy, library_versions
from tests.search.study_fixtures import (
    BASELINE,
    HandMadeStudy,
    assert_refused,
    make_study,
    tiny_artifacts,
)
from tests.support import RunCli

torch.set_num_threads(1)


def export(run_cli: RunCli, study: HandMadeStudy, *args: str) -> str:
    code, out, err = run_cli(["export", "--study", study.name, "--storage", study.storage, *args])
    assert code == 0, err
    return out


def test_export_round_trip(hand: HandMadeStudy, tmp_path: Path, run_cli: RunCli) -> None:
    out_path = tmp_path / "model.onnx"
    out = export(run_cli, hand, "--trial", "3", "--out", str(out_path))
    artifact = hand.artifacts_dir / "trials" / "3" / "model.onnx"
    assert out_path.read_bytes() == artifact.read_bytes()
    meta = json.loads((tmp_path / "model.onnx.json").read_text())
    assert meta["trial"] == 3 and meta["study"] == "hand" and meta["format"] == "onnx"
    assert meta["sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
    assert meta["settings"]["prune.ratio"] == 0.75 and meta["settings"]["quantize.mode"] == "none"
    assert meta["metrics"]["val_acc"] == pytest.approx(95.1)
    assert meta["teacher"] == BASELINE
    assert meta["feasible"] is True and meta["broken_bounds"] == {}
    assert meta["input"]["shape"] == [1, 1, 8, 8] and meta["input"]["name"] == "input"
    assert meta["input"]["onnx_shape"][1:] == [1, 8, 8]
    assert meta["input"]["preprocessing"]["dataset"] == "digits"
    assert set(meta["versions"]) == {"torch", "onnx", "onnxruntime", "optuna", "mcaas-search"}
    assert meta["versions"]["torch"] == library_versions(["torch"])["torch"]
    check = meta["verification"]
    assert check["n_test"] == 360
    assert check["test_acc_measured"] == pytest.approx(check["test_acc_stored"], abs=1e-9)
    assert "verified: test accuracy re-measured in ONNX Runtime" in out
    assert not list(tmp_path.glob(".*"))  # no temporary files left
    # How to run it as it was measured (a record from before thread counts were kept: 1 thread).
    assert meta["session"]["intra_op_num_threads"] == 1 and meta["session"]["inter_op_num_threads"] == 1
    assert meta["session"]["latency_ms"] == meta["metrics"].get("latency_ms")


def test_the_sidecar_session_is_the_one_latency_was_best_at() -> None:
    from search.exporting.sidecar import _session_settings

    session = _session_settings({"latency_ms": 0.21, "latency_threads": 2.0})
    assert session["intra_op_num_threads"] == 2 and session["execution_mode"] == "ORT_SEQUENTIAL"


def test_export_best_is_the_recommended_trial(hand: HandMadeStudy, tmp_path: Path, run_cli: RunCli) -> None:
    out = export(run_cli, hand, "--best", "--out", str(tmp_path / "best.onnx"))
    assert "exported trial 3 (--best: the most compressed feasible trial whose 95 % interval" in out
    meta = json.loads((tmp_path / "best.onnx.json").read_text())
    assert meta["trial"] == 3 and meta["selected_by"].startswith("--best")


def test_export_best_on_a_small_split_is_the_trial_the_split_vouches_for(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, run_cli: RunCli
) -> None:
    # The same trials on 1,000 validation images: only trial 0 (0.2 pt lost, 3.9x) has an
    # interval within the 1-point bound; trial 3 (0.9 pt, 12x) is within it on its point estimate.
    small = make_study(tmp_path / "studies", tiny_artifacts(tmp_path_factory), name="small", n_val=1000)
    out = export(run_cli, small, "--best", "--out", str(tmp_path / "safe.onnx"))
    assert "exported trial 0 (--best: the most compressed feasible trial whose 95 % interval" in out
    assert json.loads((tmp_path / "safe.onnx.json").read_text())["trial"] == 0
    out = export(run_cli, small, "--best", "--select", "point", "--out", str(tmp_path / "point.onnx"))
    assert "exported trial 3 (--best: the most compressed feasible trial on its measured" in out
    # On 130 images no trial can be vouched for: one line says what the data vouches for.
    tiny = make_study(tmp_path / "studies", tiny_artifacts(tmp_path_factory), name="tiny", n_val=130)
    err = assert_refused(run_cli, "export", "--study", "tiny", "--storage", tiny.storage, "--best",
                         "--out", str(tmp_path / "none.onnx"),
                         says="no feasible trial holds 1.00 pt at 95 % confidence on 130 validation images")
    assert "the data vouches for 1.48 pt: trial 0 (3.90x size); --select point takes trial 3" in err
    assert not (tmp_path / "none.onnx").exists()


def test_export_infeasible_trial_says_so(hand: HandMadeStudy, tmp_path: Path, run_cli: RunCli) -> None:
    out = export(run_cli, hand, "--trial", "4", "--out", str(tmp_path / "t4.onnx"))
    assert "note: trial 4 is infeasible: it broke accuracy_drop by 0.4 pt" in out
    meta = json.loads((tmp_path / "t4.onnx.json").read_text())
    assert meta["feasible"] is False and meta["broken_bounds"]["accuracy_drop"] == pytest.approx(0.4)


def test_export_pt2(hand: HandMadeStudy, tmp_path: Path, run_cli: RunCli) -> None:
    out_path = tmp_path / "model.pt2"
    out = export(run_cli, hand, "--trial", "3", "--format", "pt2", "--out", str(out_path))
    assert out_path.read_bytes() == (hand.artifacts_dir / "trials" / "3" / "model.pt2").read_bytes()
    meta = json.loads((tmp_path / "model.pt2.json").read_text())
    assert meta["format"] == "pt2"
    assert abs(meta["verification"]["test_acc_measured"] - meta["verification"]["test_acc_stored"]) <= 100 / 360
    assert "re-measured in torch" in out


def test_export_refusals(
    studies: tuple[HandMadeStudy, HandMadeStudy], tmp_path: Path, run_cli: RunCli
) -> None:
    hand, hopeless = studies
    out = str(tmp_path / "m.onnx")
    base = ("export", "--study", "hand", "--storage", hand.storage)
    assert_refused(run_cli, *base, "--trial", "99", "--out", out, says="study 'hand' has no trial 99; trials are numbered 0..7")
    assert_refused(run_cli, *base, "--trial", "6", "--out", out,
                   says="trial 6 failed, so it has no model to export: StageError: prune")
    assert_refused(run_cli, *base, "--trial", "5", "--out", out,
                   says="trial 5 was stopped early (pruned), so it has no model to export: stopped at 40%")
    assert_refused(run_cli, "export", "--study", "hopeless", "--storage", hopeless.storage, "--best", "--out", out,
                   says="no trial of study 'hopeless' is feasible (accuracy drop <= 1 pt); closest: trial 0, "
                   "which broke accuracy_drop by 0.7 pt")
    assert_refused(run_cli, *base, "--trial", "3", "--out", str(tmp_path / "no" / "m.onnx"),
                   says="--out folder")
    assert_refused(run_cli, *base, "--trial", "3", "--out", str(tmp_path), says="is a folder")
    assert_refused(run_cli, *base, "--trial", "1", "--format", "pt2", "--out", out,
                   says="format pt2 is not available for trial 1: it is quantized (int8-static), "
                   "and quantized models ship as ONNX only")
    assert_refused(run_cli, "export", "--study", "nope", "--storage", hand.storage, "--best", "--out", out,
                   says="no study named 'nope'")
    assert_refused(run_cli, "export", "--study", "hand", "--storage", str(tmp_path / "x.journal"), "--best",
                   "--out", out, says="no study storage at")
    assert list(tmp_path.iterdir()) == []  # nothing written by any refusal


def test_export_refuses_when_the_artifact_is_gone(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, run_cli: RunCli
) -> None:
    study = make_study(tmp_path, tiny_artifacts(tmp_path_factory), name="moved")
    shutil.rmtree(study.artifacts_dir / "trials" / "3")
    assert_refused(run_cli, "export", "--study", "moved", "--storage", study.storage, "--best",
                   "--out", str(tmp_path / "m.onnx"), says="artifact")
    assert not (tmp_path / "m.onnx").exists()


def test_export_refuses_a_model_that_does_not_score_the_stored_accuracy(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, run_cli: RunCli
) -> None:
    real = tiny_artifacts(tmp_path_factory)
    wrong = dataclasses.replace(real, good_test_acc=real.good_test_acc - 5.0)
    study = make_study(tmp_path, wrong, name="tampered")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    err = assert_refused(run_cli, "export", "--study", "tampered", "--storage", study.storage, "--trial", "3",
                         "--out", str(out_dir / "m.onnx"), says="verification failed")
    assert f"{real.good_test_acc:.2f} %" in err
    assert list(out_dir.iterdir()) == []  # neither the model, the sidecar nor a temporary file


def test_a_trial_the_search_did_not_measure_on_test_is_exported_with_the_measured_accuracy() -> None:
    # A search measures test accuracy only for trials within the bound on validation.
    from types import SimpleNamespace

    unmeasured = SimpleNamespace(number=4, metrics={"val_acc": 80.0, "n_val": 48.0})
    assert check_accuracy(unmeasured, 91.0, 40) is None  # type: ignore[arg-type]
    measured = SimpleNamespace(number=3, metrics={"val_acc": 95.0, "test_acc": 90.0, "n_test": 40.0})
    assert check_accuracy(measured, 90.0, 40) == 90.0  # type: ignore[arg-type]
    with pytest.raises(UserError, match="verification failed"):
        check_accuracy(measured, 85.0, 40)  # type: ignore[arg-type]


def test_export_onnx_external(hand: HandMadeStudy, tmp_path: Path, run_cli: RunCli) -> None:
    """A second ONNX format, made from the same stored artifact and verified through the same
    path: the graph in FILE, its weights in FILE.data beside it."""
    out_path, data = tmp_path / "m.onnx", tmp_path / "m.onnx.data"
    out = export(run_cli, hand, "--trial", "3", "--format", "onnx-external", "--out", str(out_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.data", "m.onnx.json"]
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["format"] == "onnx-external"
    assert [f["name"] for f in meta["files"]] == ["m.onnx", "m.onnx.data"]
    assert meta["bytes"] == out_path.stat().st_size + data.stat().st_size
    assert meta["sha256"] == hashlib.sha256(out_path.read_bytes()).hexdigest()
    assert meta["files"][1]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    check = meta["verification"]
    assert check["runtime"] == "onnxruntime (CPUExecutionProvider)"
    assert check["test_acc_measured"] == pytest.approx(check["test_acc_stored"], abs=1e-9)
    assert meta["session"]["intra_op_num_threads"] == 1 and meta["source_artifact"]
    assert meta["input"]["name"] == "input" and meta["input"]["onnx_shape"][1:] == [1, 8, 8]
    assert "verified: test accuracy re-measured in ONNX Runtime" in out and f"with: {data}" in out
    # The measured artifact's weights, every one, now beside a graph that holds none of them.
    artifact = hand.artifacts_dir / "trials" / "3" / "model.onnx"
    stored = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(artifact)).graph.initializer}
    exported = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out_path)).graph.initializer}
    assert stored.keys() == exported.keys()
    assert all(np.array_equal(stored[name], exported[name]) for name in stored)
    assert out_path.stat().st_size < artifact.stat().st_size / 2


def test_a_failed_onnx_external_export_leaves_nothing(
    hand: HandMadeStudy, tmp_path: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("search.exporting.writing.check_accuracy", _refuse)
    assert_refused(run_cli, "export", "--study", hand.name, "--storage", hand.storage, "--trial", "3",
                   "--format", "onnx-external", "--out", str(tmp_path / "m.onnx"), says="verification failed")
    assert list(tmp_path.iterdir()) == []


def _refuse(*args: object) -> None:
    raise UserError("verification failed: refused by the test")
