"""Ray Tune's searcher for a study: ``OptunaSearch`` asking the study's define-by-run space with
the study's sampler, primed with the study's finished trials and the profiles still to run."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)
from optuna.storages import BaseStorage, InMemoryStorage
from optuna.trial import FrozenTrial, TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from objectives import metrics as m
from search.study.records import TrialRecord
from spaces import SearchSpace, SpaceError, profile_params

METRICS = (m.VAL_ACC, "ratio")
OUTCOME = "outcome"
"""Result key a Ray trial reports besides METRICS: complete, pruned or failed."""
PROFILE_KEY = "profile"
"""Key the define-by-run function adds to a Ray trial's config to name the profile it runs."""


class RecordingTrial:
    """Answers ``suggest_*`` from given params and records each one's Optuna distribution.

    Replaying ``space.suggest`` on it gives a Ray trial the params and distributions an Optuna
    trial of the same config records, so both backends write the same study format.
    """

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = dict(params)
        self.distributions: dict[str, BaseDistribution] = {}

    def _answer(self, name: str, distribution: BaseDistribution) -> Any:
        if name not in self.params:
            raise SpaceError(
                f"the trial has no parameter {name!r}; its params: {', '.join(self.params) or 'none'}."
            )
        self.distributions[name] = distribution
        return self.params[name]

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return self._answer(name, FloatDistribution(low, high, log=log, step=step))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._answer(name, IntDistribution(low, high, log=log, step=step))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._answer(name, CategoricalDistribution(choices))


def distributions_for(space: SearchSpace, params: Mapping[str, Any]) -> dict[str, BaseDistribution]:
    """The distributions ``space.suggest`` asks for ``params``, in ask order.

    Raises SpaceError when ``params`` miss one the space asks or hold one it does not ask.
    """
    recorder = RecordingTrial(params)
    space.suggest(recorder)
    extra = sorted(set(params) - set(recorder.distributions))
    if extra:
        raise SpaceError(f"this space does not ask {', '.join(map(repr, extra))} for this trial.")
    return recorder.distributions


@dataclasses.dataclass(frozen=True)
class DefineByRun:
    """The ``space`` for ``OptunaSearch``: asks the study's space, and names a profile trial in
    the trial's config so the worker records it as that profile."""

    space: SearchSpace

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        self.space.suggest(trial)
        profile = TrialRecord.from_attrs(trial.user_attrs).profile
        return {PROFILE_KEY: profile} if profile else None


class StudySearch(OptunaSearch):
    """``OptunaSearch`` that starts no trial after ``deadline`` (epoch seconds; running ones
    finish, as ``--timeout`` promises) and tells its sampler a pruned trial as pruned and a failed
    one as failed, as the Optuna backend does (plain OptunaSearch would tell them complete, and fail).
    """

    def __init__(self, *args: Any, deadline: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.deadline is not None and time.time() >= self.deadline:
            return Searcher.FINISHED
        return super().suggest(trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        outcome = (result or {}).get(OUTCOME)
        # No outcome: Ray's scheduler stopped the trial at a rung (its last result is the rung's).
        if outcome != "complete":
            result, error = None, error or outcome == "failed"
        super().on_trial_complete(trial_id, result=result, error=error)


SEARCHER_STUDY = "mcaas-ray-searcher"


def searcher_storage(study: optuna.Study, space: SearchSpace, profiles: Sequence[str]) -> BaseStorage:
    """The in-memory study ``OptunaSearch`` asks: the study's finished trials (so a resumed
    search learns from them) and the ``profiles`` queued first, each named in its user attrs.

    Profiles are queued here rather than through ``points_to_evaluate`` because the name must
    reach the worker (a profile's config is exact even where its params are partial).
    Trials run with a space file whose dimensions clash with ``space`` are left out: Optuna
    would refuse to sample ``space`` beside them.
    """
    storage = InMemoryStorage()
    with optuna_quiet():
        searcher = optuna.create_study(
            storage=storage, study_name=SEARCHER_STUDY, directions=["maximize", "maximize"]
        )
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    searcher.add_trials([t for t in finished if fits_space(t, space)])
    for name in profiles:
        searcher.enqueue_trial(profile_params(name, space), user_attrs=TrialRecord(profile=name).to_attrs())
    return storage


def fits_space(trial: FrozenTrial, space: SearchSpace) -> bool:
    """Whether every param of ``trial`` is one ``space`` asks, with a distribution Optuna takes
    as the same dimension (ranges may differ; choices and kinds may not)."""
    for name, recorded in trial.distributions.items():
        try:
            dimension = space.param_dimension(name)
        except SpaceError:
            return False
        recorder = RecordingTrial({name: trial.params[name]})
        dimension.suggest(recorder, name)
        try:
            check_distribution_compatibility(recorded, recorder.distributions[name])
        except ValueError:
            return False
    return True


@contextlib.contextmanager
def optuna_quiet() -> Iterator[None]:
    """No "study created" lines for the searcher's private in-memory study."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


