"""The MCaaS profiles: their configs, the params enqueued for them, profile trials in a study."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from spaces import (
    CLUSTER_ON,
    PROFILES,
    Choice,
    Fixed,
    FloatRange,
    SearchSpace,
    SpaceError,
    default_space,
    profile_config,
    profile_params,
    rebuilt_config,
    trial_config,
)
from stages.config import PipelineConfig

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Profile values outside these dimensions: ratio 0.3, criterion l1, mode int8-static, alpha 0.7.
NARROW = SearchSpace(
    {
        "prune.ratio": FloatRange(0.5, 0.9),
        "prune.criterion": Choice(("l2", "lamp")),
        "prune.method": Choice(("structured", "unstructured")),
        "distill.epochs": FloatRange(5, 30, step=5),
        "distill.alpha": FloatRange(0.8, 1.0),
        "distill.temperature": FloatRange(1, 20, log=True),
        "quantize.mode": Choice(("none", "fp16")),
        "quantize.format": Fixed("qoperator"),
        "export.opset": Fixed(17),
    },
    profile_epochs=15,
)


def _enqueue_and_run(
    space: SearchSpace, seed: int = 0
) -> list[tuple[optuna.trial.FrozenTrial, PipelineConfig]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for name in PROFILES:
        study.enqueue_trial(profile_params(name, space))
    named = list(PROFILES)  # the enqueued trials run first, in order
    configs: dict[int, PipelineConfig] = {}

    def objective(trial: optuna.Trial) -> float:
        profile = named[trial.number] if trial.number < len(named) else None
        configs[trial.number] = trial_config(space, trial, profile=profile)
        return 0.0

    study.optimize(objective, n_trials=len(PROFILES) + 2)
    return [(t, configs[t.number]) for t in study.trials]


def test_the_three_mcaas_profiles() -> None:
    assert list(PROFILES) == ["high-accuracy", "balanced", "max-compression"]
    configs = {name: profile_config(name, default_space()) for name in PROFILES}
    assert [c.prune.ratio for c in configs.values()] == [0.3, 0.5, 0.9]
    for config in configs.values():
        assert (config.prune.criterion, config.prune.method) == ("l1", "structured")
        assert config.quantize.mode == "int8-static"
        assert config.cluster.k == 0
        assert config.distill.epochs == 1.0
    assert configs["high-accuracy"].distill.alpha == 0.0
    for name in ("balanced", "max-compression"):
        assert (configs[name].distill.alpha, configs[name].distill.temperature) == (0.7, 4.0)


def test_profiles_train_for_the_space_budget() -> None:
    space = dataclasses.replace(default_space(), profile_epochs=15)
    assert {profile_config(name, space).distill.epochs for name in PROFILES} == {15.0}


def test_profiles_train_their_epochs_whatever_size_boost_the_search_has() -> None:
    space = SearchSpace({**default_space().dimensions, "distill.size_boost": Fixed(8.0)})
    assert {profile_config(name, space).distill.size_boost for name in PROFILES} == {1.0}
    assert space.fixed_values()["distill.size_boost"] == 8.0  # the search's trials get it


def test_profile_keeps_fixed_settings_it_does_not_name_but_wins_over_the_rest() -> None:
    config = profile_config("balanced", NARROW)
    assert (config.quantize.format, config.export.opset) == ("qoperator", 17)
    assert config.quantize.mode == "int8-static"  # not in NARROW's choices: the profile wins
    assert config.distill.epochs == 15.0


def test_unknown_profile_lists_the_names() -> None:
    with pytest.raises(
        SpaceError,
        match="unknown profile 'fast'; valid profiles: high-accuracy, balanced, max-compression",
    ):
        profile_config("fast", default_space())
    with pytest.raises(SpaceError, match="unknown profile"):
        profile_params("fast", default_space())


@pytest.mark.parametrize("name", list(PROFILES))
def test_profile_params_in_the_default_space_pin_the_whole_profile(name: str) -> None:
    space = default_space()
    params = profile_params(name, space)
    assert all(space.param_dimension(p).contains(v) for p, v in params.items())
    assert params[CLUSTER_ON] is False and "cluster.k" not in params
    assert ("distill.temperature" in params) == (PROFILES[name]["distill.alpha"] > 0)
    # What Ray Tune's points_to_evaluate would give: no user_attrs needed to get the profile back.
    assert space.config_from_params(params) == profile_config(name, space)


def test_profile_params_leave_out_values_outside_the_dimensions() -> None:
    params = profile_params("high-accuracy", NARROW)
    assert "prune.ratio" not in params  # 0.3 < 0.5
    assert "prune.criterion" not in params  # l1 not in (l2, lamp)
    assert "quantize.mode" not in params  # int8-static not in (none, fp16)
    assert params["prune.method"] == "structured"
    assert params["distill.epochs"] == 15.0
    assert "distill.alpha" not in profile_params("balanced", NARROW)  # 0.7 < 0.8
    assert not {"quantize.format", "export.opset"} & set(params)  # fixed: not parameters


@pytest.mark.filterwarnings("error")  # an out-of-range enqueued value would make Optuna warn
@pytest.mark.parametrize("space", [default_space(), NARROW], ids=["default", "narrow"])
def test_enqueued_profiles_run_exactly_and_can_be_rebuilt(space: SearchSpace) -> None:
    trials = _enqueue_and_run(space)
    for (trial, config), name in zip(trials[: len(PROFILES)], PROFILES):
        assert config == profile_config(name, space)
        assert rebuilt_config(space, trial.params, profile=name) == config
        for param, value in profile_params(name, space).items():
            assert trial.params[param] == value
    for trial, config in trials[len(PROFILES) :]:
        assert rebuilt_config(space, trial.params, profile=None) == config
        assert space.config_from_params(trial.params) == config


def test_profile_trial_params_alone_give_a_config_inside_the_space() -> None:
    trial, config = _enqueue_and_run(NARROW)[0]
    rebuilt = NARROW.config_from_params(trial.params)
    assert config.prune.ratio == 0.3 and 0.5 <= rebuilt.prune.ratio <= 0.9


def test_trial_config_rejects_an_unknown_profile() -> None:
    study = optuna.create_study()
    with pytest.raises(SpaceError, match="unknown profile 'nope'"):
        study.optimize(
            lambda t: float(trial_config(default_space(), t, profile="nope").prune.ratio), n_trials=1, catch=()
        )


def test_suggest_samples_whatever_profile_a_trial_runs() -> None:
    """``suggest`` knows nothing of profiles: a profile trial's params may lie elsewhere than its
    config (NARROW cannot hold high-accuracy's ratio 0.3), and only trial_config swaps it in."""
    trial, config = _enqueue_and_run(NARROW)[0]
    replayed = optuna.create_study()
    replayed.enqueue_trial(trial.params)
    sampled = replayed.ask()
    assert NARROW.suggest(sampled) == NARROW.config_from_params(trial.params) != config
