"""Named configs a study runs before its sampler: the three fixed profiles of the MCaaS thesis,
then quantization-only configs (no pruning, no training: seconds each), so every study has a
feasible point whenever quantization alone meets the bound.

A study enqueues them as its first trials (``profile_params``), naming each trial's profile in its
record, so its results show the profiles beside what the search finds. ``trial_config`` and
``rebuilt_config`` give such a trial its profile's exact config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spaces._dimensions import SpaceError, TrialLike
from spaces._space import SearchSpace
from stages.config import PipelineConfig
from stages.quant_modes import QUANT_MODES

# MCaaS pruned with the L1 norm of whole filters, layer by layer (Li et al.'s filter pruning);
# per-layer (uniform) is also the scope that cannot empty a layer at the 90 % profile.
_L1_FILTER_PRUNING: dict[str, Any] = {
    "prune.criterion": "l1",
    "prune.method": "structured",
    "prune.scope": "uniform",
    "prune.steps": 1,
    "prune.round_to": 1,
    # As published: the profile's epochs whatever the student's size (a space file's
    # distill.size_boost is the search's, not the profiles').
    "distill.size_boost": 1.0,
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


# Quantization alone: the exported teacher, quantized by each mode that needs no training.
QUANT_ONLY: dict[str, dict[str, Any]] = {
    f"{mode} only": {
        "depth.fraction": 0.0,
        "depth.cut": 0,
        "prune.ratio": 0.0,
        "distill.epochs": 0.0,
        "cluster.k": 0,
        "quantize.mode": mode,
    }
    for mode, q in sorted(QUANT_MODES.items(), key=lambda item: item[1].bytes_per_weight)
    if mode != "none" and q.searched_by_default and not q.fake_quant_training
}
"""Name -> flat settings of each quantization-only config."""


def is_mcaas_profile(name: str | None) -> bool:
    """Whether a trial's named config is one of the MCaaS profiles (not quantization alone)."""
    return name in PROFILES


def named_configs(space: SearchSpace) -> list[str]:
    """The named configs a study over ``space`` runs first, in order: the MCaaS profiles, then
    the quantization-only configs whose mode ``space`` can choose."""
    modes = space.get("quantize.mode")
    allowed = set(modes.extremes()) if modes is not None else {PipelineConfig().quantize.mode}
    return [*PROFILES, *(name for name, flat in QUANT_ONLY.items() if flat["quantize.mode"] in allowed)]


def profile_config(name: str, space: SearchSpace) -> PipelineConfig:
    """The exact config of profile (or quantization-only config) ``name`` in a study over ``space``."""
    if name in QUANT_ONLY:
        return PipelineConfig.from_flat({**space.fixed_values(), **QUANT_ONLY[name]})
    if name not in PROFILES:
        known = [*PROFILES, *QUANT_ONLY]
        raise SpaceError(f"unknown profile {name!r}; valid profiles: {', '.join(known)}.")
    fixed = space.fixed_values()
    flat = {**fixed, "distill.epochs": space.profile_epochs, **PROFILES[name]}
    if "prune.method" in fixed:  # a model nothing can be pruned structurally in (see fit_space)
        flat["prune.method"] = fixed["prune.method"]
    return PipelineConfig.from_flat(flat)


def profile_params(name: str, space: SearchSpace) -> dict[str, Any]:
    """The params to enqueue for profile ``name``: those ``space`` searches whose profile value
    lies inside the dimension (the sampler would reject or warn about the others;
    ``trial_config`` gives the trial the exact profile config anyway)."""
    params = space.params_from_config(profile_config(name, space))
    return {
        param: value
        for param, value in params.items()
        if space.param_dimension(param).contains(value)
    }


def trial_config(space: SearchSpace, trial: TrialLike, *, profile: str | None) -> PipelineConfig:
    """Ask ``trial`` for every active setting of ``space`` (so it records its params) and return
    its config: named config ``profile``'s exact one when it runs one, whatever the sampler chose
    for parameters the profile could not pin (see ``profile_params``), else the sampled one."""
    sampled = space.suggest(trial)
    return sampled if profile is None else profile_config(profile, space)


def rebuilt_config(space: SearchSpace, params: Mapping[str, Any], *, profile: str | None) -> PipelineConfig:
    """A finished trial's config from its ``params``: named config ``profile``'s when it ran one
    (its params may be partial), else ``space.config_from_params(params)``."""
    return space.config_from_params(params) if profile is None else profile_config(profile, space)
