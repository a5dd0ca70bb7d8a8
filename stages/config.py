"""Frozen, validated settings of every stage, and the flat ``stage.key=value`` form used by the
CLI (``--set prune.ratio=0.5``), the search spaces and the study storage.

A searchable setting declares its default search range and condition beside its default
(``setting(...)``); ``spaces.default_space()`` is derived from them (see ``search_hints``).
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

from stages.criteria import CRITERIA
from stages.errors import ConfigError
from stages.quant_modes import INT8_FORMATS, QUANT_MODES
from stages.searchable import Condition, Hint, OneOf, Span, hint_of, setting

PRUNE_METHODS = ("structured", "unstructured")
PRUNE_SCOPES = ("global", "uniform")


_PRUNING = Condition("prune.ratio > 0", lambda v: v["prune.ratio"] > 0, ("prune.ratio",))
# Unstructured pruning is magnitude sparsity: it has a scope but no criterion, steps or round_to.
_STRUCTURED = Condition(
    "prune.ratio > 0, structured",
    lambda v: v["prune.ratio"] > 0 and v["prune.method"] == "structured",
    ("prune.ratio", "prune.method"),
)
_DISTILLING = Condition("distill.epochs > 0", lambda v: v["distill.epochs"] > 0, ("distill.epochs",))
# alpha 0 is plain fine-tuning: the temperature only scales soft targets, so it would be noise.
_SOFT_TARGETS = Condition(
    "distill.epochs > 0, distill.alpha > 0",
    lambda v: v["distill.epochs"] > 0 and v["distill.alpha"] > 0,
    ("distill.epochs", "distill.alpha"),
)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, but got {value!r}.")


def _check_range(key: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{key} must lie in [{low}, {high}], but got {value}.")


@dataclasses.dataclass(frozen=True)
class DepthConfig:
    """Removing depth (see ``stages.depth``): ``cut`` trailing stages replaced by a new
    classifier, then ``fraction`` of the model's removable blocks (residual blocks that keep
    their input's shape), least important first. A study searches only what its model allows."""

    fraction: float = setting(0.0, search=Span(0.0, 1.0))
    # Trailing stages cut, a new classifier reading what is left (0: none). The study's space
    # searches 0 up to the cuts its model allows.
    cut: int = setting(0, search=Span(0, 3))

    def __post_init__(self) -> None:
        _check_range("depth.fraction", self.fraction, 0.0, 1.0)
        _check_range("depth.cut", self.cut, 0, 64)


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """Structured pruning (channels physically removed) or unstructured magnitude sparsity.

    ``ratio`` is the fraction of channels (structured) or weights (unstructured) removed;
    ``scope`` global ranks all layers together, uniform prunes every layer by ``ratio``;
    ``steps`` prunes iteratively; ``round_to`` keeps channel counts multiples of it (int8 kernels
    like multiples of 8). ``heads`` is the fraction of whole heads removed from every attention
    layer after the channels (structured, either method).
    """

    ratio: float = setting(0.0, search=Span(0.0, 0.95))
    criterion: str = setting("l2", search=OneOf(tuple(CRITERIA)), when=_STRUCTURED)
    # Not searched by default: unstructured sparsity keeps every weight in the file, so it
    # improves only gzip bytes; a space file can add it.
    method: str = setting("structured", when=_PRUNING)
    scope: str = setting("global", search=OneOf(PRUNE_SCOPES), when=_PRUNING)
    steps: int = setting(1, search=Span(1, 5), when=_STRUCTURED)
    round_to: int = setting(1, search=OneOf((1, 8)), when=_STRUCTURED)
    # Whole attention heads removed from every attention layer, least important first (each
    # keeps one); a study searches it only for models with attention (``spaces.fit_space``).
    heads: float = setting(0.0, search=Span(0.0, 0.75, step=0.25))

    def __post_init__(self) -> None:
        _check_range("prune.ratio", self.ratio, 0.0, 0.95)
        _check_range("prune.heads", self.heads, 0.0, 0.95)
        _check_choice("prune.criterion", self.criterion, tuple(CRITERIA))
        _check_choice("prune.method", self.method, PRUNE_METHODS)
        _check_choice("prune.scope", self.scope, PRUNE_SCOPES)
        _check_range("prune.steps", self.steps, 1, 100)
        _check_range("prune.round_to", self.round_to, 1, 256)


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Fine-tuning with knowledge distillation.

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE. ``alpha`` 0 is plain
    fine-tuning, 1 uses no labels. ``epochs`` is the budget (fractions allowed; 0 skips the stage).
    ``size_boost`` > 1 lets a student cheaper than the teacher train longer: see
    ``stages.distill.trained_epochs``.
    """

    epochs: float = setting(1.0, search=Span(0.5, 3.0, step=0.5))
    temperature: float = setting(4.0, search=Span(1.0, 20.0, log=True), when=_SOFT_TARGETS)
    alpha: float = setting(0.7, search=Span(0.0, 1.0, step=0.1), when=_DISTILLING)
    lr: float = setting(0.01, search=Span(1e-3, 0.1, log=True), when=_DISTILLING)
    # Weight of a feature loss beside the logits' (FitNets-style, Romero et al. 2015): the mean
    # squared error between the teacher's classifier input and the student's mapped to the
    # teacher's width by a learned projection, over the teacher features' variance. 0 is off;
    # not searched by default (a space file can add it), see README "Transformers".
    features: float = setting(0.0, when=_DISTILLING)
    # The most times ``epochs`` a student trains for having fewer MACs than the teacher (1: off):
    # it trains ``epochs * min(size_boost, teacher MACs / student MACs)`` epochs, so a small
    # student gets a long distillation at about the cost of a short one of a big student, without
    # the sampler having to learn that pairing. Not searched; the fitted space holds it at
    # ``spaces.SIZE_BOOST`` where the teacher's epoch time cut the distillation range.
    size_boost: float = setting(1.0, when=_DISTILLING)

    def __post_init__(self) -> None:
        _check_range("distill.epochs", self.epochs, 0.0, 1000.0)
        _check_range("distill.features", self.features, 0.0, 100.0)
        _check_range("distill.size_boost", self.size_boost, 1.0, 1000.0)
        _check_range("distill.temperature", self.temperature, 1.0, 20.0)
        _check_range("distill.alpha", self.alpha, 0.0, 1.0)
        _check_range("distill.lr", self.lr, 1e-6, 1.0)


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """Per-layer k-means weight sharing with ``k`` centroids; 0 turns the stage off."""

    k: int = setting(0, search=Span(16, 256, log=True))  # searched as "off, or k in the span"

    def __post_init__(self) -> None:
        if self.k != 0:
            _check_range("cluster.k", self.k, 2, 256)


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """How the exported model is quantized: ``mode`` names an entry of ``QUANT_MODES`` (modes
    with ``fake_quant_training``, such as int8-qat, fake-quantize during distillation)."""

    mode: str = setting("none", search=OneOf(tuple(n for n, q in QUANT_MODES.items() if q.searched_by_default)))
    format: str = "qdq"
    calibration_samples: int = 256

    def __post_init__(self) -> None:
        _check_choice("quantize.mode", self.mode, tuple(QUANT_MODES))
        _check_choice("quantize.format", self.format, tuple(INT8_FORMATS))
        _check_range("quantize.calibration_samples", self.calibration_samples, 1, 100_000)


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """Deployable artifact: ONNX (run in ONNX Runtime, where every number is measured)."""

    opset: int = 18

    def __post_init__(self) -> None:
        _check_range("export.opset", self.opset, 17, 23)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """One trial: the settings of every stage."""

    depth: DepthConfig = dataclasses.field(default_factory=DepthConfig)
    prune: PruneConfig = dataclasses.field(default_factory=PruneConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)
    cluster: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)
    quantize: QuantizeConfig = dataclasses.field(default_factory=QuantizeConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        mode = self.quantize.mode
        if QUANT_MODES[mode].fake_quant_training and self.distill.epochs <= 0:
            raise ConfigError(
                f"quantize.mode={mode} fake-quantizes during distillation, so distill.epochs "
                f"must be > 0, but got {self.distill.epochs}."
            )

    def to_flat(self) -> dict[str, Any]:
        """``{"prune.ratio": 0.5, ...}`` for every setting."""
        return {
            f"{section.name}.{f.name}": getattr(getattr(self, section.name), f.name)
            for section in dataclasses.fields(self)
            for f in dataclasses.fields(getattr(self, section.name))
        }

    @classmethod
    def from_flat(cls, values: dict[str, Any], base: PipelineConfig | None = None) -> PipelineConfig:
        """Build a config from ``{"stage.key": value}``, unspecified keys taken from ``base``.

        Values may be strings (as typed on the command line); they are converted to the field's
        type. Unknown keys raise ``ConfigError`` listing the valid ones.
        """
        base = base or cls()
        sections: dict[str, dict[str, Any]] = {f.name: {} for f in dataclasses.fields(cls)}
        valid = valid_keys()
        for key, raw in values.items():
            if key not in valid:
                raise ConfigError(f"unknown setting {key!r}; valid settings: {', '.join(valid)}.")
            section, name = key.split(".", 1)
            sections[section][name] = _convert(key, raw, valid[key])
        try:
            return cls(
                **{s: dataclasses.replace(getattr(base, s), **kw) for s, kw in sections.items()}
            )
        except TypeError as exc:  # pragma: no cover - guarded by valid_keys
            raise ConfigError(str(exc)) from None


def valid_keys() -> dict[str, type]:
    """Every flat setting name and its Python type."""
    keys: dict[str, type] = {}
    for section in dataclasses.fields(PipelineConfig):
        section_type = typing.get_type_hints(PipelineConfig)[section.name]
        hints = typing.get_type_hints(section_type)
        for f in dataclasses.fields(section_type):
            keys[f"{section.name}.{f.name}"] = hints[f.name]
    return keys


def search_hints() -> dict[str, Hint]:
    """Every flat setting name and its search declaration (range and condition), in field
    order; settings declared without one get an empty ``Hint``."""
    return {
        f"{section.name}.{f.name}": hint_of(f)
        for section in dataclasses.fields(PipelineConfig)
        for f in dataclasses.fields(typing.get_type_hints(PipelineConfig)[section.name])
    }


def _convert(key: str, raw: Any, kind: type) -> Any:
    if isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    try:
        if kind is int:
            as_float = float(raw)
            if as_float != int(as_float):
                raise ValueError
            return int(as_float)
        if kind is float:
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be {kind.__name__}, but got {raw!r}.") from None
