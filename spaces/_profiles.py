"""The three fixed profiles of the MCaaS thesis, as named configs.

A study enqueues them as its first trials (``study.enqueue_trial(profile_params(name, space),
user_attrs={"profile": name})``), so its results show the profiles beside what the search finds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spaces._dimensions import SpaceError
from stages.config import PipelineConfig

if TYPE_CHECKING:
    from spaces._space import SearchSpace

# MCaaS pruned with the L1 norm of whole filters, layer by layer (Li et al.'s filter pruning);
# per-layer (uniform) is also the scope that cannot empty a layer at the 90 % profile.
_L1_FILTER_PRUNING: dict[str, Any] = {
    "prune.criterion": "l1",
    "prune.method": "structured",
    "prune.scope": "uniform",
    "prune.steps": 1,
    "prune.round_to": 1,
}
_KNOWLEDGE_DISTILLATION: dict[str, Any] = {"distill.alpha": 0.7, "distill.temperature": 4.0}

PROFILES: dict[str, dict[str, Any]] = {
    "high-accuracy": {
        **_L1_FILTER_PRUNING,
        "prune.ratio": 0.3,
        "distill.alpha": 0.0,  # plain fine-tuning on the labels
        "cluster.k": 0,
        "quantize.mode": "int8-static",
    },
    "balanced": {
        **_L1_FILTER_PRUNING,
        "prune.ratio": 0.5,
        **_KNOWLEDGE_DISTILLATION,
        "cluster.k": 0,
        "quantize.mode": "int8-static",
    },
    "max-compression": {
        **_L1_FILTER_PRUNING,
        "prune.ratio": 0.9,
        **_KNOWLEDGE_DISTILLATION,
        "cluster.k": 0,
        "quantize.mode": "int8-static",
    },
}
"""Profile name -> flat settings. Each also trains ``space.profile_epochs`` epochs; settings not
named here keep the space's fixed value or the default."""


def profile_config(name: str, space: SearchSpace) -> PipelineConfig:
    """The exact config of profile ``name`` in a study over ``space``."""
    if name not in PROFILES:
        raise SpaceError(f"unknown profile {name!r}; valid profiles: {', '.join(PROFILES)}.")
    flat = {**space.fixed_values(), "distill.epochs": space.profile_epochs, **PROFILES[name]}
    return PipelineConfig.from_flat(flat)


def profile_params(name: str, space: SearchSpace) -> dict[str, Any]:
    """The params to enqueue for profile ``name``: those ``space`` searches whose profile value
    lies inside the dimension (the sampler would reject or warn about the others; the
    ``profile`` user attr makes ``suggest`` return the exact profile config anyway)."""
    params = space.params_from_config(profile_config(name, space))
    return {
        param: value
        for param, value in params.items()
        if space.param_dimension(param).contains(value)
    }
