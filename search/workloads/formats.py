"""Readers of the on-disk formats datasets come in: IDX files (numpy + gzip), CIFAR's batch
pickles (a restricted unpickler: arrays only, never code) and folders of images (decoded once with
PIL), plus torchvision's downloader for --download. Each returns uint8 arrays; a file that cannot
be read is a one-line ``UserError`` naming it.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from search.errors import UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "class_folders",
    "decode_folder",
    "download_with_torchvision",
    "folder_mode",
    "image_files",
    "read_cifar_batch",
    "read_idx",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzip-compressed): big-endian header, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"cannot read IDX file {path}: {exc}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file (bad magic number).")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(dims)):
        raise UserError(f"{path} is truncated or corrupt: header says {dims}, size does not match.")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's batch dicts: numpy arrays and builtins only, never arbitrary code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":  # the old name warns under numpy 2
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR batch file as (N x 3 x 32 x 32 uint8 images, int64 labels)."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, EOFError, KeyError, TypeError, ValueError, pickle.UnpicklingError) as exc:
        raise UserError(f"cannot read CIFAR-10 batch {path}: {exc}") from None
    if len(data) != len(labels):
        raise UserError(f"CIFAR-10 batch {path} has {len(data)} images but {len(labels)} labels.")
    return data, labels


def image_files(folder: Path) -> list[Path]:
    """Every image file under ``folder`` (recursively, by extension), sorted."""
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def class_folders(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder``, sorted: one per class."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def decode_folder(
    folder: Path, classes: list[str], size: int, mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """Decode every image under ``folder/<class>/`` once: shorter side resized to ``size``,
    centre-cropped square, as uint8 N x C x size x size."""
    from PIL import Image, UnidentifiedImageError

    images: list[np.ndarray] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        for path in image_files(class_dir):
            try:
                with Image.open(path) as img:
                    img = img.convert(mode)
                    scale = size / min(img.size)
                    w, h = max(size, round(img.width * scale)), max(size, round(img.height * scale))
                    img = img.resize((w, h), Image.Resampling.BILINEAR)
                    left, top = (w - size) // 2, (h - size) // 2
                    img = img.crop((left, top, left + size, top + size))
                    array = np.asarray(img, dtype=np.uint8)
            except (OSError, UnidentifiedImageError, ValueError) as exc:
                raise UserError(f"cannot decode image {path}: {exc}") from None
            images.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
            labels.append(label)
    if not images:
        return np.zeros((0, 1 if mode == "L" else 3, size, size), np.uint8), np.zeros(0, np.int64)
    return np.stack(images), np.asarray(labels, dtype=np.int64)


def folder_mode(folders: list[Path]) -> str:
    """'L' when every image is greyscale (1 channel), else 'RGB' (3 channels)."""
    from PIL import Image

    for folder in folders:
        for path in image_files(folder):
            try:
                with Image.open(path) as img:
                    if img.mode not in ("1", "L", "I", "I;16", "F"):
                        return "RGB"
            except OSError as exc:
                raise UserError(f"cannot read image {path}: {exc}") from None
    return "L"


def download_with_torchvision(name: str, class_name: str, root: Path) -> None:
    """Let ``torchvision.datasets.<class_name>`` fetch dataset ``name`` into ``root`` (only
    with --download: nothing else here touches the network)."""
    import torchvision

    dataset_class = getattr(torchvision.datasets, class_name)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            dataset_class(root=str(root), train=train, download=True)
    except Exception as exc:  # network, disk or checksum failures all mean the same to the user
        raise UserError(f"downloading {name} into {root} failed: {exc}".replace("\n", " ")) from None
