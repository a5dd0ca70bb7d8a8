"""The one interface every stage implements, and the records a pipeline run produces."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, Union

from torch import nn

from stages._context import Context


@dataclasses.dataclass(frozen=True)
class OnnxFile:
    """An exported model on disk (the deployable artifact)."""

    path: Path


# A stage takes the model in whatever form the previous stage left it: a torch module before
# export, an ONNX file after it.
Model = Union[nn.Module, OnnxFile]


class Stage(Protocol):
    """``run`` transforms ``model`` (modules may be changed in place and returned)."""

    name: ClassVar[str]

    def run(self, model: Any, ctx: Context) -> Model: ...


@dataclasses.dataclass(frozen=True)
class StageRecord:
    """Metrics after one stage and the wall time it took (the compression overhead)."""

    stage: str
    seconds: float
    metrics: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PipelineResult:
    """Final metrics (measured on ``artifact``) and the per-stage records of one config."""

    config: Any  # PipelineConfig
    metrics: dict[str, float]
    stages: list[StageRecord]
    artifact: Path

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.stages)


T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and the seconds it took."""
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start
