"""Shared test set-up: one torch thread, tiny dataset folders written to ``tmp_path`` in every
on-disk layout the loaders accept, tiny models and tasks, and the CLI runner ``run_cli`` (``tests/support.py``).

The data-writing helpers live in ``tests/data_files.py`` (``write_fashion_mnist`` ...) so tests
can build variants; the fixtures here wrap them with small default sizes.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from stages import Context, TaskData
from tests.data_files import write_cifar10, write_fashion_mnist, write_image_folder
from tests.support import RunCli, cli_runner
from tests.tiny_models import make_tiny_cnn, tiny_task_data

# Tests share two cores with each other and with other processes.
torch.set_num_threads(1)

# ---------------------------------------------------------------------------------------------
# Fixtures: dataset folders


@pytest.fixture
def fashion_mnist_root(tmp_path: Path) -> Path:
    """Debian's flat layout: ``train-images-idx3-ubyte.gz`` etc. directly in the root."""
    return write_fashion_mnist(tmp_path / "fmnist-debian", layout="debian")


@pytest.fixture
def fashion_mnist_torchvision_root(tmp_path: Path) -> Path:
    """Torchvision's layout: uncompressed IDX files under ``ROOT/FashionMNIST/raw``."""
    return write_fashion_mnist(tmp_path / "fmnist-tv", layout="torchvision", gz=False)


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    return write_cifar10(tmp_path / "cifar")


@pytest.fixture
def image_folder_root(tmp_path: Path) -> Path:
    """Three RGB classes of 10 PNGs each, no train/test sub-folders."""
    return write_image_folder(tmp_path / "images")


# ---------------------------------------------------------------------------------------------
# Fixtures: tasks and models


@pytest.fixture(scope="session")
def digits_data() -> TaskData:
    """scikit-learn digits as loaded by the search (seed 0): 1293 train / 144 val / 360 test."""
    from search.workloads import load_dataset

    return load_dataset("digits")


@pytest.fixture
def tiny_data() -> TaskData:
    """A learnable synthetic 1 x 8 x 8, 10-class task (256 / 64 / 64 samples)."""
    return tiny_task_data()


@pytest.fixture
def tiny_cnn() -> nn.Module:
    """A freshly initialised tiny conv-BN-ReLU chain for 1 x 8 x 8 inputs, 10 classes, eval mode."""
    return make_tiny_cnn()


@pytest.fixture(scope="session")
def _trained_digits_teacher(digits_data: TaskData) -> nn.Module:
    from search.workloads import DemoCNN, train_teacher

    torch.manual_seed(0)
    model = DemoCNN()
    train_teacher(model, digits_data, epochs=6, batch_size=64, progress=False, seed=0)
    return model.eval()


@pytest.fixture
def digits_teacher(_trained_digits_teacher: nn.Module) -> nn.Module:
    """The demo CNN briefly trained on ``digits_data`` (about 95 % accuracy), eval mode.

    A fresh copy per test: stages modify models in place.
    """
    return copy.deepcopy(_trained_digits_teacher)


@pytest.fixture
def tiny_context(tmp_path: Path, tiny_data: TaskData, tiny_cnn: nn.Module) -> Context:
    """A CPU ``Context`` over ``tiny_data`` with ``tiny_cnn`` as teacher, writing to tmp_path."""
    workdir = tmp_path / "work"
    workdir.mkdir()
    return Context(data=tiny_data, teacher=tiny_cnn, workdir=workdir, batch_size=32)


# ---------------------------------------------------------------------------------------------
# CLI


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> RunCli:
    """``run_cli([...]) -> (exit code, stdout, stderr)`` through ``search.cli.main``."""
    return cli_runner(capsys)
