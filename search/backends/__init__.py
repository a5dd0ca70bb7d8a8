"""Backends place a study's trials on workers: Optuna in local processes, or Ray Tune.

Each backend implements ``Backend``; ``BACKENDS`` names them (imported only when chosen, so
Ray loads only for ``--backend ray``); ``run_study`` is the one way a study is run, for the CLI
and the benchmark alike.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

from search.backends.backend import Backend
from search.backends.running import StudyRun, join_with_study_teacher, open_study, run_study
from search.backends.settings import DEFAULT_STRATEGY, SAMPLERS, STRATEGIES, SearchSettings, Strategy
from search.errors import UserError


@dataclasses.dataclass(frozen=True)
class BackendEntry:
    """Where a backend lives, the options its constructor takes, and what it is for."""

    module: str
    cls: str
    options: tuple[str, ...]
    description: str

    def create(self, options: Mapping[str, Any]) -> Backend:
        backend_type = getattr(importlib.import_module(self.module), self.cls)
        return backend_type(**{k: v for k, v in options.items() if k in self.options})


BACKENDS: dict[str, BackendEntry] = {
    "optuna": BackendEntry(
        "search.backends.local", "OptunaBackend", (), "Optuna in this process or --jobs local processes"
    ),
    "ray": BackendEntry(
        "search.backends.ray_tune",
        "RayBackend",
        ("address", "cpus_per_trial", "gpus_per_trial"),
        "Ray Tune, on a local Ray or the cluster at --address",
    ),
}


def make_backend(name: str, options: Mapping[str, Any] | None = None) -> Backend:
    """The backend ``name`` with those of ``options`` it takes (the others are ignored)."""
    try:
        entry = BACKENDS[name]
    except KeyError:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}") from None
    return entry.create(options or {})


__all__ = [
    "BACKENDS",
    "DEFAULT_STRATEGY",
    "SAMPLERS",
    "STRATEGIES",
    "Backend",
    "BackendEntry",
    "SearchSettings",
    "Strategy",
    "StudyRun",
    "join_with_study_teacher",
    "make_backend",
    "open_study",
    "run_study",
]
