"""What a server is started with (``ServerConfig``) and the layout of its folder.

The folder holds everything the server must find again after a restart, kill -9 included: the
token, the uploaded models, one folder per job (its request, its worker, its result) and the
verified exports. The studies themselves live in the study storage the CLI uses.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from search.errors import UserError
from search.study import STUDIES_DIR, storage_url
from search.workloads import DATASETS, dataset_at

DEFAULT_FOLDER = STUDIES_DIR / "server"
DEFAULT_MAX_UPLOAD_MB = 200.0
# The dataset a demo workload uses: bundled with scikit-learn, so every server offers it.
BUNDLED_DATASETS = tuple(name for name, entry in DATASETS.items() if not entry.takes_data_root)


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """A server's settings. ``data_roots`` maps each dataset name clients may ask for to its folder
    (``None`` for a bundled dataset): clients name datasets, never paths."""

    folder: Path = DEFAULT_FOLDER
    storage: str | None = None
    data_roots: dict[str, Path | None] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(BUNDLED_DATASETS)
    )
    workers: int = 1
    allow_model_code: bool = False
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1e6)
    # The folder the workers run in: relative study paths (studies/, the demo teacher's cache)
    # resolve against it, as they do for the CLI started there.
    workdir: Path = dataclasses.field(default_factory=Path.cwd)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise UserError(f"--workers must be >= 1, but got {self.workers}")
        if self.max_upload_bytes <= 0:
            raise UserError(f"--max-upload-mb must be > 0, but got {self.max_upload_bytes / 1e6:g}")

    @property
    def storage_url(self) -> str:
        """The storage as a URL or path that resolves the same from any working directory."""
        url = storage_url(self.storage)
        if "://" in url:
            return url
        path = Path(url.removeprefix("journal:"))
        return str(path if path.is_absolute() else self.workdir / path)

    @property
    def models_dir(self) -> Path:
        return self.folder / "models"

    @property
    def jobs_dir(self) -> Path:
        return self.folder / "jobs"

    @property
    def exports_dir(self) -> Path:
        return self.folder / "exports"

    @property
    def uploads_tmp(self) -> Path:
        """Where an upload is checked before it is accepted (emptied on every start)."""
        return self.folder / "incoming"

    def threads_per_job(self) -> int:
        """The cores split between the jobs that may run at once."""
        return max(1, (os.cpu_count() or 1) // self.workers)


def data_roots(folders: list[Path]) -> dict[str, Path | None]:
    """The datasets a server offers: the bundled ones, plus one per ``--data-root`` folder, named
    for what it holds (``fashion-mnist``, ``cifar10``) or, for an image folder, for its folder
    name. A folder that holds no dataset, or two folders for one name, are refused."""
    offered: dict[str, Path | None] = dict.fromkeys(BUNDLED_DATASETS)
    for folder in folders:
        root = folder.expanduser().resolve()
        kind = dataset_at(root)
        if kind is None:
            what = "does not exist" if not root.exists() else "holds no dataset a loader reads"
            raise UserError(
                f"--data-root {str(folder)!r} {what}; expected Fashion-MNIST IDX files, "
                "cifar-10-batches-py, or class sub-folders of images"
            )
        name = kind if kind != "imagefolder" else root.name
        if name in offered:
            raise UserError(f"--data-root {str(folder)!r}: a dataset named {name!r} is already offered")
        offered[name] = root
    return offered


def dataset_kind(name: str, root: Path | None) -> str:
    """The ``DATASETS`` loader of an offered dataset."""
    if root is None:
        return name
    return dataset_at(root) or name
