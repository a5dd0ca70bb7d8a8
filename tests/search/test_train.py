"""Teacher training (the recipe and its output) and the ``mcaas-search train`` command."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest
import torch

from search.errors import UserError
from search.workloads import (
    DemoCNN,
    WorkloadSpec,
    build_for_data,
    evaluate_accuracy,
    load_workload,
    train_teacher,
)
from stages import TaskData
from tests.support import RunCli


# ---------------------------------------------------------------------------------------------
# train_teacher


def test_one_epoch_on_digits_learns(digits_data: TaskData) -> None:
    torch.manual_seed(0)
    model = DemoCNN()
    result = train_teacher(model, digits_data, epochs=1, batch_size=32, progress=False)
    assert {"val_acc", "test_acc", "epochs", "seconds"} <= set(result)
    assert result["epochs"] == 1 and result["seconds"] > 0
    assert result["val_acc"] > 40 and result["test_acc"] > 40  # chance is 10 %
    assert result["test_acc"] == evaluate_accuracy(model, digits_data.test)
    assert not model.training


def test_training_is_reproducible_with_a_seed(digits_data: TaskData) -> None:
    def trained(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(123)  # same initial weights; the training seed alone must decide
        model = DemoCNN()
        train_teacher(model, digits_data, epochs=1, batch_size=128, progress=False, seed=seed)
        return model.state_dict()

    a, b, c = trained(0), trained(0), trained(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_adamw_with_cosine_learns(digits_data: TaskData) -> None:
    torch.manual_seed(0)
    result = train_teacher(
        DemoCNN(), digits_data, epochs=2, batch_size=64, optimizer="adamw", progress=False
    )
    # AdamW's default peak lr, 2e-3 at batch 128, scaled by the square root of 64 / 128.
    assert result["optimizer"] == "adamw" and result["lr"] == pytest.approx(2e-3 * 0.5**0.5)
    assert result["val_acc"] > 40


def test_progress_prints_one_line_per_epoch_off_a_terminal(
    tiny_data: TaskData, capsys: pytest.CaptureFixture[str]
) -> None:
    train_teacher(DemoCNN(), tiny_data, epochs=2, batch_size=64, progress=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert all("loss" in line and "val" in line for line in lines)
    train_teacher(DemoCNN(), tiny_data, epochs=1, batch_size=64, progress=False)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "--epochs must be >= 1"),
        ({"epochs": 1, "batch_size": 1}, "--batch-size must be >= 2"),
        ({"epochs": 1, "optimizer": "adam"}, "unknown optimizer 'adam'; valid optimizers: sgd, adamw"),
        ({"epochs": 1, "label_smoothing": 1.0}, "--label-smoothing"),
        ({"epochs": 1, "lr": 0.0}, "--lr must be > 0"),
    ],
)
def test_bad_training_settings(tiny_data: TaskData, kwargs: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        train_teacher(DemoCNN(), tiny_data, progress=False, **kwargs)


# ---------------------------------------------------------------------------------------------
# mcaas-search train


def test_train_command_writes_checkpoint_and_metrics(
    tmp_path: Path, run_cli: RunCli, digits_data: TaskData
) -> None:
    out = tmp_path / "teacher.pt"
    code, stdout, stderr = run_cli(
        ["train", "--model", "demo", "--dataset", "digits", "--epochs", "1", "--batch-size", "32",
         "--device", "cpu", "--out", str(out)]
    )  # fmt: skip
    assert code == 0, stderr
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["model"] == "demo" and info["dataset"] == "digits" and info["seed"] == 0
    assert info["epochs"] == 1 and info["seconds"] > 0
    # How it was made, as given: a committed teacher carries the command that reproduces it.
    assert info["command"] == (
        "mcaas-search train --model demo --dataset digits --epochs 1 --batch-size 32 --device cpu "
        f"--out {out}"
    )
    assert info["torch"] == torch.__version__
    assert info["val_acc"] > 40 and info["test_acc"] > 40
    assert f"test {info['test_acc']:.2f} %" in stdout
    # A plain state_dict that loads with weights_only and reproduces the recorded accuracy.
    model = DemoCNN()
    model.load_state_dict(torch.load(out, map_location="cpu", weights_only=True))
    assert evaluate_accuracy(model, digits_data.test) == info["test_acc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher.json", "teacher.pt"]


def test_train_without_model_fills_the_demo_cache_that_load_workload_uses(
    tmp_path: Path, run_cli: RunCli, capsys: pytest.CaptureFixture[str]
) -> None:
    studies = tmp_path / "studies"
    code, _, stderr = run_cli(
        ["train", "--epochs", "2", "--studies-dir", str(studies), "--device", "cpu", "--no-progress"]
    )
    assert code == 0, stderr
    cache = studies / ".cache" / "demo-digits.pt"
    info = json.loads(cache.with_suffix(".json").read_text())
    workload = load_workload(WorkloadSpec(), device=torch.device("cpu"), studies_dir=studies)
    assert capsys.readouterr().out == ""  # loaded, not retrained
    assert workload.evaluate(workload.teacher) == (info["val_acc"], info["test_acc"])


def test_train_starts_from_given_weights(tmp_path: Path, run_cli: RunCli) -> None:
    first, second = tmp_path / "a.pt", tmp_path / "b.pt"
    base = ["train", "--model", "demo", "--dataset", "digits", "--epochs", "1", "--no-progress"]
    assert run_cli([*base, "--batch-size", "32", "--out", str(first)])[0] == 0
    assert run_cli([*base, "--lr", "0.01", "--weights", str(first), "--out", str(second)])[0] == 0
    before = json.loads(first.with_suffix(".json").read_text())["val_acc"]
    after = json.loads(second.with_suffix(".json").read_text())["val_acc"]
    assert after > before - 5  # continued from the trained weights, not from scratch


def _user_model(tmp_path: Path, body: str) -> str:
    path = tmp_path / "user_net.py"
    path.write_text("from torch import nn\n" + textwrap.dedent(body))
    return f"{path}:build"


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--model", "resnet-18", "--dataset", "digits"], "unknown model 'resnet-18'; expected demo, vit_tiny, any torchvision"),
        (["--model", "demo", "--dataset", "svhn"], "unknown dataset 'svhn'; valid datasets"),
        (
            ["--model", "demo", "--dataset", "fashion-mnist", "--data-root", "{tmp}/nowhere"],
            "data root .*nowhere does not exist; expected train-images-idx3-ubyte.gz",
        ),
        (["--model", "demo", "--dataset", "digits", "--out", "{tmp}/no/dir/x.pt"], "output folder .* does not exist"),
        (["--model", "demo", "--dataset", "digits", "--weights", "{tmp}/bad.pt"], "does not fit the model: missing: "),
        (["--model", "demo", "--dataset", "digits", "--weights", "{tmp}/whole.pt"], "pass --allow-pickle"),
        (["--model", "{three_channels}", "--dataset", "digits"], "expects 3-channel inputs .* digits has 1 channel"),
        (["--model", "{five_classes}", "--dataset", "digits"], "outputs 5 classes but dataset digits has 10"),
        (["--model", "demo", "--dataset", "digits", "--device", "tpu"], "unknown device 'tpu'"),
    ],
    ids=["model", "dataset", "data-root", "out", "misfit", "pickle", "channels", "classes", "device"],
)
def test_train_errors_are_one_line_exit_2(
    tmp_path: Path, run_cli: RunCli, argv: list[str], match: str
) -> None:
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    torch.save(DemoCNN(), tmp_path / "whole.pt")
    three = _user_model(tmp_path, "def build():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())\n")
    five = tmp_path / "five.py"
    five.write_text("from torch import nn\ndef build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(64, 5))\n")
    fields = {"tmp": tmp_path, "three_channels": three, "five_classes": f"{five}:build"}
    argv = [a.format(**fields) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "x.pt")]
    code, _, stderr = run_cli(["train", "--epochs", "1", "--no-progress", *argv])
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcaas-search: error: ")
    assert "Traceback" not in stderr
    assert re.search(match, lines[0]), lines[0]
    assert not (tmp_path / "x.pt").exists()


def test_train_needs_out_for_a_named_model(tmp_path: Path, run_cli: RunCli) -> None:
    code, _, stderr = run_cli(["train", "--model", "resnet18", "--dataset", "digits"])
    assert code == 2 and "--out is required" in stderr


def test_a_teacher_built_without_weights_starts_from_its_seed(digits_data: TaskData) -> None:
    """The demo teacher and `train` start from weights the seed decides: two runs of the same
    spec train the same teacher (they differed per process before), and the caller's random
    state is left alone."""

    def built(seed: int) -> dict[str, torch.Tensor]:
        spec = WorkloadSpec(seed=seed)
        return build_for_data(spec, digits_data, weights=None).state_dict()

    torch.manual_seed(7)
    expected_next = torch.rand(1)
    torch.manual_seed(7)
    a = built(0)
    assert torch.equal(torch.rand(1), expected_next)
    b, c = built(0), built(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_train_grows_a_small_default_split_and_the_search_keeps_it(tmp_path: Path, run_cli: RunCli) -> None:
    """A search keeps the split its teacher was trained on, so ``train``'s default split is sized
    for the search's default 1-point bound where the data has the images (24 validation images
    here would vouch for nothing); a given --val-fraction is kept as it is."""
    from tests.data_files import write_image_folder

    root = write_image_folder(tmp_path / "images", per_class=100, size=(8, 8), mode="L")
    model = _user_model(
        tmp_path,
        "def build(in_channels=1, num_classes=3):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),"
        " nn.Linear(4, num_classes))\n",
    )
    base = ["train", "--model", model, "--dataset", "imagefolder", "--data-root", str(root),
            "--image-size", "8", "--epochs", "1", "--no-progress"]  # fmt: skip
    code, _, stderr = run_cli([*base, "--out", str(tmp_path / "grown.pt")])
    assert code == 0, stderr
    info = json.loads((tmp_path / "grown.json").read_text())
    assert info["val_fraction"] == 0.3  # the most a split grows to: 72 of 240 images
    assert "validation split grown to 0.3 of the training data (72 of 240 images)" in stderr
    code, _, stderr = run_cli([*base, "--val-fraction", "0.1", "--out", str(tmp_path / "asked.pt")])
    assert code == 0, stderr
    assert json.loads((tmp_path / "asked.json").read_text())["val_fraction"] == 0.1
    assert "grown" not in stderr
    # Training on from the grown teacher keeps its split (a tenth would validate on images it learned).
    code, _, stderr = run_cli([*base, "--weights", str(tmp_path / "grown.pt"), "--out", str(tmp_path / "more.pt")])
    assert code == 0, stderr
    assert json.loads((tmp_path / "more.json").read_text())["val_fraction"] == 0.3
    # A search with the default fraction takes the split the teacher recorded; one with another
    # --seed is still refused.
    spec = WorkloadSpec(model=model, dataset="imagefolder", data_root=root, image_size=8,
                        weights=tmp_path / "grown.pt", decide_drop=1.0, allow_weak_teacher=True)  # fmt: skip
    workload = load_workload(spec, device=torch.device("cpu"))
    assert workload.spec.val_fraction == 0.3 and len(workload.data.val) == 72
    with pytest.raises(UserError, match="--seed 0 --val-fraction 0.3"):
        load_workload(WorkloadSpec(**{**vars(spec), "seed": 1}), device=torch.device("cpu"))
