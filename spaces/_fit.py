"""Fitting a search space to the model and data it will search (what the pre-flight analysis
found), and training budgets that mean the same on every dataset.

A budget counts epochs in the config (what a user reads and sets) but is sized in optimizer
steps: one epoch of 1,077 digits images is 9 steps of 128, one of 54,000 Fashion-MNIST images is
422. The default distillation range spans ``MIN_STEPS``..``MAX_STEPS`` steps (at least the
default 0.5..3 epochs), cut to ``MAX_TRIAL_TRAINING_S`` seconds of training at the measured
epoch time; the MCaaS profiles train ``profile_epochs`` epochs but never fewer than
``MIN_STEPS`` steps.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

from spaces._dimensions import Choice, Fixed, FloatRange, IntRange
from spaces._space import SearchSpace, default_space

# Fewer optimizer steps do not recover a pruned model (measured: a concat/depthwise model on
# digits at 9 steps, one epoch, reached 27.5 %; at 120 steps 85.0 %; a 50 % pruned demo CNN came
# within 3 points of its teacher in 135 steps, and was left near 20 % by 9).
MIN_STEPS = 120
# The most a default trial trains, in steps, where time allows.
MAX_STEPS = 1200
# Training time one default trial may spend at most (the upper end of the range is cut to it,
# never below the lower end).
MAX_TRIAL_TRAINING_S = 300.0
# Where that cut the range (a slow teacher epoch), and for a latency target, ``distill.size_boost``:
# a student with k times fewer MACs trains up to min(k, 4) times the epochs, in about the time the
# cut allows, since its epoch costs about its own passes. Measured on ViT-tiny / Fashion-MNIST
# (range 0.5-2.6 epochs), 12x smaller at 1 epoch: 6.3 pt lost; boosted to 4: 1.5 pt. Latency
# students are the smallest a search makes (ResNet-18 / Fashion-MNIST: 1-3 M MACs of the
# teacher's 33 M, epochs of about 10 s on cached teacher logits), and its near misses at 10-15x
# lost 1-6 points within 2-10 epochs (BENCHMARKS.md, v2 and v3), so there they train longer too.
SIZE_BOOST = 4.0


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the space is fitted to (see ``search.workloads.analysis``)."""

    structural: bool  # torch-pruning can remove channels of some layer
    removable_blocks: int  # blocks that can be replaced by the identity
    cuttable_stages: int  # trailing stages that can be cut (a new classifier reads what is left)
    steps_per_epoch: int  # optimizer steps in one epoch of the training split
    epoch_seconds: float  # measured time of one training epoch of the teacher
    attention_layers: int = 0  # attention layers whose whole heads can be removed
    slow_modes: tuple[str, ...] = ()  # quantize.mode values whose teacher file runs slower than fp32
    # Removable blocks that can go together (a ViT keeps an encoder layer); None: all of them.
    removable_at_once: int | None = None


def min_epochs(steps_per_epoch: int) -> float:
    """Epochs that make at least ``MIN_STEPS`` optimizer steps (whole epochs once above one)."""
    epochs = MIN_STEPS / max(1, steps_per_epoch)
    return float(math.ceil(epochs)) if epochs > 1 else 0.5 * math.ceil(2 * epochs)


def distill_budget(facts: ModelFacts) -> tuple[FloatRange, bool]:
    """The distillation budget to search, in epochs: ``MIN_STEPS``..``MAX_STEPS`` optimizer
    steps (at least the default 0.5..3 epochs), the top cut to ``MAX_TRIAL_TRAINING_S``; and
    whether that cut, the teacher's epoch time rather than the step count, set the top."""
    default = default_space()["distill.epochs"]
    assert isinstance(default, FloatRange)
    steps = max(1, facts.steps_per_epoch)
    low = max(default.low, min_epochs(steps))
    high = max(default.high, _round(MAX_STEPS / steps))
    timed = _round(MAX_TRIAL_TRAINING_S / facts.epoch_seconds) if facts.epoch_seconds > 0 else high
    top = max(min(high, timed), 2 * low)
    budget = default if (low, top) == (default.low, default.high) else FloatRange(low, top, log=True)
    return budget, timed < high


def fraction_removing(count: int, blocks: int) -> float:
    """The largest ``depth.fraction``, in hundredths, that removes at most ``count`` of ``blocks``
    (the depth stage removes ``round(fraction * blocks)``)."""
    return math.floor(100 * (count + 0.49) / blocks) / 100


def _round(epochs: float) -> float:
    """Two significant figures: budgets need no more."""
    if epochs <= 0:
        return 0.0
    digits = 1 - int(math.floor(math.log10(epochs)))
    return round(epochs, digits)


def fit_space(
    space: SearchSpace,
    facts: ModelFacts,
    *,
    budgets: bool = True,
    target: str | None = None,
    keep: Iterable[str] = (),
) -> SearchSpace:
    """``space`` fitted to the model: no depth dimensions without removable blocks or stages to
    cut (cuts up to half the trailing stages, and block removal only as far as the output still
    depends on the input), no head removal without attention, unstructured
    sparsity where nothing can be pruned structurally, for a ``"latency"`` target no number format
    the teacher runs slower in than in fp32 on this machine and no weight clustering, and (with
    ``budgets``) the default distillation range and profile budget sized in optimizer steps,
    with ``distill.size_boost`` held at ``SIZE_BOOST`` where the teacher's epoch time cut the
    range or the target is ``"latency"`` (ranges and choices a space file set are kept as given).

    ``keep`` names settings that stay searched as ``space`` has them even where a rule would
    leave them out: a resumed study passes what it searched when it was created, so its later
    trials are asked what its earlier ones were, whatever rule was added since."""
    dims = dict(space.dimensions)
    if target == "latency" and dims.get("quantize.mode") == default_space()["quantize.mode"]:
        dims["quantize.mode"] = _without(dims["quantize.mode"], facts.slow_modes)
    if target == "latency" and dims.get("cluster.k") == default_space()["cluster.k"]:
        # Clustering shares weight values; ONNX Runtime runs the same operators on the same
        # shapes, so it costs accuracy (it follows distillation, nothing recovers it) and buys
        # no speed. Left off, it is one dimension fewer for the sampler to learn is useless.
        dims.pop("cluster.k")
    at_once = facts.removable_blocks if facts.removable_at_once is None else facts.removable_at_once
    if min(facts.removable_blocks, at_once) == 0:
        dims.pop("depth.fraction", None)
    elif at_once < facts.removable_blocks and dims.get("depth.fraction") == default_space()["depth.fraction"]:
        dims["depth.fraction"] = FloatRange(0.0, fraction_removing(at_once, facts.removable_blocks))
    if facts.attention_layers == 0:
        dims.pop("prune.heads", None)
    if facts.cuttable_stages == 0:
        dims.pop("depth.cut", None)
    elif dims.get("depth.cut") == default_space()["depth.cut"]:
        # Up to half the trailing stages: deeper cuts leave little of the teacher to distil into.
        dims["depth.cut"] = IntRange(0, max(1, facts.cuttable_stages // 2))
    if not facts.structural:
        dims["prune.method"] = Fixed("unstructured")
    for key in keep:
        if key not in dims and key in space:
            dims[key] = space[key]
    profile_epochs = space.profile_epochs
    if budgets:
        if dims.get("distill.epochs") == default_space()["distill.epochs"]:
            dims["distill.epochs"], cut = distill_budget(facts)
            if (cut or target == "latency") and "distill.size_boost" not in dims:
                dims["distill.size_boost"] = Fixed(SIZE_BOOST)
        profile_epochs = max(profile_epochs, min_epochs(facts.steps_per_epoch))
    return SearchSpace(dims, profile_epochs=profile_epochs)


def _without(dim: Choice, values: tuple[str, ...]) -> Choice | Fixed:
    """``dim`` without ``values``: fixed at the one value left, unchanged if none would be."""
    kept = tuple(choice for choice in dim.choices if choice not in values)
    if not kept:
        return dim
    return Fixed(kept[0]) if len(kept) == 1 else Choice(kept)
