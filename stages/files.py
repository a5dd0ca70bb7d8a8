"""Atomic file writes: every artifact, checkpoint, cache and report is written under a temporary
name beside its destination and renamed, so a reader (a parallel trial, a resumed search, a user)
never sees half a file and an interrupted write leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path


def temp_beside(path: Path) -> Path:
    """A hidden, unique name in ``path``'s folder (so the rename is atomic) that keeps the suffix
    (``torch.export.save`` checks it)."""
    return path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path``, on error it is removed."""
    tmp = temp_beside(Path(path))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
