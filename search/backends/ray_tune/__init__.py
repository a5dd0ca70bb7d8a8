"""The Ray Tune backend: the study's trials scheduled by Ray Tune, locally or on a cluster.

Ray Tune's ``OptunaSearch`` asks the same define-by-run space with the study's sampler; each
trial runs in a Ray worker process and records itself in the study storage the way the Optuna
backend does (the same params, distributions, attributes and constraints, a RUNNING trial while
it runs), so ``report``, ``show``, ``export`` and the live progress work whichever backend ran.

This is the only package that imports ray: its API moves, and it stays behind these modules.
"""

from search.backends.ray_tune.cluster import (
    absolute_spec,
    absolute_storage,
    check_fits,
    check_reachable,
    worker_runtime_env,
)
from search.backends.ray_tune.driver import RayBackend, run
from search.backends.ray_tune.searcher import (
    METRICS,
    SEARCHER_STUDY,
    DefineByRun,
    RecordingTrial,
    StudySearch,
    distributions_for,
    fits_space,
    searcher_storage,
)

__all__ = [
    "METRICS",
    "SEARCHER_STUDY",
    "DefineByRun",
    "RayBackend",
    "RecordingTrial",
    "StudySearch",
    "absolute_spec",
    "absolute_storage",
    "check_fits",
    "check_reachable",
    "distributions_for",
    "fits_space",
    "run",
    "searcher_storage",
    "worker_runtime_env",
]
