"""Fitting the space to the model: depth only with removable blocks, unstructured sparsity when
nothing prunes structurally, budgets sized in optimizer steps; and the named configs a study runs
first (the MCaaS profiles, then quantization alone)."""

from __future__ import annotations

import dataclasses

import pytest

from spaces import (
    MIN_STEPS,
    PROFILES,
    QUANT_ONLY,
    SIZE_BOOST,
    Choice,
    Fixed,
    FloatRange,
    IntRange,
    ModelFacts,
    SearchSpace,
    default_space,
    demo_space,
    fit_space,
    min_epochs,
    named_configs,
    profile_config,
)
from spaces._fit import fraction_removing

RESNET_FMNIST = ModelFacts(structural=True, removable_blocks=5, cuttable_stages=9, steps_per_epoch=422, epoch_seconds=64.0)
USER_DIGITS = ModelFacts(structural=True, removable_blocks=0, cuttable_stages=0, steps_per_epoch=9, epoch_seconds=0.5)


def test_a_large_dataset_keeps_the_default_budget_and_depth_stays_with_blocks() -> None:
    fitted = fit_space(default_space(), RESNET_FMNIST)
    assert fitted["distill.epochs"] == default_space()["distill.epochs"]  # 211..1266 steps already
    assert fitted["depth.fraction"] == FloatRange(0.0, 1.0)
    assert fitted["depth.cut"] == IntRange(0, 4)  # up to half of ResNet-18's 9 trailing blocks
    assert fitted.profile_epochs == 1.0


def test_a_latency_study_leaves_out_the_formats_the_teacher_runs_slower_in() -> None:
    import dataclasses

    slow = dataclasses.replace(RESNET_FMNIST, slow_modes=("fp16", "int8-dynamic"))
    assert fit_space(default_space(), slow, target="latency")["quantize.mode"] == Choice(
        ("none", "int8-static", "int8-qat")
    )
    # Only latency depends on the format's speed; a file's size does not.
    assert fit_space(default_space(), slow, target="size")["quantize.mode"] == default_space()["quantize.mode"]
    # Every format slower: fp32 alone, fixed.
    all_slow = dataclasses.replace(RESNET_FMNIST, slow_modes=("fp16", "int8-dynamic", "int8-static", "int8-qat"))
    assert fit_space(default_space(), all_slow, target="latency")["quantize.mode"] == Fixed("none")
    # Choices a space file set are kept as given.
    chosen = SearchSpace({**default_space().dimensions, "quantize.mode": Choice(("none", "fp16"))})
    assert fit_space(chosen, slow, target="latency")["quantize.mode"] == Choice(("none", "fp16"))


def test_a_latency_study_does_not_cluster_weights() -> None:
    # Clustering changes weight values, not the operators ONNX Runtime runs: no speed, only loss.
    latency = fit_space(default_space(), RESNET_FMNIST, target="latency")
    assert "cluster.k" not in latency
    assert fit_space(default_space(), RESNET_FMNIST, target="size")["cluster.k"] == default_space()["cluster.k"]
    # A space file that searches clustering keeps it.
    chosen = SearchSpace({**default_space().dimensions, "cluster.k": Choice((0, 64))})
    assert fit_space(chosen, RESNET_FMNIST, target="latency")["cluster.k"] == Choice((0, 64))
    # A study created before this rule keeps searching clustering when resumed.
    resumed = fit_space(default_space(), RESNET_FMNIST, target="latency", keep=["cluster.k", "quantize.mode"])
    assert resumed["cluster.k"] == default_space()["cluster.k"]
    assert resumed == SearchSpace({**latency.dimensions, "cluster.k": default_space()["cluster.k"]},
                                  profile_epochs=latency.profile_epochs)


def test_a_small_dataset_gets_at_least_min_steps_and_no_depth_without_blocks() -> None:
    fitted = fit_space(default_space(), USER_DIGITS)
    epochs = fitted["distill.epochs"]
    assert isinstance(epochs, FloatRange)
    assert epochs.low * USER_DIGITS.steps_per_epoch >= MIN_STEPS
    assert epochs.high > epochs.low and epochs.log
    assert "depth.fraction" not in fitted and "depth.cut" not in fitted
    assert fitted.profile_epochs == min_epochs(9) == 14.0  # 126 steps


def test_head_removal_is_searched_only_where_the_model_has_attention() -> None:
    assert "prune.heads" in default_space()
    assert "prune.heads" not in fit_space(default_space(), RESNET_FMNIST)
    vit = ModelFacts(structural=True, removable_blocks=6, cuttable_stages=0, steps_per_epoch=422,
                     epoch_seconds=600.0, attention_layers=6)
    assert fit_space(default_space(), vit)["prune.heads"] == FloatRange(0.0, 0.75, step=0.25)


def test_block_removal_stops_where_the_output_would_no_longer_depend_on_the_input() -> None:
    vit = ModelFacts(structural=True, removable_blocks=6, cuttable_stages=0, steps_per_epoch=422,
                     epoch_seconds=120.0, attention_layers=6, removable_at_once=5)
    fraction = fit_space(default_space(), vit)["depth.fraction"]
    assert fraction == FloatRange(0.0, 0.91)
    assert round(fraction.high * 6) == 5  # type: ignore[union-attr]
    assert fraction_removing(1, 2) == 0.74 and round(0.74 * 2) == 1  # not 0.75: round(1.5) is 2
    lone = dataclasses.replace(vit, removable_blocks=1, removable_at_once=0)
    assert "depth.fraction" not in fit_space(default_space(), lone)
    # Unmeasured (an older study's analysis) or every block: the default range.
    for facts in (dataclasses.replace(vit, removable_at_once=None), dataclasses.replace(vit, removable_at_once=6)):
        assert fit_space(default_space(), facts)["depth.fraction"] == default_space()["depth.fraction"]
    # A range a space file set is kept as given.
    narrow = SearchSpace({**default_space().dimensions, "depth.fraction": FloatRange(0.5, 1.0)})
    assert fit_space(narrow, vit)["depth.fraction"] == FloatRange(0.5, 1.0)


def test_the_top_of_the_budget_is_cut_to_the_training_time_a_trial_may_spend() -> None:
    slow = ModelFacts(structural=True, removable_blocks=0, cuttable_stages=0, steps_per_epoch=9, epoch_seconds=10.0)
    high = fit_space(default_space(), slow)["distill.epochs"].high  # type: ignore[union-attr]
    assert high * 10.0 <= 300.0 + 1e-9
    # Never below twice the bottom, however slow.
    slower = ModelFacts(structural=True, removable_blocks=0, cuttable_stages=0, steps_per_epoch=9, epoch_seconds=100.0)
    epochs = fit_space(default_space(), slower)["distill.epochs"]
    assert epochs.high == 2 * epochs.low  # type: ignore[union-attr]


def test_small_students_train_longer_only_where_the_teacher_s_epoch_time_cut_the_budget() -> None:
    # ResNet-18 on Fashion-MNIST: the step count sets the top (3 epochs), 64 s epochs allow 4.7.
    assert "distill.size_boost" not in fit_space(default_space(), RESNET_FMNIST)
    assert "distill.size_boost" not in fit_space(default_space(), USER_DIGITS)
    # A ViT's 120 s epoch cuts it to 2.5: a student k times cheaper trains up to min(k, 4) times that.
    vit = dataclasses.replace(RESNET_FMNIST, epoch_seconds=120.0)
    fitted = fit_space(default_space(), vit)
    assert fitted["distill.epochs"].high == 2.5  # type: ignore[union-attr]
    assert fitted["distill.size_boost"] == Fixed(SIZE_BOOST) and SIZE_BOOST > 1
    assert fitted.suggest(_Highest()).distill.size_boost == SIZE_BOOST  # type: ignore[arg-type]
    # A space file that sets it, or its own budget, is kept as given.
    off = SearchSpace({**default_space().dimensions, "distill.size_boost": Fixed(1.0)})
    assert fit_space(off, vit)["distill.size_boost"] == Fixed(1.0)
    assert "distill.size_boost" not in fit_space(demo_space(), dataclasses.replace(USER_DIGITS, epoch_seconds=100.0))
    # The profiles keep their published budgets.
    assert all(profile_config(name, fitted).distill.size_boost == 1.0 for name in PROFILES)


def test_a_latency_target_trains_small_students_longer() -> None:
    # The step count sets ResNet-18's top on Fashion-MNIST, so only the target turns it on.
    fitted = fit_space(default_space(), RESNET_FMNIST, target="latency")
    assert fitted["distill.size_boost"] == Fixed(SIZE_BOOST)
    assert fitted["distill.epochs"] == fit_space(default_space(), RESNET_FMNIST)["distill.epochs"]
    assert "distill.size_boost" not in fit_space(default_space(), RESNET_FMNIST, target="size")
    # A space file that holds it off, or sets its own budget, is kept as given; without budgets
    # (nothing fitted to the data) it is not added.
    off = SearchSpace({**default_space().dimensions, "distill.size_boost": Fixed(1.0)})
    assert fit_space(off, RESNET_FMNIST, target="latency")["distill.size_boost"] == Fixed(1.0)
    assert "distill.size_boost" not in fit_space(demo_space(), USER_DIGITS, target="latency")
    assert "distill.size_boost" not in fit_space(default_space(), RESNET_FMNIST, target="latency", budgets=False)


class _Highest:
    """A trial that answers every question with the top of its range (or the first choice)."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def suggest_float(self, name, low, high, *, log=False, step=None):  # noqa: ANN001, ANN202
        self.asked.append(name)
        return high

    def suggest_int(self, name, low, high, *, log=False, step=1):  # noqa: ANN001, ANN202
        self.asked.append(name)
        return high

    def suggest_categorical(self, name, choices):  # noqa: ANN001, ANN202
        self.asked.append(name)
        return choices[0]


def test_no_structural_pruning_means_unstructured_sparsity() -> None:
    facts = ModelFacts(structural=False, removable_blocks=0, cuttable_stages=0, steps_per_epoch=422, epoch_seconds=1.0)
    fitted = fit_space(default_space(), facts)
    assert fitted["prune.method"] == Fixed("unstructured")

    trial = _Highest()
    config = fitted.suggest(trial)  # type: ignore[arg-type]
    assert config.prune.method == "unstructured" and config.prune.ratio == 0.95
    # criterion, steps and round_to are structured-only: not asked.
    assert not {"prune.criterion", "prune.steps", "prune.round_to"} & set(trial.asked)


def test_a_space_file_budget_is_kept_as_given() -> None:
    fitted = fit_space(demo_space(), USER_DIGITS)
    assert fitted["distill.epochs"] == demo_space()["distill.epochs"]
    assert fitted.profile_epochs == 15.0


def test_named_configs_are_the_profiles_then_quantization_alone_in_the_spaces_modes() -> None:
    assert named_configs(default_space()) == [*PROFILES, "int8-dynamic only", "int8-static only", "fp16 only"]
    narrow = SearchSpace({"quantize.mode": Choice(("none", "int8-static"))})
    assert named_configs(narrow) == [*PROFILES, "int8-static only"]
    config = profile_config("int8-static only", default_space())
    assert (config.prune.ratio, config.depth.fraction, config.distill.epochs, config.cluster.k) == (0, 0, 0, 0)
    assert config.quantize.mode == "int8-static"
    assert set(QUANT_ONLY) == {"int8-dynamic only", "int8-static only", "fp16 only"}
    with pytest.raises(Exception, match="unknown profile 'x'"):
        profile_config("x", default_space())
