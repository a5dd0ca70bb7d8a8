"""Dimensions, SearchSpace validation, and the define-by-run walk run by real Optuna studies."""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna
import pytest

from spaces import (
    CLUSTER_ON,
    Choice,
    Fixed,
    FloatRange,
    IntRange,
    SearchSpace,
    SpaceError,
    _space,
    default_space,
)
from stages.config import PRUNE_METHODS, PipelineConfig, valid_keys
from stages.errors import ConfigError

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _expected_params(space: SearchSpace, config: PipelineConfig) -> set[str]:
    """The params the conditional rules call for, restated from the spec apart from the walk."""
    f = config.to_flat()
    pruning = f["prune.ratio"] > 0
    structured = pruning and f["prune.method"] == "structured"
    distilling = f["distill.epochs"] > 0
    active = {
        "prune.method": pruning,
        "prune.scope": pruning,
        "prune.criterion": structured,
        "prune.steps": structured,
        "prune.round_to": structured,
        "distill.alpha": distilling,
        "distill.lr": distilling,
        "distill.temperature": distilling and f["distill.alpha"] > 0,
    }
    names = set()
    for key, dim in space.items():
        if isinstance(dim, Fixed) or not active.get(key, True):
            continue
        if key == "cluster.k" and isinstance(dim, IntRange):
            names.add(CLUSTER_ON)
            if f["cluster.k"] == 0:
                continue
        names.add(key)
    return names


def _flat(config: PipelineConfig, *keys: str) -> tuple[Any, ...]:
    """The values of ``keys`` (flat setting keys) in ``config``."""
    flat = config.to_flat()
    return tuple(flat[key] for key in keys)


def _run_study(
    space: SearchSpace, sampler: optuna.samplers.BaseSampler, n_trials: int
) -> list[tuple[Any, PipelineConfig]]:
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    configs: dict[int, PipelineConfig] = {}

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        config = space.suggest(trial)
        configs[trial.number] = config
        return config.prune.ratio, -config.distill.epochs

    study.optimize(objective, n_trials=n_trials)
    return [(trial, configs[trial.number]) for trial in study.trials]


def _check_trial(space: SearchSpace, params: dict[str, Any], config: PipelineConfig) -> None:
    assert isinstance(config, PipelineConfig)
    assert set(params) == _expected_params(space, config)
    for name, value in params.items():
        assert space.param_dimension(name).contains(value), (name, value)
    for key, value in space.fixed_values().items():
        assert config.to_flat()[key] == value
    if CLUSTER_ON in params:
        assert (config.cluster.k != 0) == params[CLUSTER_ON]
    assert space.config_from_params(params) == config
    assert space.params_from_config(config) == params


# A space whose conditions fire often: atoms at 0 for ratio, epochs and alpha.
ATOMS = SearchSpace(
    {
        "prune.ratio": Choice((0.0, 0.5)),
        "prune.method": Choice(PRUNE_METHODS),
        "prune.criterion": Choice(("l1", "lamp")),
        "prune.scope": Choice(("global", "uniform")),
        "prune.steps": IntRange(1, 3),
        "prune.round_to": Fixed(8),
        "distill.epochs": Choice((0.0, 2.0)),
        "distill.alpha": Choice((0.0, 0.5, 1.0)),
        "distill.temperature": FloatRange(1, 8),
        "distill.lr": FloatRange(0.01, 0.1, log=True),
        "cluster.k": IntRange(16, 64, step=16),
        "quantize.mode": Choice(("none", "int8-static")),
        "export.opset": Fixed(17),
    }
)


class TestDimensions:
    @pytest.mark.parametrize(
        ("make", "words"),
        [
            (lambda: FloatRange(1.0, 0.0), "low <= high"),
            (lambda: FloatRange(0.0, 1.0, log=True), "low > 0"),
            (lambda: FloatRange(0.1, 1.0, log=True, step=0.1), "not both"),
            (lambda: FloatRange(0.0, 1.0, step=0.3), "multiple of step"),
            (lambda: FloatRange(0.0, 1.0, step=0.0), "step must be"),
            (lambda: FloatRange(0.0, float("nan")), "finite number"),
            (lambda: FloatRange(True, 2.0), "finite number"),
            (lambda: FloatRange(0.0, 1.0, log="yes"), "log must be"),  # type: ignore[arg-type]
            (lambda: IntRange(5, 1), "low <= high"),
            (lambda: IntRange(1.5, 3), "integer"),  # type: ignore[arg-type]
            (lambda: IntRange(0, 10, log=True), "low >= 1"),
            (lambda: IntRange(1, 10, step=2), "multiple of step"),
            (lambda: IntRange(2, 10, log=True, step=2), "no step"),
            (lambda: IntRange(1, 10, step=0), "step must be"),
            (lambda: Choice(()), "at least one"),
            (lambda: Choice(("l1", "l1")), "repeat"),
            (lambda: Choice("l1"), "list of values"),  # type: ignore[arg-type]
            (lambda: Choice(([1],)), "string, number or boolean"),  # type: ignore[arg-type]
            (lambda: Fixed([1]), "string, number or boolean"),  # type: ignore[arg-type]
        ],
    )
    def test_bad_dimension_is_one_line_space_error(self, make: Any, words: str) -> None:
        with pytest.raises(SpaceError, match=words) as info:
            make()
        assert "\n" not in str(info.value)

    def test_space_error_is_a_config_error_so_the_cli_reports_it(self) -> None:
        assert issubclass(SpaceError, ConfigError)

    def test_values_are_normalised_and_frozen(self) -> None:
        r = FloatRange(1, 20, log=True)
        assert (r.low, r.high) == (1.0, 20.0) and isinstance(r.low, float)
        assert Choice(["a", "b"]).choices == ("a", "b")  # type: ignore[arg-type]
        with pytest.raises(dataclasses.FrozenInstanceError):
            r.low = 2.0  # type: ignore[misc]

    def test_contains(self) -> None:
        assert FloatRange(0.5, 3.0, step=0.5).contains(1.5)
        assert not FloatRange(0.5, 3.0, step=0.5).contains(1.2)
        assert not FloatRange(0.0, 1.0).contains(1.5)
        assert IntRange(16, 64, step=16).contains(48) and not IntRange(16, 64, step=16).contains(40)
        assert not IntRange(1, 5).contains(float("inf"))
        # True == 1 in Python, but a boolean is not an integer choice.
        assert Choice((1, 8)).contains(8) and not Choice((1, 8)).contains(True)
        assert Choice((False, True)).contains(False) and not Choice((False, True)).contains(0)
        assert Fixed("int8-static").contains("int8-static") and not Fixed("none").contains("fp16")

    def test_describe(self) -> None:
        assert FloatRange(0.0, 0.95).describe() == "0.0 .. 0.95"
        assert FloatRange(0.5, 3.0, step=0.5).describe() == "0.5 .. 3.0 step 0.5"
        assert IntRange(16, 256, log=True).describe() == "16 .. 256 log"
        assert Choice(("l1", "l2")).describe() == "l1 | l2"
        assert Fixed("int8-static").describe() == "= int8-static"


class TestSearchSpaceValidation:
    @pytest.mark.parametrize(
        ("dims", "words"),
        [
            ({"prune.ratoi": FloatRange(0, 0.5)}, r"unknown setting 'prune.ratoi'.*prune\.ratio"),
            ({"prune.ratio": IntRange(0, 1)}, "prune.ratio holds a number: it takes FloatRange"),
            ({"prune.steps": FloatRange(1, 2)}, "prune.steps holds an integer"),
            ({"prune.criterion": FloatRange(1, 2)}, "prune.criterion holds a string"),
            ({"prune.ratio": FloatRange(0, 0.99)}, r"prune.ratio .*\[0.0, 0.95\]"),
            ({"prune.ratio": Fixed(-0.1)}, "prune.ratio"),
            ({"prune.criterion": Choice(("l1", "l7"))}, "prune.criterion.*l7"),
            (
                {"prune.round_to": Choice((1, 8.0))},
                "prune.round_to holds an integer, but .* includes 8.0",
            ),
            ({"prune.method": Fixed(1)}, "prune.method holds a string"),
            ({"distill.alpha": Fixed(True)}, "distill.alpha holds a number"),
            ({"cluster.k": IntRange(0, 64)}, "cluster.k as a range"),
            ({"cluster.k": IntRange(16, 512)}, "cluster.k"),
            ({"distill.lr": "0.1"}, "expected FloatRange, IntRange, Choice or Fixed"),
            (
                {"quantize.mode": Choice(("none", "int8-qat")), "distill.epochs": FloatRange(0, 2)},
                "int8-qat needs distillation",
            ),
            (
                {"quantize.mode": Fixed("int8-qat"), "distill.epochs": Choice((0.0, 1.0))},
                "int8-qat needs distillation",
            ),
        ],
    )
    def test_bad_space_is_one_line_space_error(self, dims: dict[str, Any], words: str) -> None:
        with pytest.raises(SpaceError, match=words) as info:
            SearchSpace(dims)
        assert "\n" not in str(info.value)

    def test_qat_is_fine_when_distillation_always_runs(self) -> None:
        fixed = SearchSpace({"quantize.mode": Fixed("int8-qat")})  # distill.epochs: default 1.0
        assert _flat(fixed.config_from_params({}), "quantize.mode", "distill.epochs") == ("int8-qat", 1.0)
        chosen = SearchSpace(
            {"quantize.mode": Choice(("none", "int8-qat")), "distill.epochs": FloatRange(0.5, 2)}
        )
        config = chosen.config_from_params({"quantize.mode": "int8-qat", "distill.epochs": 0.5})
        assert _flat(config, "quantize.mode", "distill.epochs") == ("int8-qat", 0.5)
        no_qat = SearchSpace({"quantize.mode": Choice(("none", "fp16")), "distill.epochs": Fixed(0.0)})
        config = no_qat.config_from_params({"quantize.mode": "fp16"})
        assert _flat(config, "quantize.mode", "distill.epochs") == ("fp16", 0.0)

    @pytest.mark.parametrize("epochs", [0, -1.0, 5000.0, "2"])
    def test_bad_profile_epochs(self, epochs: Any) -> None:
        with pytest.raises(SpaceError, match="profile_epochs"):
            SearchSpace({}, profile_epochs=epochs)

    def test_not_a_mapping(self) -> None:
        with pytest.raises(SpaceError, match="maps setting keys"):
            SearchSpace([("prune.ratio", FloatRange(0, 1))])  # type: ignore[arg-type]


class TestSearchSpace:
    def test_default_space_matches_the_design_table(self) -> None:
        space = default_space()
        assert space["prune.ratio"] == FloatRange(0.0, 0.95)
        assert space["prune.criterion"] == Choice(
            ("l1", "l2", "random", "bn-scale", "lamp", "taylor", "fpgm")
        )
        assert "prune.method" not in space  # unstructured helps no target: only gzip bytes
        assert space["prune.scope"] == Choice(("global", "uniform"))
        assert space["prune.steps"] == IntRange(1, 5)
        assert space["prune.round_to"] == Choice((1, 8))
        assert space["distill.epochs"] == FloatRange(0.5, 3.0, step=0.5)
        assert space["distill.temperature"] == FloatRange(1, 20, log=True)
        assert space["distill.alpha"] == FloatRange(0, 1, step=0.1)
        assert space["distill.lr"] == FloatRange(1e-3, 0.1, log=True)
        assert space["cluster.k"] == IntRange(16, 256, log=True)
        assert space["quantize.mode"] == Choice(
            ("none", "fp16", "int8-dynamic", "int8-static", "int8-qat")
        )
        assert not {"quantize.format", "quantize.calibration_samples", "export.opset"} & set(space)
        assert space.profile_epochs == 1.0

    def test_default_space_derived_from_the_config_is_the_former_hand_written_one(self) -> None:
        hand_written = SearchSpace(  # spaces/_space.py before the ranges moved beside defaults
            {
                "depth.fraction": FloatRange(0.0, 1.0),  # added with the depth stage
                "depth.cut": IntRange(0, 3),
                "prune.ratio": FloatRange(0.0, 0.95),
                "prune.criterion": Choice(("l1", "l2", "random", "bn-scale", "lamp", "taylor", "fpgm")),
                "prune.scope": Choice(("global", "uniform")),
                "prune.steps": IntRange(1, 5),
                "prune.round_to": Choice((1, 8)),
                "prune.heads": FloatRange(0.0, 0.75, step=0.25),  # added with head removal
                "distill.epochs": FloatRange(0.5, 3.0, step=0.5),
                "distill.temperature": FloatRange(1.0, 20.0, log=True),
                "distill.alpha": FloatRange(0.0, 1.0, step=0.1),
                "distill.lr": FloatRange(1e-3, 0.1, log=True),
                "cluster.k": IntRange(16, 256, log=True),
                "quantize.mode": Choice(("none", "fp16", "int8-dynamic", "int8-static", "int8-qat")),
            }
        )
        space = default_space()
        assert space == hand_written
        assert list(space) == list(hand_written)  # the order trials are asked in
        assert space.describe() == hand_written.describe()
        assert [type(space[k]) for k in space] == [type(hand_written[k]) for k in hand_written]

    def test_walk_order_and_conditions_are_the_former_hand_written_ones(self) -> None:
        head = (
            "depth.fraction", "depth.cut", "prune.ratio", "prune.method", "prune.criterion", "prune.scope", "prune.steps",
            "prune.round_to", "prune.heads", "distill.epochs", "distill.alpha", "distill.temperature",
            "distill.lr",
        )
        assert _space._ORDER == head + tuple(k for k in valid_keys() if k not in head)
        assert {k: c.text for k, c in _space._CONDITIONS.items()} == {
            "prune.method": "prune.ratio > 0",
            "prune.criterion": "prune.ratio > 0, structured",
            "prune.scope": "prune.ratio > 0",
            "prune.steps": "prune.ratio > 0, structured",
            "prune.round_to": "prune.ratio > 0, structured",
            "distill.alpha": "distill.epochs > 0",
            "distill.temperature": "distill.epochs > 0, distill.alpha > 0",
            "distill.lr": "distill.epochs > 0",
            "distill.features": "distill.epochs > 0",
            "distill.size_boost": "distill.epochs > 0",
        }

    def test_space_is_a_read_only_mapping_with_value_equality(self) -> None:
        a, b = default_space(), default_space()
        assert a == b and hash(a) == hash(b) and len(a) == 14
        assert a != dataclasses.replace(a, profile_epochs=2.0)
        with pytest.raises(TypeError):
            a.dimensions["prune.ratio"] = FloatRange(0, 0.5)  # type: ignore[index]
        with pytest.raises(dataclasses.FrozenInstanceError):
            a.profile_epochs = 3.0  # type: ignore[misc]
        # Built in any order, kept in the order the walk asks (parents first).
        shuffled = SearchSpace(
            {"distill.temperature": FloatRange(1, 2), "distill.alpha": FloatRange(0, 1)}
        )
        assert list(shuffled) == ["distill.alpha", "distill.temperature"]

    def test_describe_rows(self) -> None:
        rows = dict(default_space().describe())
        assert rows["prune.ratio"] == "0.0 .. 0.95"
        assert rows["prune.criterion"].startswith("l1 | l2 | random")
        assert (
            rows["distill.temperature"]
            == "1.0 .. 20.0 log  (if distill.epochs > 0, distill.alpha > 0)"
        )
        assert rows["cluster.k"] == "off | 16 .. 256 log"
        fixed = SearchSpace({"quantize.mode": Fixed("int8-static"), "prune.criterion": Fixed("l1")})
        assert fixed.describe() == [("prune.criterion", "= l1"), ("quantize.mode", "= int8-static")]

    def test_duck_typed_trial_is_asked_parents_first_and_only_what_matters(self) -> None:
        class LowestTrial:
            """No Optuna: lowest value of every range, first choice."""

            def __init__(self) -> None:
                self.asked: list[str] = []

            def suggest_float(
                self, name: str, low: float, high: float, *, step: Any = None, log: bool = False
            ) -> float:
                self.asked.append(name)
                return low

            def suggest_int(
                self, name: str, low: int, high: int, *, step: int = 1, log: bool = False
            ) -> int:
                self.asked.append(name)
                return low

            def suggest_categorical(self, name: str, choices: Any) -> Any:
                self.asked.append(name)
                return choices[0]

        trial = LowestTrial()
        config = default_space().suggest(trial)  # type: ignore[arg-type]
        # ratio 0: no pruning settings; alpha 0: no temperature; cluster.on False: no k.
        assert trial.asked == [
            "depth.fraction",
            "depth.cut",
            "prune.ratio",
            "prune.heads",
            "distill.epochs",
            "distill.alpha",
            "distill.lr",
            CLUSTER_ON,
            "quantize.mode",
        ]
        assert config.prune.ratio == 0.0 and config.distill.alpha == 0.0 and config.cluster.k == 0
        assert config.distill.epochs == 0.5 and config.distill.lr == pytest.approx(1e-3)

    @pytest.mark.filterwarnings("error")
    @pytest.mark.parametrize("space", [default_space(), ATOMS], ids=["default", "atoms"])
    def test_random_search_gives_valid_configs_that_obey_the_conditions(
        self, space: SearchSpace
    ) -> None:
        trials = _run_study(space, optuna.samplers.RandomSampler(seed=1), 150)
        for trial, config in trials:
            _check_trial(space, trial.params, config)

    @pytest.mark.filterwarnings("error")
    def test_conditions_fire_both_ways(self) -> None:
        trials = _run_study(ATOMS, optuna.samplers.RandomSampler(seed=2), 150)
        seen = {
            "alpha0": 0,
            "alpha>0": 0,
            "no_kd": 0,
            "no_prune": 0,
            "unstructured": 0,
            "cluster": 0,
        }
        for trial, config in trials:
            p = trial.params
            if config.distill.epochs > 0 and config.distill.alpha == 0:
                assert "distill.temperature" not in p
                seen["alpha0"] += 1
            if config.distill.epochs > 0 and config.distill.alpha > 0:
                assert p["distill.temperature"] == config.distill.temperature
                seen["alpha>0"] += 1
            if config.distill.epochs == 0:
                assert not {"distill.alpha", "distill.temperature", "distill.lr"} & set(p)
                assert config.distill == dataclasses.replace(PipelineConfig().distill, epochs=0.0)
                seen["no_kd"] += 1
            if config.prune.ratio == 0:
                assert not any(k.startswith("prune.") and k != "prune.ratio" for k in p)
                seen["no_prune"] += 1
            if config.prune.ratio > 0 and config.prune.method == "unstructured":
                assert "prune.scope" in p and not {"prune.criterion", "prune.steps"} & set(p)
                seen["unstructured"] += 1
            if config.cluster.k:
                assert config.cluster.k in (16, 32, 48, 64)
                seen["cluster"] += 1
            assert (
                config.prune.round_to == 8 and config.export.opset == 17
            )  # fixed, whatever the branch
        assert all(count > 0 for count in seen.values()), seen

    @pytest.mark.filterwarnings("error")
    def test_multi_objective_tpe_runs_the_conditional_space_without_warnings(self) -> None:
        sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=8)
        for trial, config in _run_study(default_space(), sampler, 24):
            _check_trial(default_space(), trial.params, config)

    def test_config_from_params_rejects_params_of_another_space(self) -> None:
        space = default_space()
        trial = _run_study(space, optuna.samplers.RandomSampler(seed=3), 1)[0][0]
        params = dict(trial.params)
        with pytest.raises(SpaceError, match="has no parameter 'prune.ratio'"):
            space.config_from_params({k: v for k, v in params.items() if k != "prune.ratio"})
        with pytest.raises(SpaceError, match="does not search 'export.opset'"):
            space.config_from_params({**params, "export.opset": 17})
        narrowed = SearchSpace({"prune.ratio": FloatRange(0.0, 0.5)})
        with pytest.raises(SpaceError, match="does not search"):
            narrowed.config_from_params(params)

    def test_config_from_params_applies_fixed_values_and_defaults(self) -> None:
        space = SearchSpace(
            {
                "prune.ratio": FloatRange(0, 0.9),
                "quantize.mode": Fixed("fp16"),
                "cluster.k": IntRange(16, 64),
            }
        )
        config = space.config_from_params({"prune.ratio": 0.0, CLUSTER_ON: False})
        assert config == PipelineConfig.from_flat({"quantize.mode": "fp16"})
        config = space.config_from_params({"prune.ratio": 0.4, CLUSTER_ON: True, "cluster.k": 32})
        assert (config.prune.ratio, config.cluster.k, config.prune.criterion) == (0.4, 32, "l2")

    def test_param_dimension(self) -> None:
        space = default_space()
        assert space.param_dimension(CLUSTER_ON) == Choice((False, True))
        assert space.param_dimension("prune.ratio") == FloatRange(0, 0.95)
        with pytest.raises(SpaceError, match="not a parameter"):
            space.param_dimension("export.opset")

    def test_cluster_k_as_choices_or_fixed_needs_no_switch(self) -> None:
        choices = SearchSpace({"cluster.k": Choice((0, 32))})
        assert choices.config_from_params({"cluster.k": 0}).cluster.k == 0
        assert choices.params_from_config(PipelineConfig.from_flat({"cluster.k": 32})) == {
            "cluster.k": 32
        }
        fixed = SearchSpace({"cluster.k": Fixed(64)})
        assert fixed.config_from_params({}).cluster.k == 64


def test_space_survives_pickling_for_worker_processes() -> None:
    import pickle

    space = default_space()
    assert pickle.loads(pickle.dumps(space)) == space
