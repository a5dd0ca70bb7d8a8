"""``mcaas-search try``: machine-readable output and defaults sized for the workload."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from search.cli import build_parser, main
from search.commands import try_config
from search.commands.try_config import workload_defaults
from search.workloads import WorkloadSpec
from search.workloads import demo as demo_module
from spaces import MIN_STEPS as MIN_DISTILL_STEPS
from spaces import default_space, demo_space


def test_json_output_is_the_json_alone_even_when_the_teacher_is_trained_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A new folder: the demo teacher is trained and cached first; its message goes to stderr."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo_module, "DEMO_EPOCHS", 1)  # a quick, weak teacher
    argv = ["try", "--allow-weak-teacher", "--set", "prune.ratio=0.5", "--set", "quantize.mode=int8-static"]
    assert main([*argv, "--set", "distill.epochs=1", "--threads", "1", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["config"]["prune.ratio"] == 0.5
    assert summary["config"]["quantize.mode"] == "int8-static"
    assert "training the demo teacher" in captured.err
    assert (tmp_path / "studies" / ".cache" / "demo-digits.pt").is_file()


def test_unset_distillation_budget_fits_the_workload() -> None:
    # The demo: its space's profile budget (15 epochs of ~12 steps) already exceeds the minimum.
    assert workload_defaults(WorkloadSpec(), 1077).distill.epochs == demo_space().profile_epochs == 15
    # A large dataset: the default space's budget (one epoch is hundreds of steps).
    big = WorkloadSpec(model="resnet18", dataset="fashion-mnist")
    assert workload_defaults(big, 54_000).distill.epochs == default_space().profile_epochs == 1
    # A user model on a small dataset: enough epochs for MIN_DISTILL_STEPS optimizer steps.
    small = WorkloadSpec(model="resnet18", dataset="digits")
    epochs = workload_defaults(small, 1077).distill.epochs
    assert epochs == math.ceil(MIN_DISTILL_STEPS / math.ceil(1077 / 128)) > 1
    help_text = " ".join(build_parser("try").commands["try"].format_help().split())
    assert "profile_epochs" in help_text and f"at least {MIN_DISTILL_STEPS} optimizer steps" in help_text


@pytest.mark.slow
def test_defaults_on_the_demo_land_near_the_teacher(
    tmp_path: Path,
    demo_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Pruning half the demo CNN with try's defaults recovers to within a few points (with one
    distillation epoch it ended at 23 %)."""
    shutil.copytree(demo_cache, tmp_path / "studies" / ".cache")
    monkeypatch.chdir(tmp_path)
    assert main(["try", "--set", "prune.ratio=0.5", "--threads", "1", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    drop = summary["teacher"]["val_acc"] - summary["metrics"]["val_acc"]
    assert drop < 3.0, summary["metrics"]
    assert summary["config"]["distill.epochs"] == demo_space().profile_epochs


def test_a_config_that_fails_in_the_pipeline_is_one_line_and_the_traceback_is_kept(
    tmp_path: Path,
    demo_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A pipeline error (the model, not the input, at fault: here autograd's in-place error, the
    failure a removed block once caused) is one line with exit code 1, the traceback in a file."""
    shutil.copytree(demo_cache, tmp_path / "studies" / ".cache")
    monkeypatch.chdir(tmp_path)

    def failing(config: object, ctx: object, **_: object) -> None:
        raise RuntimeError("one of the variables needed for gradient computation has been modified\nHint: ...")

    monkeypatch.setattr(try_config, "run_pipeline", failing)
    assert main(["try", "--set", "prune.ratio=0.5", "--threads", "1", "--workdir", "w"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("mcaas-search: error: the pipeline failed: RuntimeError: one of the variables")
    assert "Hint" not in err and "Traceback" not in err
    log = (tmp_path / "w" / try_config.FAILURE_LOG).read_text()
    assert log.startswith("Traceback") and "Hint: ..." in log and "in failing" in log
