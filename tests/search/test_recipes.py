"""Training recipes per model family, the input size a family needs, and a teacher near chance
refused before a study, ``try`` or ``bench`` spends anything (``train`` warns)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torchvision.ops import StochasticDepth

from search.errors import UserError
from search.workloads import (
    DemoCNN,
    Recipe,
    WorkloadSpec,
    build_model,
    recipe_family,
    DEFAULT_EPOCHS,
    MAX_DEFAULT_EPOCHS,
    MIN_DEFAULT_STEPS,
    default_epochs,
    train_teacher,
    with_input_size,
)
from search.workloads.recipes import (
    RECIPES,
    batch_size_for,
    regularisation_scale,
    scale_regularisation,
)
from stages import TaskData
from tests.search.test_bad_input import tripwires  # noqa: F401 - the fixture: no work may start
from tests.support import RunCli

# The search machinery, not the compression, is under test: small budgets.
TINY_SPACE = """
"distill.epochs" = 1
"prune.steps" = 1
"quantize.mode" = ["none"]
drop = ["cluster.k"]
profile_epochs = 1
"""


# ---------------------------------------------------------------------------------------------
# recipes


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("resnet18", "resnet"),
        ("wide_resnet50_2", "resnet"),
        ("vgg11_bn", "vgg"),
        ("mobilenet_v2", "mobilenet"),
        ("mobilenet_v3_small", "mobilenet"),
        ("efficientnet_b0", "efficientnet"),
        ("vit_tiny", "vit"),  # a built-in model under a ViT name gets the ViT recipe
        ("vit_b_16", "vit"),
        ("swin_t", "vit"),
        ("demo", "demo"),
        ("alexnet", "default"),
        ("nets/resnet_like.py:build", "default"),  # a user's file: its name proves nothing
    ],
)
def test_recipe_family_by_model_name(model: str, family: str) -> None:
    assert recipe_family(model) == family


def test_vit_recipe_is_adamw_with_warmup_and_cosine() -> None:
    vit = RECIPES["vit"]
    assert (vit.optimizer, vit.schedule, vit.weight_decay) == ("adamw", "cosine", 0.05)
    assert vit.warmup > 0 and vit.grad_clip is not None


def test_another_optimizer_brings_its_own_lr_and_schedule() -> None:
    resnet = RECIPES["resnet"]
    adamw = resnet.with_overrides(optimizer="adamw")
    assert (adamw.optimizer, adamw.schedule, adamw.lr) == ("adamw", "cosine", 2e-3)
    assert adamw.min_input_size == resnet.min_input_size  # what the family needs stays
    assert resnet.with_overrides(optimizer="adamw", lr=1e-4).lr == 1e-4
    assert resnet.with_overrides(optimizer=None, lr=None) == resnet


def test_the_stall_check_comes_after_the_learning_rate_peaked() -> None:
    assert RECIPES["resnet"].stall_check_epoch(30) == 12  # one-cycle peaks at 30 %
    assert RECIPES["mobilenet"].stall_check_epoch(30) == math.ceil(30 * (RECIPES["mobilenet"].warmup + 0.1))
    assert RECIPES["resnet"].stall_check_epoch(4) is None


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_the_stall_check_has_a_first_epoch_to_compare_with(optimizer: str) -> None:
    # AdamW's 5 % warm-up put the check of a 5-epoch run after epoch 1, where "has the loss fallen
    # since the first epoch" is always no: a small user model learning slowly (2.28 against a
    # uniform guess's 2.30) was restarted twice and refused.
    for family, recipe in RECIPES.items():
        recipe = recipe.with_overrides(optimizer=optimizer)
        assert all(recipe.stall_check_epoch(n) >= 2 for n in range(5, 60)), family


def test_small_training_sets_get_enough_steps_by_default() -> None:
    resnet = RECIPES["resnet"]
    # The digits image folder's 1,241 training images: batch 32, 39 steps an epoch, so 31 epochs.
    assert default_epochs(resnet, 1241) == 31 and 30 * 39 < MIN_DEFAULT_STEPS <= 31 * 39
    assert default_epochs(resnet, 1077) == 36  # digits: 34 steps an epoch
    assert default_epochs(resnet, 54_000) == DEFAULT_EPOCHS  # Fashion-MNIST: 422 steps an epoch
    assert default_epochs(resnet, 54_000, batch_size=1024) == 23  # 53 steps an epoch
    assert default_epochs(resnet, 100) == MAX_DEFAULT_EPOCHS  # 7 steps an epoch: capped
    assert default_epochs(resnet, 1) == MAX_DEFAULT_EPOCHS  # no step at all: capped, not a crash


def test_bad_recipe_is_refused_with_the_rule() -> None:
    with pytest.raises(ValueError, match="schedule must be one of"):
        Recipe(optimizer="sgd", lr=0.1, weight_decay=0.0, schedule="step")


def test_small_datasets_get_smaller_batches_and_peak_lr_follows() -> None:
    resnet, mobilenet = RECIPES["resnet"], RECIPES["mobilenet"]
    assert batch_size_for(resnet, 1077) == 32  # digits' training split: 33 steps an epoch
    assert batch_size_for(resnet, 54_000) == 128  # Fashion-MNIST
    assert batch_size_for(resnet, 100) == 16  # never below 16
    assert batch_size_for(RECIPES["demo"], 1077) == 128  # the demo CNN keeps its batch
    assert resnet.peak_lr(32) == pytest.approx(0.025)  # SGD: linear
    assert mobilenet.peak_lr(32) == pytest.approx(1e-3 * mobilenet.lr / 2e-3)  # AdamW: sqrt


def test_regularisation_is_scaled_to_the_data_keeping_the_ramp() -> None:
    model = build_model("efficientnet_b0", in_channels=1, num_classes=10)
    before = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    changed = scale_regularisation(model, regularisation_scale(5_000))
    assert changed == sum(p > 0 for p in before) + 1  # and the classifier's dropout
    after = [m.p for m in model.modules() if isinstance(m, StochasticDepth)]
    assert after == pytest.approx([p * 0.1 for p in before])
    assert regularisation_scale(10**6) == 1.0


def test_stalled_loss_restarts_at_a_tenth_of_the_lr(digits_data: TaskData) -> None:
    torch.manual_seed(0)
    result = train_teacher(
        DemoCNN(), digits_data, epochs=5, batch_size=64, lr=20.0, progress=False, recipe=RECIPES["demo"]
    )
    assert [r.split(":")[0] for r in result["lr_restarts"]] == ["lr 20"]
    assert result["lr"] == pytest.approx(2.0) and result["val_acc"] > 80


@pytest.mark.slow
def test_a_user_file_trains_with_no_flags(tmp_path: Path, run_cli: RunCli) -> None:
    # A new user's first `train`: in 5 epochs of digits (170 steps) this file (grouped,
    # depthwise and gated convolutions, GELUs) was still on its slow start when the stall check
    # looked, and was refused at three learning rates; 36 epochs train it (97.5 % here).
    from tests.search.test_analysis import USER_MODEL

    (tmp_path / "user.py").write_text(USER_MODEL)
    out = tmp_path / "user.pt"
    code, stdout, stderr = run_cli(
        ["train", "--model", f"{tmp_path / 'user.py'}:build", "--dataset", "digits", "--out", str(out)]
    )
    assert code == 0, stderr
    info = json.loads(out.with_suffix(".json").read_text())
    assert info["optimizer"] == "sgd" and not info["lr_restarts"]  # the default recipe
    assert info["epochs"] > DEFAULT_EPOCHS and f"for {info['epochs']} epochs" in stdout
    assert info["val_acc"] > 90, info
    assert "warning" not in stderr


def test_training_that_never_learns_is_a_one_line_error(tiny_data: TaskData) -> None:
    with pytest.raises(UserError, match=r"training did not learn \(lr 10000: loss .*; lr 1000: .*; lr 100: "):
        train_teacher(DemoCNN(), tiny_data, epochs=5, batch_size=64, lr=1e4, progress=False)


# ---------------------------------------------------------------------------------------------
# input size


def test_input_size_follows_flag_then_record_then_family(tmp_path: Path) -> None:
    def size(**kw: object) -> int | None:
        return with_input_size(WorkloadSpec(**kw)).image_size  # type: ignore[arg-type]

    assert size(model="resnet18", dataset="digits") == RECIPES["resnet"].min_input_size
    assert size(model="resnet18", dataset="digits", image_size=48) == 48
    assert size(model="resnet18", dataset="fashion-mnist") is None  # 28 px: no resize
    assert size() is None and size(model="demo", dataset="digits") is None
    # A checkpoint trained at digits' own 8 px keeps being fed 8 px.
    weights = tmp_path / "r18.pt"
    weights.write_bytes(b"")
    record = {"model": "resnet18", "dataset": "digits", "image_size": None, "preprocessing": {}}
    weights.with_suffix(".json").write_text(json.dumps(record))
    assert size(model="resnet18", dataset="digits", weights=weights) is None
    weights.with_suffix(".json").write_text(json.dumps({**record, "image_size": 40}))
    assert size(model="resnet18", dataset="digits", weights=weights) == 40
    assert size(model="mobilenet_v2", dataset="digits", weights=weights) == 28  # another model's


# ---------------------------------------------------------------------------------------------
# weak teachers


def _constant_teacher(path: Path) -> Path:
    """The demo CNN whose classifier answers class 0 whatever the input: chance on digits."""
    model = DemoCNN()
    torch.nn.init.zeros_(model.classifier.weight)
    torch.nn.init.zeros_(model.classifier.bias)
    torch.save(model.state_dict(), path)
    return path


WEAK = ["--model", "demo", "--dataset", "digits", "--device", "cpu"]


@pytest.mark.parametrize(
    "command",
    [
        ["--space", "tiny.toml", "--study", "weak", "--trials", "1"],
        ["try", "--workdir", "trial"],
        ["bench", "--out", "bench.md", "--trials", "1"],
    ],
    ids=["search", "try", "bench"],
)
@pytest.mark.usefixtures("tripwires")
def test_a_chance_level_teacher_is_refused_before_any_work(
    search_folder: Callable[[str], Path], run_cli: RunCli, command: list[str]
) -> None:
    folder = search_folder(TINY_SPACE)
    weights = _constant_teacher(folder / "weak.pt")
    code, _, stderr = run_cli([*command, *WEAK, "--weights", str(weights)])
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert "Traceback" not in stderr
    assert "within a few points of chance (10.00 % for 10 classes" in lines[0]
    assert "--allow-weak-teacher" in lines[0]
    assert not (folder / "studies" / "weak").exists()


@pytest.mark.slow
def test_a_study_runs_on_a_weak_teacher_when_allowed(
    search_folder: Callable[[str], Path], run_cli: RunCli
) -> None:
    folder = search_folder(TINY_SPACE)
    weights = _constant_teacher(folder / "weak.pt")
    argv = ["--space", "tiny.toml", "--study", "weak", "--trials", "1", *WEAK, "--weights", str(weights)]
    code, _, stderr = run_cli([*argv, "--allow-weak-teacher"])
    assert code == 0, stderr
    assert (folder / "studies" / "weak").is_dir()


def test_train_warns_when_it_produces_a_chance_level_teacher(tmp_path: Path, run_cli: RunCli) -> None:
    net = tmp_path / "blind.py"
    net.write_text(
        "import torch\nfrom torch import nn\n\n\n"
        "class Blind(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.bias = nn.Parameter(torch.zeros(10))\n\n"
        "    def forward(self, x):\n"
        "        return self.bias.expand(x.shape[0], -1) + 0 * x.flatten(1)[:, :1]\n\n\n"
        "def build():\n"
        "    return Blind()\n"
    )
    out = tmp_path / "blind.pt"
    code, stdout, stderr = run_cli(
        ["train", "--model", f"{net}:build", "--dataset", "digits", "--epochs", "1", "--no-progress",
         "--device", "cpu", "--out", str(out)]
    )  # fmt: skip
    assert code == 0, stderr
    assert out.is_file() and "val " in stdout
    assert stderr.startswith("warning: the teacher reaches "), stderr
    assert "within a few points of chance" in stderr and "A search would refuse it" in stderr
