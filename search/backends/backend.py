"""What a backend is: the protocol every entry of ``search.backends.BACKENDS`` implements."""

from __future__ import annotations

from typing import ClassVar, Protocol

from search.backends.settings import SearchSettings
from search.workloads import Workload


class Backend(Protocol):
    """Runs trials of an existing study (see ``open_study``) until it holds ``settings.trials``
    counted trials or ``deadline`` (epoch seconds) passes. Ctrl-C raises KeyboardInterrupt once
    the trials it interrupted are marked so (a rerun replaces them)."""

    name: ClassVar[str]

    def run(self, settings: SearchSettings, workload: Workload, *, deadline: float | None) -> None: ...
