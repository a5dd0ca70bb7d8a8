"""Turning decoded images into a ``TaskData``: float conversion, resizing, normalisation, the
seeded validation (and test) carving, and the teacher-training augmentation.

Every per-format reader in ``search.workloads.datasets`` ends in ``assemble``, so all datasets are
split and normalised by the same rules: validation always comes from the training data.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from search.errors import UserError
from stages import Split, TaskData

__all__ = [
    "CARVED_TEST_FRACTION",
    "DatasetRequest",
    "RandomCropFlip",
    "assemble",
    "carve",
    "resize",
    "resize_note",
    "to_float",
]

# Digits and image folders have no official test split: this fraction is held out as test.
CARVED_TEST_FRACTION = 0.2


@dataclasses.dataclass(frozen=True)
class DatasetRequest:
    """Where a dataset comes from and how it is split and sized (validated by ``load_dataset``)."""

    data_root: Path | None = None
    image_size: int | None = None
    download: bool = False
    seed: int = 0
    val_fraction: float = 0.1


@dataclasses.dataclass(frozen=True)
class RandomCropFlip:
    """Batch-level augmentation for teacher training: random crop after padding, optional flip.

    ``fill`` is the normalised value of a black pixel per channel, so padding looks like the
    zero-padding torchvision applies to raw images. A frozen dataclass rather than a closure so
    that ``TaskData`` stays picklable for parallel workers.
    """

    pad: int
    flip: bool
    fill: tuple[float, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.pad
        fill = torch.tensor(self.fill, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        padded = fill.expand(n, c, h + 2 * p, w + 2 * p).clone()
        padded[:, :, p : p + h, p : p + w] = x
        dy = torch.randint(0, 2 * p + 1, (n,), device=x.device)
        dx = torch.randint(0, 2 * p + 1, (n,), device=x.device)
        rows = dy[:, None] + torch.arange(h, device=x.device)
        cols = dx[:, None] + torch.arange(w, device=x.device)
        out = padded[
            torch.arange(n, device=x.device)[:, None, None, None],
            torch.arange(c, device=x.device)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
        if self.flip:
            mirror = torch.rand(n, device=x.device) < 0.5
            out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
        return out


def carve(
    y: np.ndarray, fraction: float, seed: int, *, what: str = "validation"
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(kept, held_out)`` with ``fraction`` of ``y`` held out, stratified by class when
    every class can give at least one sample to each side, seeded so reruns split identically."""
    from sklearn.model_selection import train_test_split

    n = len(y)
    n_held = int(np.ceil(n * fraction))
    if n_held < 1 or n_held >= n:
        raise UserError(
            f"cannot carve a {what} split of fraction {fraction} from {n} samples; "
            "expected a fraction leaving at least one sample on each side."
        )
    counts = np.bincount(y)
    counts = counts[counts > 0]
    stratify = y if counts.min() >= 2 and min(n_held, n - n_held) >= len(counts) else None
    kept, held = train_test_split(
        np.arange(n), test_size=n_held, random_state=seed, shuffle=True, stratify=stratify
    )
    return np.sort(kept), np.sort(held)


def to_float(images: np.ndarray, scale: float) -> torch.Tensor:
    """uint8 (or 0..scale) N x C x H x W array -> float32 tensor in [0, 1]."""
    return torch.from_numpy(images.astype(np.float32)).div_(scale)


def resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bilinear (antialiased) resize of N x C x H x W in chunks, so memory stays bounded."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    chunks = [
        F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        for chunk in x.split(4096)
    ]
    return torch.cat(chunks) if chunks else x.new_empty((0, x.shape[1], size, size))


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def augmentation(
    pad: int, mean: tuple[float, ...], std: tuple[float, ...], *, flip: bool
) -> RandomCropFlip:
    return RandomCropFlip(pad=pad, flip=flip, fill=tuple(-m / s for m, s in zip(mean, std)))


def crop_pad(size: int, fraction: float) -> int:
    """Crop padding as a fraction of the side, at least 1 px."""
    return max(1, round(size * fraction))


def assemble(
    name: str,
    train_x: torch.Tensor,
    train_y: np.ndarray,
    test_x: torch.Tensor,
    test_y: np.ndarray,
    request: DatasetRequest,
    *,
    class_names: tuple[str, ...],
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    scale: str,
    flip: bool,
    pad_fraction: float,
    resize: str | None,
) -> TaskData:
    """Carve validation from training data, normalise every split and record the preprocessing.

    ``mean``/``std`` None means: compute them on the training data (before carving, so they do
    not depend on the seed or validation fraction). ``pad_fraction`` sizes the random-crop
    padding of the teacher-training augmentation relative to the image side.
    """
    if mean is None or std is None:
        mean, std = channel_stats(train_x)
    kept, held = carve(train_y, request.val_fraction, request.seed)
    train_x = normalise(train_x, mean, std)
    test_x = normalise(test_x, mean, std)
    labels = torch.from_numpy(train_y.astype(np.int64))
    c, h, w = train_x.shape[1:]
    preprocessing: dict[str, Any] = {
        "dataset": name,
        "mean": list(mean),
        "std": list(std),
        "input_size": [int(c), int(h), int(w)],
        "scale": scale,
        "resize": resize,
        "channels": "grayscale" if c == 1 else "RGB",
        "layout": "NCHW",
        "class_names": list(class_names),
    }
    return TaskData(
        train=Split(train_x[torch.from_numpy(kept)].contiguous(), labels[kept]),
        val=Split(train_x[torch.from_numpy(held)].contiguous(), labels[held]),
        test=Split(test_x.contiguous(), torch.from_numpy(test_y.astype(np.int64))),
        num_classes=len(class_names),
        preprocessing=preprocessing,
        augment=augmentation(crop_pad(int(h), pad_fraction), mean, std, flip=flip),
    )


def resize_note(size: int | None, native: int) -> str | None:
    return None if size is None or size == native else f"bilinear {native}->{size} px"

