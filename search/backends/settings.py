"""How a study's trials are run (not what for: that is the stored ``StudyInfo``): the budget,
the sampler, the parallelism and the early stops. One record for every backend."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import optuna

from search.errors import UserError
from spaces import SearchSpace

# name -> sampler factory (seed, the study's trial budget). Start-up sizes follow the budget.
SAMPLERS: dict[str, Callable[[int | None, int], optuna.samplers.BaseSampler]] = {
    "tpe": lambda seed, trials: optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=max(4, min(10, trials // 3))
    ),
    "nsga2": lambda seed, trials: optuna.samplers.NSGAIISampler(
        seed=seed, population_size=max(4, min(50, trials // 3))
    ),
    "random": lambda seed, trials: optuna.samplers.RandomSampler(seed=seed),
}


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """Everything a worker needs to run trials of one study (picklable for worker processes).

    ``trials`` is the study's total across reruns and workers; ``jobs`` trials run at once, each
    with ``threads`` torch / ONNX Runtime threads.
    """

    study: str
    storage: str | None
    trials: int
    space: SearchSpace
    sampler: str = "tpe"
    seed: int | None = 0
    timeout_s: float | None = None
    jobs: int = 1
    threads: int = 1
    profiles: bool = True
    early_stop: bool = True
    skip_dominated: bool = True
    device: str = "auto"
    # An artifact store for the trial files (see search.study.artifacts); None keeps them on disk.
    artifacts: str | None = None

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.trials < 1 or self.jobs < 1 or self.threads < 1:
            raise UserError(
                f"trials, jobs and threads must be >= 1, but got "
                f"({self.trials=}, {self.jobs=}, {self.threads=})"
            )

    def make_sampler(self, offset: int = 0) -> optuna.samplers.BaseSampler:
        """The sampler, seeded with ``seed + offset`` (a worker number, the trials already run)."""
        seed = None if self.seed is None else self.seed + offset
        return SAMPLERS[self.sampler](seed, self.trials)
