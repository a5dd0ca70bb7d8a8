"""Workloads: flags -> spec, the cached demo teacher, checkpoints, fingerprints and errors."""

from __future__ import annotations

import argparse
import hashlib
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from search.commands import add_workload_arguments, spec_from_args
from search.errors import UserError
from search.workloads import (
    DemoCNN,
    WorkloadSpec,
    checkpoint_info,
    demo_cache_path,
    evaluate_accuracy,
    load_workload,
    metrics_path,
    pick_device,
    save_checkpoint,
)
from search.workloads import demo as demo_module
from stages import TaskData

CPU = torch.device("cpu")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# flags and devices


def test_flags_round_trip_into_a_spec() -> None:
    parser = argparse.ArgumentParser()
    add_workload_arguments(parser)
    assert spec_from_args(parser.parse_args([])) == WorkloadSpec()
    args = parser.parse_args(
        "--model resnet18 --weights w.pt --dataset fashion-mnist --data-root d --image-size 32 "
        "--download --allow-pickle --seed 3 --val-fraction 0.2 --device cpu".split()
    )
    assert spec_from_args(args) == WorkloadSpec(
        model="resnet18",
        weights=Path("w.pt"),
        dataset="fashion-mnist",
        data_root=Path("d"),
        image_size=32,
        download=True,
        allow_pickle=True,
        seed=3,
        val_fraction=0.2,
    )
    assert args.device == "cpu"
    assert all(action.help for action in parser._actions)


def test_pick_device() -> None:
    assert pick_device("cpu") == CPU
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="unknown device 'gpu0'"):
        pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            pick_device("cuda")


# ---------------------------------------------------------------------------------------------
# the demo workload


def test_demo_teacher_is_trained_once_then_loaded_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo_module, "DEMO_EPOCHS", 3)
    first = load_workload(WorkloadSpec(), device=CPU, studies_dir=tmp_path)
    captured = capsys.readouterr()
    printed = captured.err.strip().splitlines()  # a message: stdout may be a command's JSON
    assert captured.out == "" and len(printed) == 1 and "training the demo teacher" in printed[0]
    cache = tmp_path / ".cache" / "demo-digits.pt"
    assert cache.is_file() and metrics_path(cache).is_file()
    assert first.name == "demo" and not first.teacher.training
    val_acc, test_acc = first.evaluate(first.teacher)
    assert val_acc > 50 and test_acc > 50
    assert first.fingerprint["weights_sha256"] == sha256(cache)

    second = load_workload(WorkloadSpec(), device=CPU, studies_dir=tmp_path)
    assert capsys.readouterr() == ("", "")
    assert second.fingerprint == first.fingerprint
    assert second.evaluate(second.teacher) == (val_acc, test_acc)
    assert second.example_input.shape == (1, 1, 8, 8)


def test_unreadable_demo_cache_is_retrained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(demo_module, "DEMO_EPOCHS", 1)
    cache = demo_cache_path(tmp_path, WorkloadSpec())
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"garbage")
    # One epoch can leave the teacher near chance: that guard is not what this test is about.
    spec = WorkloadSpec(allow_weak_teacher=True)
    workload = load_workload(spec, device=CPU, studies_dir=tmp_path)
    assert "retraining" in capsys.readouterr().err  # a message, not a result
    assert workload.fingerprint["weights_sha256"] == sha256(cache)


def test_demo_cache_is_per_split() -> None:
    paths = {
        demo_cache_path(Path("s"), WorkloadSpec()),
        demo_cache_path(Path("s"), WorkloadSpec(seed=1)),
        demo_cache_path(Path("s"), WorkloadSpec(val_fraction=0.2)),
        demo_cache_path(Path("s"), WorkloadSpec(image_size=16)),
    }
    assert len(paths) == 4
    assert demo_cache_path(Path("s"), WorkloadSpec()) == Path("s/.cache/demo-digits.pt")


# ---------------------------------------------------------------------------------------------
# given weights


def test_checkpoint_round_trip(tmp_path: Path, digits_teacher: nn.Module, digits_data: TaskData) -> None:
    ckpt = tmp_path / "teacher.pt"
    save_checkpoint(digits_teacher, ckpt, {"note": "test"})
    spec = WorkloadSpec(model="demo", dataset="digits", weights=ckpt, val_fraction=0.1)
    workload = load_workload(spec, device=CPU, studies_dir=tmp_path / "studies")
    expected = (
        evaluate_accuracy(digits_teacher, digits_data.val),
        evaluate_accuracy(digits_teacher, digits_data.test),
    )
    assert workload.evaluate(workload.teacher) == expected
    assert workload.name == "demo-digits"
    assert workload.fingerprint["weights_sha256"] == sha256(ckpt)
    assert not (tmp_path / "studies").exists()  # given weights never touch the demo cache


def test_a_teacher_trained_on_another_split_is_refused(
    tmp_path: Path, digits_teacher: nn.Module, digits_data: TaskData
) -> None:
    """``train`` records the split it trained on; searching with another seed or fraction would
    score images the teacher learned, so it is refused in one line naming the flags to pass."""
    ckpt = tmp_path / "teacher.pt"
    trained_on = WorkloadSpec(model="demo", dataset="digits", weights=ckpt, seed=0, val_fraction=0.2)
    save_checkpoint(digits_teacher, ckpt, checkpoint_info(trained_on, digits_data, {}))
    assert load_workload(trained_on, device=CPU).spec.seed == 0  # its own split: accepted
    for other in ({"seed": 1}, {"val_fraction": 0.1}):
        spec = WorkloadSpec(**{**vars(trained_on), **other})
        with pytest.raises(UserError, match=r"--seed 0 --val-fraction 0.2") as caught:
            load_workload(spec, device=CPU)
        assert "\n" not in str(caught.value) and "trained on" in str(caught.value)


def test_the_recorded_split_holds_however_the_model_file_is_spelled(
    tmp_path: Path, digits_teacher: nn.Module, digits_data: TaskData, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train --model /abs/net.py:build`` and a search with ``--model net.py:build`` from the
    file's folder are the same model: the split check holds (it passed silently before)."""
    (tmp_path / "net.py").write_text("def build(num_classes=10, in_channels=1): ...\n")
    ckpt = tmp_path / "teacher.pt"
    absolute = WorkloadSpec(model=f"{tmp_path / 'net.py'}:build", dataset="digits", weights=ckpt, seed=1)
    save_checkpoint(digits_teacher, ckpt, checkpoint_info(absolute, digits_data, {}))
    monkeypatch.chdir(tmp_path)
    relative = WorkloadSpec(model="net.py:build", dataset="digits", weights=Path("teacher.pt"))
    with pytest.raises(UserError, match=r"--seed 1 "):
        load_workload(relative, device=CPU)


def test_fingerprint_identifies_split_and_weights(tmp_path: Path, digits_teacher: nn.Module) -> None:
    ckpt = tmp_path / "a.pt"
    save_checkpoint(digits_teacher, ckpt, {})
    base = WorkloadSpec(model="demo", dataset="digits", weights=ckpt, val_fraction=0.1)
    fp = load_workload(base, device=CPU).fingerprint
    assert fp["model"] == "demo" and fp["dataset"] == "digits" and fp["seed"] == 0
    assert fp["val_fraction"] == 0.1 and fp["input_shape"] == [1, 8, 8]
    other_seed = load_workload(WorkloadSpec(**{**vars(base), "seed": 1}), device=CPU).fingerprint
    assert other_seed != fp
    with torch.no_grad():
        digits_teacher.classifier.bias.add_(1.0)
    save_checkpoint(digits_teacher, ckpt, {})
    assert load_workload(base, device=CPU).fingerprint["weights_sha256"] != fp["weights_sha256"]


def test_fashion_mnist_workload(tmp_path: Path, fashion_mnist_root: Path) -> None:
    ckpt = tmp_path / "fm.pt"
    torch.save(DemoCNN().state_dict(), ckpt)
    spec = WorkloadSpec(
        model="demo", dataset="fashion-mnist", data_root=fashion_mnist_root, weights=ckpt, allow_weak_teacher=True
    )
    workload = load_workload(spec, device=CPU)
    assert workload.name == "demo-fashion-mnist"
    assert workload.example_input.shape == (1, 1, 28, 28)
    assert workload.fingerprint["data_root"] == str(fashion_mnist_root.resolve())
    assert len(workload.data.test) == 50


def test_user_model_file_workload(tmp_path: Path) -> None:
    source = tmp_path / "nets.py"
    source.write_text(
        textwrap.dedent(
            """
            from torch import nn

            def small(num_classes=10, in_channels=1):
                return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.ReLU(), nn.Flatten(),
                                     nn.Linear(4 * 6 * 6, num_classes))
            """
        )
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    torch.save({"state_dict": model.state_dict()}, tmp_path / "small.pt")
    spec = WorkloadSpec(model=f"{source}:small", dataset="digits", weights=tmp_path / "small.pt", allow_weak_teacher=True)
    workload = load_workload(spec, device=CPU)
    assert workload.name == "nets.small-digits"
    assert workload.fingerprint["model_file_sha256"] == sha256(source)
    assert torch.equal(workload.teacher[0].weight, model[0].weight)


def test_pickled_module_is_used_as_is_with_allow_pickle(tmp_path: Path, digits_teacher: nn.Module) -> None:
    torch.save(digits_teacher, tmp_path / "whole.pt")
    spec = WorkloadSpec(model="demo", dataset="digits", weights=tmp_path / "whole.pt")
    with pytest.raises(UserError, match="--allow-pickle"):
        load_workload(spec, device=CPU)
    workload = load_workload(WorkloadSpec(**{**vars(spec), "allow_pickle": True}), device=CPU)
    assert torch.equal(workload.teacher.classifier.weight, digits_teacher.classifier.weight)


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (
            WorkloadSpec(model="resnet18", dataset="digits"),
            r"--weights is required for model resnet18 .*`mcaas-search train --model resnet18 --dataset digits",
        ),
        (WorkloadSpec(dataset="fashion-mnist"), "--weights is required for model demo on fashion-mnist"),
        (WorkloadSpec(model="resnet18"), "--dataset is required for model resnet18; valid datasets: digits"),
        (WorkloadSpec(model="resnet-18", dataset="digits"), "unknown model 'resnet-18'"),
        (WorkloadSpec(dataset="svhn"), "unknown dataset 'svhn'; valid datasets: digits, fashion-mnist"),
        (
            WorkloadSpec(model="demo", dataset="digits", weights=Path("/nonexistent/w.pt")),
            "checkpoint /nonexistent/w.pt does not exist",
        ),
    ],
)
def test_bad_specs_are_one_line_user_errors(spec: WorkloadSpec, match: str) -> None:
    with pytest.raises(UserError, match=match) as info:
        load_workload(spec, device=CPU)
    assert "\n" not in str(info.value)


def test_checkpoint_for_another_model_is_refused(tmp_path: Path) -> None:
    torch.save(DemoCNN(num_classes=4).state_dict(), tmp_path / "four.pt")
    spec = WorkloadSpec(model="demo", dataset="digits", weights=tmp_path / "four.pt")
    with pytest.raises(UserError, match=r"shape mismatch: classifier.weight \(4, 64\) vs \(10, 64\)"):
        load_workload(spec, device=CPU)


def test_digits_holds_out_a_larger_validation_split_by_default() -> None:
    # 10 % of digits is 144 images (0.7 points each): too coarse for a 1-point bound.
    assert WorkloadSpec().val_fraction == 0.25
    assert WorkloadSpec(model="demo", dataset="digits").val_fraction == 0.25
    assert WorkloadSpec(model="resnet18", dataset="fashion-mnist").val_fraction == 0.1
    assert WorkloadSpec(dataset="digits", val_fraction=0.2).val_fraction == 0.2


def test_user_model_fingerprint_and_name_are_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pinned: studies store this fingerprint and refuse to resume when it differs."""
    from search.workloads.fingerprint import display_name, workload_fingerprint
    from stages import Split

    monkeypatch.chdir(tmp_path)
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "my_net.py").write_text("def make():\n    pass\n")
    split = Split(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.int64))
    data = TaskData(train=split, val=split, test=split, num_classes=10)
    spec = WorkloadSpec(model="nets/my_net.py:make", dataset="digits")
    fp = workload_fingerprint(spec, data, None)
    assert fp["model"] == f"{tmp_path.resolve()}/nets/my_net.py:make"
    assert fp["model_file_sha256"] == sha256(tmp_path / "nets" / "my_net.py")
    assert list(fp) == [
        "model", "model_file_sha256", "dataset", "data_root", "image_size", "input_shape",
        "num_classes", "seed", "val_fraction", "weights_sha256",
    ]  # fmt: skip
    assert display_name(spec) == "my_net.make-digits"


def test_the_default_validation_split_grows_until_it_can_decide_the_bound() -> None:
    from search.workloads import load_task_data
    from search.workloads.task_data import grown_val_fraction

    # The demo's default quarter of digits (360 images) decides 1 pt; 0.5 pt needs 390 images.
    demo = WorkloadSpec(decide_drop=1.0)
    assert grown_val_fraction(demo, load_task_data(demo)) is None
    strict = WorkloadSpec(decide_drop=0.5)
    grown = grown_val_fraction(strict, load_task_data(strict))
    assert grown == 0.272
    assert len(load_task_data(WorkloadSpec(val_fraction=grown)).val) >= 390
    # A tenth (144 images) grows to the 194 images a 1-point bound needs.
    small = WorkloadSpec(val_fraction=0.1, decide_drop=1.0)
    assert grown_val_fraction(small, load_task_data(small)) == 0.136
    # Never past 30 % of the training data: 0.2 pt would need 978 images (68 %).
    assert grown_val_fraction(WorkloadSpec(decide_drop=0.2), load_task_data(demo)) == 0.3
    # No bound to decide (an explicit --val-fraction): the fraction stays.
    assert grown_val_fraction(WorkloadSpec(val_fraction=0.1), load_task_data(small)) is None
