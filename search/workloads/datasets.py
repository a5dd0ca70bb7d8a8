"""Classification datasets by name (``DATASETS``), held in memory as normalised tensors, split
into train / val / test.

Each loader finds its files (readers in ``search.workloads.formats``) and hands the decoded images
to ``search.workloads.splits.assemble``, so loading is fast and nothing touches the network unless
``download=True``. The validation split is always carved from the training data (seeded,
stratified where possible); the test split is never used for any choice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from search.errors import UserError
from search.workloads.formats import (
    IMAGE_EXTENSIONS,
    class_folders,
    decode_folder,
    download_with_torchvision,
    folder_mode,
    read_cifar_batch,
    read_idx,
)
from search.workloads.splits import (
    CARVED_TEST_FRACTION,
    DatasetRequest,
    RandomCropFlip,
    assemble,
    carve,
    resize,
    resize_note,
    to_float,
)
from stages import TaskData

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetRequest",
    "RandomCropFlip",
    "carve",
    "check_dataset_name",
    "dataset_at",
    "load_dataset",
    "read_idx",
]

# Debian's `dataset-fashion-mnist` package installs the gz IDX files here.
# The largest seed numpy and scikit-learn accept.
MAX_SEED = 2**32 - 1
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
# Torchvision's reference statistics, so checkpoints trained elsewhere see the inputs they expect.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
DEFAULT_IMAGE_SIZE = 32  # image folders, when --image-size is not given


# ---------------------------------------------------------------------------------------------
# digits


def load_digits(request: DatasetRequest) -> TaskData:
    """scikit-learn's bundled 8x8 digits (1,797 images, 0..16 grey levels, no download).

    There is no official split, so a stratified 20 % test split is carved first, then validation.
    No flips (a mirrored digit is another symbol): small random shifts only.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = bunch.images.reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    train_idx, test_idx = carve(y, CARVED_TEST_FRACTION, request.seed, what="test")
    x = resize(to_float(images, 16.0), request.image_size)
    return assemble(
        "digits",
        x[torch.from_numpy(train_idx)],
        y[train_idx],
        x[torch.from_numpy(test_idx)],
        y[test_idx],
        request,
        class_names=tuple(str(d) for d in range(10)),
        mean=None,
        std=None,
        scale="x/16",
        flip=False,
        pad_fraction=1 / 8,  # 1 px shifts at 8 px
        resize=resize_note(request.image_size, 8),
    )


# ---------------------------------------------------------------------------------------------
# fashion-mnist (IDX files)


def _find_idx_files(root: Path) -> dict[str, Path] | None:
    """The four Fashion-MNIST files in Debian's flat layout or torchvision's, plain or gz."""
    for folder in (root, root / "FashionMNIST" / "raw"):
        found: dict[str, Path] = {}
        for key, stem in FASHION_MNIST_FILES.items():
            for candidate in (folder / stem, folder / f"{stem}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(FASHION_MNIST_FILES):
            return found
    return None


def holds_fashion_mnist(root: Path) -> bool:
    """Fashion-MNIST's four IDX files in ``root``, in a layout ``load_fashion_mnist`` reads."""
    return _find_idx_files(root) is not None


def load_fashion_mnist(request: DatasetRequest) -> TaskData:
    """Fashion-MNIST from IDX files: ``ROOT/*-ubyte(.gz)`` (Debian) or ``ROOT/FashionMNIST/raw``."""
    root = request.data_root
    if root is None:
        if not DEBIAN_FASHION_MNIST.is_dir() or request.download:
            raise UserError(
                "dataset fashion-mnist needs --data-root (a folder with train-images-idx3-ubyte.gz "
                f"etc., e.g. {DEBIAN_FASHION_MNIST} from Debian's dataset-fashion-mnist)."
            )
        root = DEBIAN_FASHION_MNIST
    files = _find_idx_files(root)
    if files is None and request.download:
        download_with_torchvision("fashion-mnist", "FashionMNIST", root)
        files = _find_idx_files(root)
    if files is None:
        expected = ", ".join(f"{stem}(.gz)" for stem in FASHION_MNIST_FILES.values())
        raise UserError(
            f"fashion-mnist files not found in {root} or {root / 'FashionMNIST' / 'raw'}: "
            f"expected {expected}; pass --download to fetch them."
        )
    arrays = {key: read_idx(path) for key, path in files.items()}
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(
                f"fashion-mnist {part} files in {root} do not match: images {images.shape}, "
                f"labels {labels.shape}; expected N x 28 x 28 images and N labels."
            )
    native = int(arrays["train_images"].shape[-1])

    def prepare(images: np.ndarray) -> torch.Tensor:
        return resize(to_float(images[:, None], 255.0), request.image_size)

    return assemble(
        "fashion-mnist",
        prepare(arrays["train_images"]),
        arrays["train_labels"].astype(np.int64),
        prepare(arrays["test_images"]),
        arrays["test_labels"].astype(np.int64),
        request,
        class_names=FASHION_MNIST_CLASSES,
        mean=FASHION_MNIST_MEAN,
        std=FASHION_MNIST_STD,
        scale="x/255",
        flip=True,
        # 2 px at 28 px: teachers train for few epochs, where heavier cropping underfits.
        pad_fraction=1 / 14,
        resize=resize_note(request.image_size, native),
    )


# ---------------------------------------------------------------------------------------------
# cifar10 (python batch pickles)


def _find_cifar_dir(root: Path) -> Path | None:
    names = (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH)
    for folder in (root / CIFAR10_DIR, root):
        if all((folder / name).is_file() for name in names):
            return folder
    return None


def holds_cifar10(root: Path) -> bool:
    """CIFAR-10's python batches in ``root`` or its ``cifar-10-batches-py``."""
    return _find_cifar_dir(root) is not None


def load_cifar10(request: DatasetRequest) -> TaskData:
    """CIFAR-10 from torchvision's layout ``ROOT/cifar-10-batches-py`` (50k train, 10k test)."""
    root = request.data_root
    if root is None:
        raise UserError("dataset cifar10 needs --data-root (the folder holding cifar-10-batches-py).")
    folder = _find_cifar_dir(root)
    if folder is None and request.download:
        download_with_torchvision("cifar10", "CIFAR10", root)
        folder = _find_cifar_dir(root)
    if folder is None:
        raise UserError(
            f"cifar10 files not found in {root / CIFAR10_DIR}: expected "
            f"{', '.join(CIFAR10_TRAIN_BATCHES)} and {CIFAR10_TEST_BATCH}; "
            "pass --download to fetch them."
        )
    train = [read_cifar_batch(folder / name) for name in CIFAR10_TRAIN_BATCHES]
    test_images, test_labels = read_cifar_batch(folder / CIFAR10_TEST_BATCH)
    return assemble(
        "cifar10",
        resize(to_float(np.concatenate([d for d, _ in train]), 255.0), request.image_size),
        np.concatenate([y for _, y in train]),
        resize(to_float(test_images, 255.0), request.image_size),
        test_labels,
        request,
        class_names=CIFAR10_CLASSES,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        scale="x/255",
        flip=True,
        pad_fraction=1 / 8,  # the standard 4 px at 32 px
        resize=resize_note(request.image_size, 32),
    )


# ---------------------------------------------------------------------------------------------
# imagefolder


def holds_image_folder(root: Path) -> bool:
    """Any visible sub-folder in ``root`` (``load_imagefolder`` says what is missing inside)."""
    return any(child.is_dir() and not child.name.startswith(".") for child in root.iterdir())


def load_imagefolder(request: DatasetRequest) -> TaskData:
    """A folder of class sub-folders, or ``train/`` + ``test/`` (or ``val/``, used as test) each
    holding class sub-folders. Without a test folder, 20 % is carved as test (stratified)."""
    root = request.data_root
    if root is None:
        raise UserError("dataset imagefolder needs --data-root (a folder of class sub-folders).")
    if not root.is_dir():
        raise UserError(
            f"image folder {root} does not exist; expected class sub-folders of images, "
            "optionally under train/ and test/ (or val/)."
        )
    test_dir = None
    train_dir = root
    if (root / "train").is_dir():
        train_dir = root / "train"
        test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    classes = [p.name for p in class_folders(train_dir)]
    if len(classes) < 2:
        raise UserError(
            f"image folder {train_dir} has {len(classes)} class sub-folder(s); expected at least 2."
        )
    if test_dir is not None:
        extra = sorted({p.name for p in class_folders(test_dir)} - set(classes))
        if extra:
            raise UserError(
                f"{test_dir} has classes not in {train_dir}: {', '.join(extra[:5])}; "
                "expected the same class sub-folders."
            )
    size = request.image_size or DEFAULT_IMAGE_SIZE
    mode = folder_mode([train_dir] + ([test_dir] if test_dir is not None else []))
    images, labels = decode_folder(train_dir, classes, size, mode)
    if len(images) == 0:
        raise UserError(
            f"no images found under {train_dir}/<class>/; expected files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)}."
        )
    if test_dir is not None:
        test_images, test_labels = decode_folder(test_dir, classes, size, mode)
        if len(test_images) == 0:
            raise UserError(f"no images found under {test_dir}/<class>/.")
        train_images, train_labels = images, labels
    else:
        train_idx, test_idx = carve(labels, CARVED_TEST_FRACTION, request.seed, what="test")
        train_images, train_labels = images[train_idx], labels[train_idx]
        test_images, test_labels = images[test_idx], labels[test_idx]
    return assemble(
        "imagefolder",
        to_float(train_images, 255.0),
        train_labels,
        to_float(test_images, 255.0),
        test_labels,
        request,
        class_names=tuple(classes),
        mean=None,
        std=None,
        scale="x/255",
        flip=True,
        pad_fraction=1 / 8,
        resize=f"shorter side to {size} px (bilinear), centre crop {size}x{size}",
    )


# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One entry of ``DATASETS``: its loader and what callers must know before calling it."""

    load: Callable[[DatasetRequest], TaskData]
    # What --data-root must hold, for the error when it does not exist.
    expected_files: str
    # False for datasets bundled with a library: a --data-root given for them is a mistake.
    takes_data_root: bool = True
    # The side of its images as loaded without --image-size (what a recipe's minimum is held to).
    native_size: int | None = None
    # Whether an existing folder holds this dataset in a layout ``load`` reads, from names alone
    # (``dataset_at``); None for a dataset that is never in a folder.
    detect: Callable[[Path], bool] | None = None


DATASETS: dict[str, Dataset] = {
    "digits": Dataset(
        load_digits,
        "digits is bundled with scikit-learn and needs no data root",
        takes_data_root=False,
        native_size=8,
    ),
    "fashion-mnist": Dataset(
        load_fashion_mnist,
        "expected train-images-idx3-ubyte.gz etc. there or in FashionMNIST/raw",
        native_size=28,
        detect=holds_fashion_mnist,
    ),
    "cifar10": Dataset(
        load_cifar10,
        f"expected {CIFAR10_DIR}/data_batch_1..5 and test_batch there",
        native_size=32,
        detect=holds_cifar10,
    ),
    "imagefolder": Dataset(
        load_imagefolder,
        "expected class sub-folders of images, optionally under train/ and test/",
        native_size=DEFAULT_IMAGE_SIZE,
        detect=holds_image_folder,  # any folder with a sub-folder: last, after the narrower ones
    ),
}


def dataset_at(root: Path) -> str | None:
    """Which of ``DATASETS`` the folder ``root`` holds in a layout its loader reads: the first
    entry whose ``detect`` sees it there, in the registry's order, or None. Cheap: looks at names
    only, reads no image."""
    if not root.is_dir():
        return None
    return next((name for name, d in DATASETS.items() if d.detect is not None and d.detect(root)), None)


def check_dataset_name(name: str) -> None:
    """Raise a one-line ``UserError`` unless ``name`` is one of ``DATASETS``."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}.")


def load_dataset(name: str, request: DatasetRequest | None = None) -> TaskData:
    """Load dataset ``name`` (one of ``DATASETS``) as normalised tensors with a carved val split."""
    request = request or DatasetRequest()
    check_dataset_name(name)
    dataset = DATASETS[name]
    if not 0.0 < request.val_fraction < 1.0:
        raise UserError(
            f"--val-fraction must lie strictly between 0 and 1, but got {request.val_fraction}."
        )
    if request.image_size is not None and not 4 <= request.image_size <= 1024:
        raise UserError(f"--image-size must lie in [4, 1024], but got {request.image_size}.")
    if not 0 <= request.seed <= MAX_SEED:
        raise UserError(f"--seed must lie in [0, {MAX_SEED}], but got {request.seed}.")
    if not dataset.takes_data_root and request.data_root is not None:
        raise UserError(
            f"dataset {name} is bundled with scikit-learn and takes no --data-root "
            f"(got {request.data_root})."
        )
    if (
        dataset.takes_data_root
        and request.data_root is not None
        and not request.data_root.exists()
        and not request.download
    ):
        raise UserError(
            f"data root {request.data_root} does not exist; {dataset.expected_files} "
            "(or pass --download to fetch the dataset there)."
        )
    return dataset.load(request)
