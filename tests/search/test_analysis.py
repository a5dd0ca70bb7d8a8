"""The pre-flight analysis (``inspect``, stored with each study) and what a study learns from a
failure; and, end to end, a user model torch-pruning breaks on searched without a failed trial."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.study import load_study, open_storage, trial_record
from search.study.exclusions import Exclusion, excluded_by, exclusions, frozen_layers
from search.trials.worker import learn_from_failure
from search.workloads import Analysis
from search.workloads.analysis import thread_counts
from stages import PipelineConfig, StageError
from stages.prune_failures import PruneFailure
from tests.support import RunCli

# A user model file of the kind the search used to fail on: two branches concatenated on
# channels feeding a grouped 1x1 conv (torch-pruning breaks on it), depthwise conv, a
# squeeze-excitation gate inside a residual block, GELU.
USER_MODEL = '''
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.GELU())
        self.b = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c), nn.GELU())
        self.merge = nn.Conv2d(2 * c, c, 1, groups=2)
        self.gate = nn.Conv2d(c, c, 1)

    def forward(self, x):
        y = self.merge(torch.cat([self.a(x), self.b(x)], 1))
        return nn.functional.gelu(x + y * torch.sigmoid(self.gate(y.mean((2, 3), keepdim=True))))


class Net(nn.Module):
    def __init__(self, in_channels=1, num_classes=10):
        super().__init__()
        self.pre = nn.Conv2d(in_channels, 24, 3, padding=1)
        self.stem = nn.Conv2d(24, 16, 3, padding=1)
        self.block1 = Block(16)
        self.block2 = Block(16)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.block2(self.block1(torch.relu(self.stem(torch.relu(self.pre(x))))))
        return self.head(x.mean((2, 3)))


def build(in_channels=1, num_classes=10):
    torch.manual_seed(0)
    return Net(in_channels, num_classes)
'''


def test_inspect_prints_the_analysis_as_json(search_folder: Callable[[str], Path], run_cli: RunCli) -> None:
    search_folder("")
    code, out, err = run_cli(["inspect", "--json"])
    assert code == 0, err
    summary = json.loads(out)
    analysis = Analysis.from_dict(summary["analysis"])
    assert analysis.structural and analysis.blocks == [] and analysis.frozen_layers == {}
    assert set(analysis.latency_ms) == set(thread_counts())
    assert analysis.operators > 0 and analysis.epoch_seconds > 0
    assert analysis.train_size + analysis.val_size == 1437  # digits' training part
    assert "depth.fraction" not in summary["space"]  # the demo CNN has no residual block
    # The teacher is timed in every format the default space searches; int8-qat's file is
    # int8-static's, so both get the same time.
    assert set(analysis.format_latency_ms) == {"none", "fp16", "int8-dynamic", "int8-static", "int8-qat"}
    assert analysis.format_latency_ms["int8-qat"] == analysis.format_latency_ms["int8-static"]
    assert min(analysis.format_latency_ms.values()) > 0


def test_inspect_for_latency_leaves_out_the_formats_slower_than_fp32(
    search_folder: Callable[[str], Path], run_cli: RunCli
) -> None:
    search_folder("")
    code, out, err = run_cli(["inspect", "--json", "--target", "latency"])
    assert code == 0, err
    summary = json.loads(out)
    analysis = Analysis.from_dict(summary["analysis"])
    fp32 = analysis.format_latency_ms["none"]
    slow = {mode for mode, ms in analysis.format_latency_ms.items() if ms > 1.05 * fp32}
    searched = summary["space"]["quantize.mode"]
    for mode in analysis.format_latency_ms:
        assert (mode in searched.replace("= ", "").split(" | ")) == (mode not in slow), (mode, searched)


def test_inspect_without_weights_reports_all_a_teacher_is_not_needed_for(
    search_folder: Callable[[str], Path], run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = search_folder("")
    (folder / "user.py").write_text(USER_MODEL)
    monkeypatch.setenv("COLUMNS", "250")  # each table row on one line
    code, out, err = run_cli(["inspect", "--model", "user.py:build", "--dataset", "digits", "--device", "cpu"])
    assert code == 0, err
    text = " ".join(out.split())
    assert "untrained (random weights)" in text
    for what in ("parameters / MACs", "ONNX operators", "structural pruning", "removable blocks (2)",
                 "trailing stages that can be cut", "teacher latency (fp32, batch 1)",
                 "teacher in each format, speed vs fp32", "the search space a study of it searches"):
        assert what in text, what
    assert "block1, block2 (not ranked: importance needs a trained teacher)" in text
    assert "least important first" not in text and "validation accuracy" not in text
    assert ("note: without --weights the model has random weights: a trained teacher adds the importance "
            "ranking of the removable blocks and the accuracy; train one with `mcaas-search train "
            "--model user.py:build --dataset digits --out CHECKPOINT.pt`") in text
    code, out, err = run_cli(["inspect", "--model", "user.py:build", "--dataset", "digits", "--device", "cpu", "--json"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["untrained"] is True and "importance ranking" in summary["note"]
    assert "val_acc" not in summary["teacher"] and summary["teacher"]["bytes"] > 0
    assert sorted(summary["analysis"]["blocks"]) == [["block1", None], ["block2", None]]
    assert summary["analysis"]["macs"] > 0 and summary["analysis"]["operators"] > 0


def test_analysis_round_trips_through_json_with_blocks_that_break_the_model() -> None:
    analysis = Analysis(
        structural=True, structural_reason=None, frozen_layers={"merge": "index error"},
        prunable_layers=3, weight_layers=5, blocks=[("layer1.0", 0.01), ("se", math.inf)],
        cuts=[["layer4.1"], ["layer4.1", "layer4.0"]],
        params=10, macs=100, operators=7, latency_ms={1: 0.2, 2: 0.1}, epoch_seconds=1.5,
        steps_per_epoch=9, batch_size=128, train_size=1077, val_size=360, test_size=360, seconds=2.0,
    )
    back = Analysis.from_dict(json.loads(json.dumps(analysis.to_dict())))
    assert back == analysis
    assert back.fastest_threads() == 2 and back.block_ranking == ("layer1.0", "se")
    assert back.stage_cuts == (("layer4.1",), ("layer4.1", "layer4.0")) and back.facts.cuttable_stages == 2
    assert any("breaks the model" in finding for _, finding in back.rows())
    assert back.facts.slow_modes == ()  # not timed in other formats (an analysis before version 6)


def test_how_many_blocks_can_go_together_is_stored_shown_and_fitted_to() -> None:
    vit = Analysis(
        structural=True, structural_reason=None, frozen_layers={}, prunable_layers=20, weight_layers=21,
        blocks=[("encoder.layers.encoder_layer_1", 0.1), ("encoder.layers.encoder_layer_0", 2.0)],
        cuts=[], params=10, macs=100, operators=7, latency_ms={1: 2.0}, epoch_seconds=1.5,
        steps_per_epoch=9, batch_size=128, train_size=1077, val_size=360, test_size=360, seconds=2.0,
        removable_at_once=1,
    )
    back = Analysis.from_dict(json.loads(json.dumps(vit.to_dict())))
    assert back == vit and back.facts.removable_at_once == 1
    assert ("  removed together, at most", "1 (without the rest the output no longer depends on the input)") in back.rows()
    older = {k: v for k, v in vit.to_dict().items() if k != "removable_at_once"}  # before version 7
    assert Analysis.from_dict(older).facts.removable_at_once is None


def test_formats_measured_slower_than_fp32_beyond_the_margin_are_slow() -> None:
    analysis = Analysis(
        structural=True, structural_reason=None, frozen_layers={}, prunable_layers=3, weight_layers=5,
        blocks=[], cuts=[], params=10, macs=100, operators=7, latency_ms={1: 2.0}, epoch_seconds=1.5,
        steps_per_epoch=9, batch_size=128, train_size=1077, val_size=360, test_size=360, seconds=2.0,
        format_latency_ms={"none": 2.0, "fp16": 2.3, "int8-dynamic": 2.08, "int8-static": 1.2, "int8-qat": 1.2},
    )
    back = Analysis.from_dict(json.loads(json.dumps(analysis.to_dict())))
    assert back == analysis
    assert back.facts.slow_modes == ("fp16",)  # int8-dynamic is within the 5 % margin
    [row] = [finding for what, finding in back.rows() if what.startswith("teacher in each format")]
    assert "fp16 0.87x (slower" in row and "int8-static 1.67x," in row


def test_a_failure_teaches_the_study_once() -> None:
    study = optuna.create_study(directions=["maximize", "maximize"])
    config = PipelineConfig.from_flat({"quantize.mode": "int8-static", "prune.ratio": 0.5})
    learn_from_failure(study, 3, config, PruneFailure("cannot prune layer 'merge'", "merge"))
    assert frozen_layers(study) == {"merge": "prune: cannot prune layer 'merge'"}
    assert exclusions(study) == []
    # Blame comes from the error's fields, not its text: a quantize failure that names no
    # setting (the stage was handed no ONNX file) excludes nothing.
    learn_from_failure(study, 2, config, StageError("quantize", "expected an exported ONNX model"))
    assert exclusions(study) == []
    learn_from_failure(study, 4, config, StageError("quantize", "ONNX Runtime rejects the graph", setting="quantize.mode"))
    learn_from_failure(study, 5, config, StageError("quantize", "the same again", setting="quantize.mode"))
    [found] = exclusions(study)
    assert found == Exclusion("quantize.mode", "int8-static", "quantize: ONNX Runtime rejects the graph", 4)
    assert excluded_by([found], config.to_flat()) == found
    assert excluded_by([found], {**config.to_flat(), "quantize.mode": "fp16"}) is None
    learn_from_failure(study, 6, config, ValueError("a bug, not the model"))
    assert len(exclusions(study)) == 1 and len(frozen_layers(study)) == 1


@pytest.mark.slow
def test_a_user_model_torch_pruning_breaks_on_is_searched_without_failed_trials(
    search_folder: Callable[[str], Path], run_cli: RunCli
) -> None:
    folder = search_folder('[space]\n"distill.epochs" = 2\n"cluster.k" = 0\n"quantize.mode" = ["none", "int8-dynamic"]\nprofile_epochs = 1\n')
    (folder / "user.py").write_text(USER_MODEL)
    assert run_cli(["train", "--model", "user.py:build", "--dataset", "digits", "--epochs", "12", "--batch-size", "128", "--out", "w.pt", "--no-progress"])[0] == 0
    code, out, err = run_cli([
        "--model", "user.py:build", "--weights", "w.pt", "--dataset", "digits", "--space", "tiny.toml",
        "--target", "size", "--max-drop", "50", "--trials", "8", "--study", "u", "--no-early-stop",
    ])
    assert code == 0, err
    study = load_study("u", open_storage(None, create=False))
    stored = study.user_attrs["analysis"]
    # The merges (and what is coupled to them) are left whole; the rest still prunes.
    assert set(stored["frozen_layers"]) >= {"block1.merge", "block2.merge"}
    assert stored["structural"] and stored["prunable_layers"] >= 1
    assert [name for name, _ in stored["blocks"]] == ["block1", "block2"] or [
        name for name, _ in stored["blocks"]
    ] == ["block2", "block1"]
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 8 and not [trial_record(t).reason for t in trials if t.state == TrialState.FAIL]
    pruned = [
        r for r in map(trial_record, trials)
        if r.state == "complete" and (r.config["prune.ratio"] > 0 or r.config["depth.fraction"] > 0)
    ]
    assert pruned  # structure removed, not quantization alone
    first = pruned[0].stages[0]
    assert first["metrics"]["params"] < stored["params"]
    # show (no --trial) and the report show the stored analysis.
    code, out, err = run_cli(["show", "--study", "u"])
    assert code == 0, err
    assert "left whole: block1.merge" in out and "depth.fraction" in out
    assert "Pre-flight analysis of the teacher" in (folder / "studies" / "u" / "report.html").read_text()


def test_a_teacher_at_chance_level_is_refused_unless_allowed(
    search_folder: Callable[[str], Path], run_cli: RunCli
) -> None:
    import torch

    folder = search_folder("")
    (folder / "user.py").write_text(USER_MODEL)
    model = load_user_model(folder / "user.py")
    with torch.no_grad():  # constant logits: always the same class, 10 % on digits
        model.head.weight.zero_()
        model.head.bias.zero_()
    torch.save(model.state_dict(), folder / "chance.pt")
    argv = ["inspect", "--model", "user.py:build", "--weights", "chance.pt", "--dataset", "digits", "--json"]
    code, out, err = run_cli(argv)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "within a few points of chance (10.00 % for 10 classes" in err and "--allow-weak-teacher" in err
    code, out, err = run_cli([*argv, "--allow-weak-teacher"])
    assert code == 0, err
    assert json.loads(out)["teacher"]["val_acc"] < 19.0


def test_chance_level_bound_follows_the_number_of_classes() -> None:
    from search.workloads import chance_margin, weak_teacher

    assert chance_margin(10) == (10.0, 19.0)
    assert chance_margin(2) == (50.0, 55.0)
    assert weak_teacher(18.9, 10) is not None and weak_teacher(19.0, 10) is None
    assert weak_teacher(60.0, 2) is None


def load_user_model(path: Path):  # noqa: ANN201 - the test's own model class
    from search.workloads import build_model

    return build_model(f"{path}:build", in_channels=1, num_classes=10)
