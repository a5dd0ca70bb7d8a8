"""Classification datasets held in memory as normalised tensors, split into train / val / test.

Every loader reads its files directly (IDX with numpy + gzip, CIFAR's batch pickles with a
restricted unpickler, image folders decoded once with PIL) so loading is fast and nothing touches
the network unless ``download=True``. The validation split is always carved from the training
data (seeded, stratified where possible); the test split is never used for any choice.
"""

from __future__ import annotations

import dataclasses
import gzip
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from search.errors import UserError
from stages import Split, TaskData

# Debian's `dataset-fashion-mnist` package installs the gz IDX files here.
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

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
DEFAULT_IMAGE_SIZE = 32
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


# ---------------------------------------------------------------------------------------------
# Splitting and normalisation


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


def _to_float(images: np.ndarray, scale: float) -> torch.Tensor:
    """uint8 (or 0..scale) N x C x H x W array -> float32 tensor in [0, 1]."""
    return torch.from_numpy(images.astype(np.float32)).div_(scale)


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """Bilinear (antialiased) resize of N x C x H x W in chunks, so memory stays bounded."""
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    chunks = [
        F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        for chunk in x.split(4096)
    ]
    return torch.cat(chunks) if chunks else x.new_empty((0, x.shape[1], size, size))


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-6)
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)


def _normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def _augmentation(
    pad: int, mean: tuple[float, ...], std: tuple[float, ...], *, flip: bool
) -> RandomCropFlip:
    return RandomCropFlip(pad=pad, flip=flip, fill=tuple(-m / s for m, s in zip(mean, std)))


def _crop_pad(size: int, fraction: float) -> int:
    """Crop padding as a fraction of the side, at least 1 px."""
    return max(1, round(size * fraction))


def _assemble(
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
        mean, std = _channel_stats(train_x)
    kept, held = carve(train_y, request.val_fraction, request.seed)
    train_x = _normalise(train_x, mean, std)
    test_x = _normalise(test_x, mean, std)
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
        augment=_augmentation(_crop_pad(int(h), pad_fraction), mean, std, flip=flip),
    )


def _resize_note(size: int | None, native: int) -> str | None:
    return None if size is None or size == native else f"bilinear {native}->{size} px"


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
    x = _resize(_to_float(images, 16.0), request.image_size)
    return _assemble(
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
        resize=_resize_note(request.image_size, 8),
    )


# ---------------------------------------------------------------------------------------------
# fashion-mnist (IDX files)


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


def _download(kind: str, root: Path) -> None:
    """Let torchvision fetch the dataset into ``root`` (only with --download)."""
    import torchvision

    dataset_class = {"fashion-mnist": torchvision.datasets.FashionMNIST,
                     "cifar10": torchvision.datasets.CIFAR10}[kind]  # fmt: skip
    try:
        root.mkdir(parents=True, exist_ok=True)
        for train in (True, False):
            dataset_class(root=str(root), train=train, download=True)
    except Exception as exc:  # network, disk or checksum failures all mean the same to the user
        raise UserError(f"downloading {kind} into {root} failed: {exc}".replace("\n", " ")) from None


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
        _download("fashion-mnist", root)
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
        return _resize(_to_float(images[:, None], 255.0), request.image_size)

    return _assemble(
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
        resize=_resize_note(request.image_size, native),
    )


# ---------------------------------------------------------------------------------------------
# cifar10 (python batch pickles)


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


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
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


def _find_cifar_dir(root: Path) -> Path | None:
    names = (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH)
    for folder in (root / CIFAR10_DIR, root):
        if all((folder / name).is_file() for name in names):
            return folder
    return None


def load_cifar10(request: DatasetRequest) -> TaskData:
    """CIFAR-10 from torchvision's layout ``ROOT/cifar-10-batches-py`` (50k train, 10k test)."""
    root = request.data_root
    if root is None:
        raise UserError("dataset cifar10 needs --data-root (the folder holding cifar-10-batches-py).")
    folder = _find_cifar_dir(root)
    if folder is None and request.download:
        _download("cifar10", root)
        folder = _find_cifar_dir(root)
    if folder is None:
        raise UserError(
            f"cifar10 files not found in {root / CIFAR10_DIR}: expected "
            f"{', '.join(CIFAR10_TRAIN_BATCHES)} and {CIFAR10_TEST_BATCH}; "
            "pass --download to fetch them."
        )
    train = [_read_cifar_batch(folder / name) for name in CIFAR10_TRAIN_BATCHES]
    test_images, test_labels = _read_cifar_batch(folder / CIFAR10_TEST_BATCH)
    return _assemble(
        "cifar10",
        _resize(_to_float(np.concatenate([d for d, _ in train]), 255.0), request.image_size),
        np.concatenate([y for _, y in train]),
        _resize(_to_float(test_images, 255.0), request.image_size),
        test_labels,
        request,
        class_names=CIFAR10_CLASSES,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        scale="x/255",
        flip=True,
        pad_fraction=1 / 8,  # the standard 4 px at 32 px
        resize=_resize_note(request.image_size, 32),
    )


# ---------------------------------------------------------------------------------------------
# imagefolder


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _decode_folder(
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
        for path in _image_files(class_dir):
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


def _folder_mode(folders: list[Path]) -> str:
    """'L' when every image is greyscale (1 channel), else 'RGB' (3 channels)."""
    from PIL import Image

    for folder in folders:
        for path in _image_files(folder):
            try:
                with Image.open(path) as img:
                    if img.mode not in ("1", "L", "I", "I;16", "F"):
                        return "RGB"
            except OSError as exc:
                raise UserError(f"cannot read image {path}: {exc}") from None
    return "L"


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
    classes = [p.name for p in _class_folders(train_dir)]
    if len(classes) < 2:
        raise UserError(
            f"image folder {train_dir} has {len(classes)} class sub-folder(s); expected at least 2."
        )
    if test_dir is not None:
        extra = sorted({p.name for p in _class_folders(test_dir)} - set(classes))
        if extra:
            raise UserError(
                f"{test_dir} has classes not in {train_dir}: {', '.join(extra[:5])}; "
                "expected the same class sub-folders."
            )
    size = request.image_size or DEFAULT_IMAGE_SIZE
    mode = _folder_mode([train_dir] + ([test_dir] if test_dir is not None else []))
    images, labels = _decode_folder(train_dir, classes, size, mode)
    if len(images) == 0:
        raise UserError(
            f"no images found under {train_dir}/<class>/; expected files ending in "
            f"{', '.join(IMAGE_EXTENSIONS)}."
        )
    if test_dir is not None:
        test_images, test_labels = _decode_folder(test_dir, classes, size, mode)
        if len(test_images) == 0:
            raise UserError(f"no images found under {test_dir}/<class>/.")
        train_images, train_labels = images, labels
    else:
        train_idx, test_idx = carve(labels, CARVED_TEST_FRACTION, request.seed, what="test")
        train_images, train_labels = images[train_idx], labels[train_idx]
        test_images, test_labels = images[test_idx], labels[test_idx]
    return _assemble(
        "imagefolder",
        _to_float(train_images, 255.0),
        train_labels,
        _to_float(test_images, 255.0),
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

DATASETS: dict[str, Callable[[DatasetRequest], TaskData]] = {
    "digits": load_digits,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "imagefolder": load_imagefolder,
}


def check_dataset_name(name: str) -> None:
    """Raise a one-line ``UserError`` unless ``name`` is one of ``DATASETS``."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}.")


def load_dataset(name: str, request: DatasetRequest | None = None) -> TaskData:
    """Load dataset ``name`` (one of ``DATASETS``) as normalised tensors with a carved val split."""
    request = request or DatasetRequest()
    check_dataset_name(name)
    if not 0.0 < request.val_fraction < 1.0:
        raise UserError(
            f"--val-fraction must lie strictly between 0 and 1, but got {request.val_fraction}."
        )
    if request.image_size is not None and not 4 <= request.image_size <= 1024:
        raise UserError(f"--image-size must lie in [4, 1024], but got {request.image_size}.")
    if not 0 <= request.seed < 2**32:  # what numpy and scikit-learn accept as a seed
        raise UserError(f"--seed must lie in [0, 4294967295], but got {request.seed}.")
    if name == "digits" and request.data_root is not None:
        raise UserError(
            f"dataset digits is bundled with scikit-learn and takes no --data-root "
            f"(got {request.data_root})."
        )
    if (
        name != "digits"
        and request.data_root is not None
        and not request.data_root.exists()
        and not request.download
    ):
        raise UserError(
            f"data root {request.data_root} does not exist; {_expected_files(name)} "
            "(or pass --download to fetch the dataset there)."
        )
    return DATASETS[name](request)


def _expected_files(name: str) -> str:
    return {
        "digits": "digits is bundled with scikit-learn and needs no data root",
        "fashion-mnist": "expected train-images-idx3-ubyte.gz etc. there or in FashionMNIST/raw",
        "cifar10": f"expected {CIFAR10_DIR}/data_batch_1..5 and test_batch there",
        "imagefolder": "expected class sub-folders of images, optionally under train/ and test/",
    }[name]
