"""Search-space declarations: dimensions, the default space, the MCaaS profiles, space files.

``trial_config(space, trial, profile=...)`` is the one define-by-run function both backends call
(Optuna's ``Trial``; Ray Tune's ``OptunaSearch`` hands over the same): ``SearchSpace.suggest``
samples, and a trial that runs a named profile gets that profile's exact config.
``rebuilt_config`` rebuilds a finished trial's ``PipelineConfig`` from its params.
"""

from spaces._dimensions import (
    Choice,
    Dimension,
    Fixed,
    FloatRange,
    IntRange,
    SpaceError,
    TrialLike,
)
from spaces._file import DEMO_SPACE, demo_space, load_space
from spaces._fit import MIN_STEPS, SIZE_BOOST, ModelFacts, fit_space, min_epochs
from spaces._profiles import (
    PROFILES,
    QUANT_ONLY,
    is_mcaas_profile,
    named_configs,
    profile_config,
    profile_params,
    rebuilt_config,
    trial_config,
)
from spaces._space import CLUSTER_ON, SearchSpace, default_space

__all__ = [
    "CLUSTER_ON",
    "MIN_STEPS",
    "SIZE_BOOST",
    "PROFILES",
    "QUANT_ONLY",
    "Choice",
    "Dimension",
    "Fixed",
    "FloatRange",
    "IntRange",
    "ModelFacts",
    "SearchSpace",
    "SpaceError",
    "TrialLike",
    "DEMO_SPACE",
    "default_space",
    "demo_space",
    "fit_space",
    "is_mcaas_profile",
    "load_space",
    "min_epochs",
    "named_configs",
    "profile_config",
    "profile_params",
    "rebuilt_config",
    "trial_config",
]
