"""Dataset loaders: every on-disk layout, the split rules, normalisation and augmentation."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from search.errors import UserError
from search.workloads import DATASETS, Dataset, DatasetRequest, dataset_at, load_dataset
from search.workloads.datasets import RandomCropFlip, carve, read_idx
from stages import Split, TaskData
from tests.data_files import write_idx, write_image_folder


def source_indices(split: Split, preprocessing: dict) -> list[int]:
    """Recover the index the test data wrote into each image's first two pixels."""
    mean, std = preprocessing["mean"][0], preprocessing["std"][0]
    raw = ((split.x[:, 0, 0, :2] * std + mean) * 255).round().long()
    return (raw[:, 0] * 256 + raw[:, 1]).tolist()


def assert_normalised_task(data: TaskData, shape: tuple[int, int, int], classes: int) -> None:
    for split in (data.train, data.val, data.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert tuple(split.x.shape[1:]) == shape
        assert split.x.shape[0] == split.y.shape[0] > 0
        assert int(split.y.min()) >= 0 and int(split.y.max()) < classes
    assert data.num_classes == classes
    assert data.preprocessing["input_size"] == list(shape)
    assert len(data.preprocessing["mean"]) == len(data.preprocessing["std"]) == shape[0]


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_sizes_and_normalisation(digits_data: TaskData) -> None:
    assert_normalised_task(digits_data, (1, 8, 8), 10)
    # 1797 images: 20 % test (360), then 10 % of the rest as validation (144).
    assert (len(digits_data.train), len(digits_data.val), len(digits_data.test)) == (1293, 144, 360)
    assert abs(float(digits_data.train.x.mean())) < 0.05
    assert abs(float(digits_data.train.x.std()) - 1.0) < 0.05
    assert digits_data.preprocessing["scale"] == "x/16"


def test_digits_split_is_stratified_and_seeded() -> None:
    a = load_dataset("digits", DatasetRequest(seed=3))
    b = load_dataset("digits", DatasetRequest(seed=3))
    c = load_dataset("digits", DatasetRequest(seed=4))
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.test.x, c.test.x)
    # Stratified: every class keeps its share of the test split within one sample.
    counts = torch.bincount(a.test.y, minlength=10)
    assert int(counts.max() - counts.min()) <= 2


def test_digits_augmentation_shifts_but_never_flips(digits_data: TaskData) -> None:
    augment = digits_data.augment
    assert isinstance(augment, RandomCropFlip)
    assert augment.flip is False and augment.pad == 1


# ---------------------------------------------------------------------------------------------
# fashion-mnist


def test_fashion_mnist_debian_layout_splits(fashion_mnist_root: Path) -> None:
    data = load_dataset("fashion-mnist", DatasetRequest(data_root=fashion_mnist_root))
    assert_normalised_task(data, (1, 28, 28), 10)
    assert (len(data.train), len(data.val), len(data.test)) == (180, 20, 50)
    train, val = source_indices(data.train, data.preprocessing), source_indices(data.val, data.preprocessing)
    # Validation is carved from the training files only; together they are all of them, once.
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == list(range(200))
    # The test split is the official test file, untouched and in order.
    assert source_indices(data.test, data.preprocessing) == list(range(50))
    labels = read_idx(fashion_mnist_root / "train-labels-idx1-ubyte.gz")
    assert data.val.y.tolist() == [int(labels[i]) for i in val]
    assert data.preprocessing["mean"] == [0.286] and data.preprocessing["scale"] == "x/255"
    assert data.augment is not None and data.augment.flip is True


def test_fashion_mnist_torchvision_layout_matches_debian(
    fashion_mnist_root: Path, fashion_mnist_torchvision_root: Path
) -> None:
    debian = load_dataset("fashion-mnist", DatasetRequest(data_root=fashion_mnist_root))
    tv = load_dataset("fashion-mnist", DatasetRequest(data_root=fashion_mnist_torchvision_root))
    assert torch.equal(debian.train.x, tv.train.x) and torch.equal(debian.val.y, tv.val.y)
    assert torch.equal(debian.test.x, tv.test.x)


def test_fashion_mnist_validation_split_depends_only_on_seed(fashion_mnist_root: Path) -> None:
    def val_indices(seed: int, fraction: float = 0.1) -> list[int]:
        data = load_dataset(
            "fashion-mnist",
            DatasetRequest(data_root=fashion_mnist_root, seed=seed, val_fraction=fraction),
        )
        return source_indices(data.val, data.preprocessing)

    assert val_indices(0) == val_indices(0)
    assert val_indices(0) != val_indices(1)
    assert len(val_indices(0, 0.25)) == 50


def test_fashion_mnist_image_size_resizes(fashion_mnist_root: Path) -> None:
    data = load_dataset("fashion-mnist", DatasetRequest(data_root=fashion_mnist_root, image_size=32))
    assert tuple(data.train.x.shape[1:]) == (1, 32, 32)
    assert data.preprocessing["input_size"] == [1, 32, 32]
    assert "28->32" in data.preprocessing["resize"]


def test_fashion_mnist_missing_files_name_what_was_expected(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="train-images-idx3-ubyte") as info:
        load_dataset("fashion-mnist", DatasetRequest(data_root=empty))
    assert str(empty) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("fashion-mnist", DatasetRequest(data_root=tmp_path / "nowhere"))


def test_read_idx_rejects_corrupt_files(tmp_path: Path) -> None:
    good = write_idx(tmp_path / "a-idx3-ubyte.gz", np.zeros((3, 4, 4), np.uint8))
    assert read_idx(good).shape == (3, 4, 4)
    truncated = tmp_path / "b-idx3-ubyte.gz"
    truncated.write_bytes(gzip.compress(gzip.decompress(good.read_bytes())[:-5]))
    with pytest.raises(UserError, match="truncated"):
        read_idx(truncated)
    wrong = tmp_path / "c-idx3-ubyte"
    wrong.write_bytes(b"\x00\x00\x0d\x01" + (4).to_bytes(4, "big") + bytes(16))
    with pytest.raises(UserError, match="magic"):
        read_idx(wrong)


# ---------------------------------------------------------------------------------------------
# cifar10


def test_cifar10_batches(cifar10_root: Path) -> None:
    data = load_dataset("cifar10", DatasetRequest(data_root=cifar10_root))
    assert_normalised_task(data, (3, 32, 32), 10)
    assert (len(data.train), len(data.val), len(data.test)) == (90, 10, 30)
    train, val = source_indices(data.train, data.preprocessing), source_indices(data.val, data.preprocessing)
    assert sorted(train + val) == list(range(100))
    assert source_indices(data.test, data.preprocessing) == list(range(100, 130))
    assert data.preprocessing["class_names"][0] == "airplane"


def test_cifar10_batch_pickles_cannot_run_code(cifar10_root: Path, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    batch = cifar10_root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({b"data": Exploit(), b"labels": []}))
    with pytest.raises(UserError, match="data_batch_3"):
        load_dataset("cifar10", DatasetRequest(data_root=cifar10_root))
    assert not marker.exists()


def test_cifar10_missing_root_names_expected_batches(tmp_path: Path) -> None:
    tmp_path.joinpath("cifar").mkdir()
    with pytest.raises(UserError, match="data_batch_1.*test_batch"):
        load_dataset("cifar10", DatasetRequest(data_root=tmp_path / "cifar"))


# ---------------------------------------------------------------------------------------------
# imagefolder


def test_image_folder_flat_carves_a_test_split(image_folder_root: Path) -> None:
    data = load_dataset("imagefolder", DatasetRequest(data_root=image_folder_root))
    assert_normalised_task(data, (3, 32, 32), 3)
    assert len(data.train) + len(data.val) + len(data.test) == 30
    assert len(data.test) == 6
    assert data.preprocessing["class_names"] == ["cat", "dog", "fox"]
    # Each class was drawn around its own brightness: labels must follow the folders.
    means = [float(data.train.x[data.train.y == k].mean()) for k in range(3)]
    assert means == sorted(means)


@pytest.mark.parametrize("test_folder", ["test", "val"])
def test_image_folder_with_train_and_test_folders(tmp_path: Path, test_folder: str) -> None:
    root = write_image_folder(tmp_path / "imgs", mode="L", test_folder=test_folder, size=(9, 9))
    data = load_dataset("imagefolder", DatasetRequest(data_root=root, image_size=16))
    assert_normalised_task(data, (1, 16, 16), 3)
    assert len(data.test) == 9  # the held-out folder, 3 per class
    assert len(data.train) + len(data.val) == 30


def test_image_folder_needs_classes(tmp_path: Path) -> None:
    (tmp_path / "one" / "only").mkdir(parents=True)
    with pytest.raises(UserError, match="at least 2"):
        load_dataset("imagefolder", DatasetRequest(data_root=tmp_path / "one"))


# ---------------------------------------------------------------------------------------------
# rules shared by every dataset


# ---------------------------------------------------------------------------------------------
# a dataset found in a folder


def test_dataset_at_names_each_layout(
    fashion_mnist_root: Path,
    fashion_mnist_torchvision_root: Path,
    cifar10_root: Path,
    image_folder_root: Path,
    tmp_path: Path,
) -> None:
    assert dataset_at(fashion_mnist_root) == "fashion-mnist"
    assert dataset_at(fashion_mnist_torchvision_root) == "fashion-mnist"
    # A cifar10 root is a folder with a sub-folder too: the narrower entry comes first.
    assert dataset_at(cifar10_root) == "cifar10"
    assert dataset_at(image_folder_root) == "imagefolder"
    (tmp_path / "empty" / ".hidden").mkdir(parents=True)
    assert dataset_at(tmp_path / "empty") is None
    assert dataset_at(tmp_path / "missing") is None
    (tmp_path / "notes.txt").write_text("")
    assert dataset_at(tmp_path / "notes.txt") is None


def test_a_registry_entry_brings_its_own_detection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``dataset_at`` asks the entries of ``DATASETS``: a new entry is found with no other change."""
    (tmp_path / "npz").mkdir()
    (tmp_path / "npz" / "data.npz").write_bytes(b"")
    entry = Dataset(
        load=lambda request: load_dataset("digits"),
        expected_files="expected data.npz there",
        detect=lambda root: (root / "data.npz").is_file(),
    )
    monkeypatch.setitem(DATASETS, "npz", entry)
    assert dataset_at(tmp_path / "npz") == "npz"


def test_unknown_dataset_lists_valid_ones() -> None:
    with pytest.raises(UserError) as info:
        load_dataset("mnist")
    assert all(name in str(info.value) for name in DATASETS)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_val_fraction_must_be_a_proper_fraction(fraction: float) -> None:
    with pytest.raises(UserError, match="val-fraction"):
        load_dataset("digits", DatasetRequest(val_fraction=fraction))


def test_carve_is_seeded_disjoint_and_stratified() -> None:
    y = np.repeat(np.arange(4), 25)
    kept, held = carve(y, 0.2, seed=0)
    again, _ = carve(y, 0.2, seed=0)
    assert np.array_equal(kept, again)
    assert len(held) == 20 and set(kept).isdisjoint(held) and len(kept) + len(held) == 100
    assert np.bincount(y[held]).tolist() == [5, 5, 5, 5]


def test_random_crop_flip_only_moves_pixels() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 2, 6, 6)
    out = RandomCropFlip(pad=1, flip=False, fill=(0.0, 0.0))(x)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
    for i in range(16):
        shifts = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(out[i], s) for s in shifts)
    flipped = RandomCropFlip(pad=1, flip=True, fill=(0.0, 0.0))(x)
    assert any(
        not any(torch.equal(flipped[i], padded[i, :, dy : dy + 6, dx : dx + 6]) for dy in range(3) for dx in range(3))
        for i in range(16)
    )


def test_registry_entries_say_what_their_data_root_holds(tmp_path: Path) -> None:
    for name, entry in DATASETS.items():
        assert entry.expected_files, name
        if entry.takes_data_root:
            with pytest.raises(UserError, match=f"does not exist; {entry.expected_files}"):
                load_dataset(name, DatasetRequest(data_root=tmp_path / "missing"))
        else:
            with pytest.raises(UserError, match="takes no --data-root"):
                load_dataset(name, DatasetRequest(data_root=tmp_path))
