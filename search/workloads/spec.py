"""What the user asked for: a ``WorkloadSpec`` (``search.commands`` makes one from the flags),
with the demo workload's names and the default validation fraction it falls back on."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from search.errors import UserError
from search.workloads.datasets import DATASETS, DatasetRequest

DEMO_MODEL = "demo"
DEMO_DATASET = "digits"

# digits has 1437 training images: 10 % would be 144, one image 0.7 points of accuracy, too
# coarse for a 1-point bound; a quarter (359) halves the noise.
DEFAULT_VAL_FRACTION = {"digits": 0.25}


def default_val_fraction(dataset: str | None) -> float:
    return DEFAULT_VAL_FRACTION.get(dataset or "", 0.1)


_PATH_FIELDS = ("weights", "data_root")


@dataclasses.dataclass(frozen=True)
class WorkloadSpec:
    """What the user asked for; ``None`` model and dataset mean the demo workload."""

    model: str | None = None
    weights: Path | None = None
    dataset: str | None = None
    data_root: Path | None = None
    image_size: int | None = None
    download: bool = False
    allow_pickle: bool = False
    allow_weak_teacher: bool = False  # go on with a teacher near chance level (see weak_teacher)
    seed: int = 0
    val_fraction: float | None = None  # None: the dataset's default (DEFAULT_VAL_FRACTION)
    # With the default val_fraction: grow it (see grown_val_fraction) until the split can vouch
    # for this many points of drop. None (and any explicit val_fraction): the fraction as it is.
    decide_drop: float | None = None

    def __post_init__(self) -> None:
        if self.model is not None and not self.model.strip():
            raise UserError("--model is empty; name a model, or leave --model out for the demo CNN.")
        if self.val_fraction is None:
            dataset = self.dataset or (DEMO_DATASET if self.model_name == DEMO_MODEL else None)
            object.__setattr__(self, "val_fraction", default_val_fraction(dataset))

    @property
    def model_name(self) -> str:
        return self.model or DEMO_MODEL

    @property
    def dataset_name(self) -> str:
        """The dataset, defaulting to digits only for the demo model."""
        if self.dataset is not None:
            return self.dataset
        if self.model_name == DEMO_MODEL:
            return DEMO_DATASET
        raise UserError(
            f"--dataset is required for model {self.model_name}; "
            f"valid datasets: {', '.join(DATASETS)}."
        )

    @property
    def is_demo(self) -> bool:
        """The built-in demo: demo CNN on digits with a cached teacher (no --weights)."""
        return (
            self.model_name == DEMO_MODEL
            and self.dataset_name == DEMO_DATASET
            and self.weights is None
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields (paths as strings), as ``from_dict`` reads them back."""
        out = dataclasses.asdict(self)
        for key in _PATH_FIELDS:
            out[key] = str(out[key]) if out[key] is not None else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkloadSpec:
        """The spec ``to_dict`` wrote, or one from any mapping holding some of its keys (a
        stored workload fingerprint): keys that are no field are ignored, missing ones take
        their defaults."""
        values = {f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data}
        for key in _PATH_FIELDS:
            if key in values:
                values[key] = Path(values[key]) if values[key] else None
        return cls(**values)

    def dataset_request(self) -> DatasetRequest:
        return DatasetRequest(
            data_root=self.data_root,
            image_size=self.image_size,
            download=self.download,
            seed=self.seed,
            val_fraction=self.val_fraction,
        )
