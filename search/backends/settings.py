"""How a study's trials are run (not what for: that is the stored ``StudyInfo``): the budget,
the sampler, the parallelism and the early stops. One record for every backend."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import optuna

from search.errors import UserError
from spaces import Fixed, FloatRange, SearchSpace

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
class Strategy:
    """How a study spends its training budget on its trials."""

    description: str
    # The distillation budget is the fidelity (trained rung by rung, judged at each by the
    # promotion rule, see objectives.should_promote), not a sampled setting.
    multi_fidelity: bool

    def space(self, space: SearchSpace) -> SearchSpace:
        """``space`` as this strategy searches it: multi-fidelity holds ``distill.epochs`` at the
        top of its range (every trial may train up to it; its rungs decide how far it does)."""
        budget = space.dimensions.get("distill.epochs")
        if not self.multi_fidelity or not isinstance(budget, FloatRange):
            return space
        dims = {**space.dimensions, "distill.epochs": Fixed(budget.high)}
        return SearchSpace(dims, profile_epochs=space.profile_epochs)


STRATEGIES: dict[str, Strategy] = {
    "full": Strategy("every trial trains its whole sampled distillation budget", multi_fidelity=False),
    "asha": Strategy(
        "asynchronous successive halving: every trial trains a first rung of optimizer steps and "
        "only the best third of those at a rung (judged against the bound, at their ratio) train on",
        multi_fidelity=True,
    ),
}
DEFAULT_STRATEGY = "full"


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
    # A name in STRATEGIES; None: the one the study was created with (DEFAULT_STRATEGY for a new
    # study). ``open_study`` settles it.
    strategy: str | None = None
    # A compute budget beside ``trials``: no trial is started once the counted trials have seen
    # this many training samples (the benchmark's equal-compute studies; the Optuna backend only).
    max_samples: int | None = None

    def __post_init__(self) -> None:
        if self.strategy is not None and self.strategy not in STRATEGIES:
            raise UserError(f"unknown strategy {self.strategy!r}; choose one of {', '.join(STRATEGIES)}")
        if self.sampler not in SAMPLERS:
            raise UserError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.max_samples is not None and self.max_samples < 0:
            raise UserError(f"max_samples must be >= 0, but got ({self.max_samples=})")
        if self.trials < 1 or self.jobs < 1 or self.threads < 1:
            raise UserError(
                f"trials, jobs and threads must be >= 1, but got "
                f"({self.trials=}, {self.jobs=}, {self.threads=})"
            )

    def make_sampler(self, offset: int = 0) -> optuna.samplers.BaseSampler:
        """The sampler, seeded with ``seed + offset`` (a worker number, the trials already run)."""
        seed = None if self.seed is None else self.seed + offset
        return SAMPLERS[self.sampler](seed, self.trials)
