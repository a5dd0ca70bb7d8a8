"""Tiny dataset files in every on-disk layout the loaders accept, written for tests.

Images carry their source index in their first two pixels so tests can check which sample went
to which split. Used by the fixtures in ``tests/conftest.py`` and directly by tests that need
variants.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FASHION_MNIST_STEMS = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array in the IDX format (gzip-compressed when ``path`` ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def indexed_images(n: int, size: int, channels: int | None, seed: int) -> np.ndarray:
    """Random uint8 images whose first two pixels encode the sample index (``i // 256, i % 256``),
    so tests can tell which source sample ended up in which split."""
    rng = np.random.default_rng(seed)
    shape = (n, size, size) if channels is None else (n, channels, size, size)
    images = rng.integers(0, 256, size=shape, dtype=np.uint8)
    flat = images.reshape(n, -1)
    flat[:, 0] = np.arange(n) // 256
    flat[:, 1] = np.arange(n) % 256
    return images


def balanced_labels(n: int, classes: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % classes).astype(np.uint8)


def write_fashion_mnist(
    root: Path, *, layout: str = "debian", n_train: int = 200, n_test: int = 50, gz: bool = True
) -> Path:
    """Tiny Fashion-MNIST IDX files: ``layout`` "debian" puts them in ``root`` directly,
    "torchvision" under ``root/FashionMNIST/raw``. Returns the data root to pass."""
    folder = root if layout == "debian" else root / "FashionMNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    arrays = (
        indexed_images(n_train, 28, None, seed=1),
        balanced_labels(n_train, 10, seed=2),
        indexed_images(n_test, 28, None, seed=3),
        balanced_labels(n_test, 10, seed=4),
    )
    for stem, array in zip(FASHION_MNIST_STEMS, arrays):
        write_idx(folder / f"{stem}{suffix}", array)
    return root


def write_cifar10(root: Path, *, per_batch: int = 20, n_test: int = 30) -> Path:
    """Tiny CIFAR-10 python batches in torchvision's layout ``root/cifar-10-batches-py``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i}": per_batch for i in range(1, 6)} | {"test_batch": n_test}
    offset = 0
    for name, n in batches.items():
        images = indexed_images(offset + n, 32, 3, seed=5)[offset:]
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in balanced_labels(n, 10, seed=offset)],
            b"data": images.reshape(n, 3 * 32 * 32),
        }
        offset += n
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


def write_image_folder(
    root: Path,
    *,
    classes: Sequence[str] = ("cat", "dog", "fox"),
    per_class: int = 10,
    size: tuple[int, int] = (20, 12),
    mode: str = "RGB",
    test_folder: str | None = None,
    per_class_test: int = 3,
) -> Path:
    """PNG images in class sub-folders; with ``test_folder`` ("test" or "val") under
    ``root/train`` and ``root/<test_folder>``. Each class has its own mean brightness."""
    from PIL import Image

    rng = np.random.default_rng(7)
    parts = [("train", per_class), (test_folder, per_class_test)] if test_folder else [("", per_class)]
    for part, count in parts:
        for label, name in enumerate(classes):
            folder = root / part / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                shape = (size[1], size[0]) + (() if mode == "L" else (3,))
                level = 40 + 60 * label
                pixels = np.clip(rng.normal(level, 20, size=shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root
