"""Models by name (demo, torchvision, user file), checkpoint loading and the fit checks."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn

from search.errors import UserError
from search.workloads import (
    DemoCNN,
    ModelFile,
    build_model,
    check_fits,
    load_state,
    read_checkpoint,
)
from search.workloads.models import is_user_model


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# demo


def test_demo_model_is_structurally_prunable() -> None:
    model = build_model("demo", in_channels=1, num_classes=10).eval()
    assert isinstance(model, DemoCNN)
    example = torch.randn(2, 1, 8, 8)
    before = param_count(model)
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5,
        ignored_layers=[model.classifier],
    )
    pruner.step()
    assert model(example).shape == (2, 10)
    assert param_count(model) < 0.5 * before
    assert model.classifier.out_features == 10


# ---------------------------------------------------------------------------------------------
# torchvision


def test_resnet18_adapted_to_one_channel_keeps_the_standard_stem() -> None:
    model = build_model("resnet18", in_channels=1, num_classes=7).eval()
    stem = model.conv1
    assert (stem.in_channels, stem.out_channels) == (1, 64)
    assert (stem.kernel_size, stem.stride, stem.padding) == ((7, 7), (2, 2), (3, 3))
    assert model.fc.out_features == 7
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)


def test_torchvision_model_without_adaptation_needed() -> None:
    model = build_model("mobilenet_v3_small", in_channels=3, num_classes=4).eval()
    check_fits(model, torch.randn(1, 3, 32, 32), 4, model_name="mobilenet_v3_small", dataset="x")


def test_unknown_model_lists_the_kinds_of_valid_names() -> None:
    with pytest.raises(UserError) as info:
        build_model("resnet181", in_channels=1, num_classes=10)
    message = str(info.value)
    assert "'resnet181'" in message and "demo" in message and "resnet18" in message
    assert "any torchvision classification model" in message and "file.py:factory" in message


# ---------------------------------------------------------------------------------------------
# the user's own file


def write_model_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "my_models.py"
    path.write_text("import torch\nfrom torch import nn\n\n" + textwrap.dedent(body))
    return path


def test_user_factory_receives_channels_and_classes(tmp_path: Path) -> None:
    path = write_model_file(
        tmp_path,
        """
        def build(num_classes, in_channels):
            return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))
        """,
    )
    model = build_model(f"{path}:build", in_channels=3, num_classes=5)
    assert model[0].in_channels == 3
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 5)


def test_user_factory_without_arguments(tmp_path: Path) -> None:
    path = write_model_file(
        tmp_path,
        """
        def make():
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
        """,
    )
    model = build_model(f"{path}:make", in_channels=1, num_classes=10)
    check_fits(model, torch.randn(1, 1, 8, 8), 10, model_name="make", dataset="digits")


@pytest.mark.parametrize(
    ("body", "factory", "match"),
    [
        ("def build():\n    return 3\n", "build", "returned int"),
        ("def build():\n    raise ValueError('boom')\n", "build", "ValueError: boom"),
        ("raise ImportError('no such thing')\n", "build", "importing .* failed"),
        ("def other():\n    pass\n", "build", "no callable 'build'.*other"),
    ],
)
def test_user_file_errors_are_one_line(tmp_path: Path, body: str, factory: str, match: str) -> None:
    path = write_model_file(tmp_path, body)
    with pytest.raises(UserError, match=match) as info:
        build_model(f"{path}:{factory}", in_channels=1, num_classes=10)
    assert "\n" not in str(info.value)


def test_missing_user_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        build_model(f"{tmp_path}/nope.py:build", in_channels=1, num_classes=10)


# ---------------------------------------------------------------------------------------------
# fit checks


def test_check_fits_names_channel_and_class_mismatches() -> None:
    model = DemoCNN(in_channels=3, num_classes=10)
    with pytest.raises(UserError, match="expects 3-channel inputs .* digits has 1 channel"):
        check_fits(model, torch.randn(1, 1, 8, 8), 10, model_name="demo", dataset="digits")
    model = DemoCNN(in_channels=1, num_classes=4)
    with pytest.raises(UserError, match="outputs 4 classes but dataset digits has 10"):
        check_fits(model, torch.randn(1, 1, 8, 8), 10, model_name="demo", dataset="digits")


def test_check_fits_reports_the_smallest_input_size_that_works(tmp_path: Path) -> None:
    # Five 2x2 max-pools, like vgg: 28 px inputs shrink to nothing, 32 px is the smallest that works.
    path = write_model_file(
        tmp_path,
        """
        def build(in_channels, num_classes):
            pools = [nn.MaxPool2d(2) for _ in range(5)]
            return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), *pools, nn.Flatten(),
                                 nn.Linear(4, num_classes))
        """,
    )
    model = build_model(f"{path}:build", in_channels=1, num_classes=10)
    with pytest.raises(UserError, match=r"cannot take fashion-mnist's 1x28x28 .* 32x32.*--image-size 32"):
        check_fits(model, torch.randn(1, 1, 28, 28), 10, model_name="tiny-vgg", dataset="fashion-mnist")


def test_check_fits_rejects_models_returning_tuples() -> None:
    class TwoHeads(nn.Module):
        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x.flatten(1), x.flatten(1)

    with pytest.raises(UserError, match="returned tuple"):
        check_fits(TwoHeads(), torch.randn(1, 1, 2, 5), 10, model_name="m", dataset="d")


# ---------------------------------------------------------------------------------------------
# checkpoints


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd},
        lambda sd: {f"module.{k}": v for k, v in sd.items()},
    ],
    ids=["plain", "state_dict", "model", "dataparallel"],
)
def test_checkpoint_wrappers_load(tmp_path: Path, wrap) -> None:
    source = DemoCNN()
    torch.save(wrap(source.state_dict()), tmp_path / "ckpt.pt")
    target = DemoCNN()
    load_state(target, read_checkpoint(tmp_path / "ckpt.pt"), source="ckpt.pt")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)


def test_checkpoint_that_does_not_fit_names_keys(tmp_path: Path) -> None:
    state = DemoCNN().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["classifier.bias"]
    state["classifier.weight"] = torch.zeros(3, 64)
    with pytest.raises(UserError) as info:
        load_state(DemoCNN(), state, source="x.pt")
    message = str(info.value)
    assert "missing: classifier.bias" in message
    assert "unexpected: extra.weight" in message
    assert "classifier.weight (3, 64) vs (10, 64)" in message
    assert "\n" not in message


def test_checkpoint_of_another_architecture_is_summarised(tmp_path: Path) -> None:
    torch.save(build_model("resnet18", in_channels=1, num_classes=10).state_dict(), tmp_path / "r.pt")
    with pytest.raises(UserError, match=r"missing: features.0.weight.*\(\d+ in all\).*unexpected: conv1"):
        load_state(DemoCNN(), read_checkpoint(tmp_path / "r.pt"), source="r.pt")


def test_not_a_state_dict(tmp_path: Path) -> None:
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(UserError, match="not a state_dict"):
        read_checkpoint(tmp_path / "list.pt")
    torch.save({"weights": [1, 2]}, tmp_path / "dict.pt")
    with pytest.raises(UserError, match="not tensors"):
        read_checkpoint(tmp_path / "dict.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        read_checkpoint(tmp_path / "junk.pt")


def test_pickled_module_needs_allow_pickle(tmp_path: Path) -> None:
    model = DemoCNN()
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(UserError, match="--allow-pickle"):
        read_checkpoint(tmp_path / "whole.pt")
    loaded = read_checkpoint(tmp_path / "whole.pt", allow_pickle=True)
    assert isinstance(loaded, DemoCNN)
    assert torch.equal(loaded.classifier.weight, model.classifier.weight)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("net.py:make", ModelFile("net.py", "make")),
        ("C:/models/net.py:make", ModelFile("C:/models/net.py", "make")),
        ("a:b/net.py:make", ModelFile("a:b/net.py", "make")),
        ("resnet18", None),
        ("net.py:", None),
        ("net.txt:make", None),
        (":make", None),
    ],
)
def test_model_file_parse(name: str, expected: ModelFile | None) -> None:
    assert ModelFile.parse(name) == expected
    assert is_user_model(name) is (expected is not None)


def test_model_file_absolute_and_display(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ref = ModelFile.parse("sub/net.py:make")
    assert ref is not None
    assert ref.absolute() == f"{tmp_path.resolve()}/sub/net.py:make"
    assert ref.display_name == "net.make"
