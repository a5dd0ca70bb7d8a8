"""The search space: which pipeline settings a study searches, over which values, and when.

A space maps flat setting keys (``"prune.ratio"``) to dimensions; settings it does not hold keep
their ``PipelineConfig`` default. One define-by-run walk, in dependency order, serves three uses:
asking a trial for values (``suggest``), rebuilding a config from recorded params
(``config_from_params``), and the reverse (``params_from_config``). Sharing the walk is what keeps
the three in step when a conditional rule changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from spaces._dimensions import (
    DIMENSION_TYPES,
    Choice,
    Dimension,
    Fixed,
    FloatRange,
    IntRange,
    Scalar,
    SpaceError,
    TrialLike,
    _is_number,
)
from stages.config import PipelineConfig, search_hints, valid_keys
from stages.errors import ConfigError
from stages.quant_modes import QUANT_MODES
from stages.searchable import Condition, OneOf, Span

CLUSTER_ON = "cluster.on"
"""The parameter that switches clustering on before ``cluster.k`` is asked (when k is a range)."""

_CLUSTER_SWITCH = Choice((False, True))
_KEYS: dict[str, type] = valid_keys()
_DEFAULTS: dict[str, Any] = PipelineConfig().to_flat()


_HINTS = search_hints()
# When each setting matters (declared beside its default in stages.config).
_CONDITIONS: dict[str, Condition] = {k: h.when for k, h in _HINTS.items() if h.when is not None}


def _walk_order(keys: Sequence[str]) -> tuple[str, ...]:
    """``keys`` with every setting after the ones its condition reads, otherwise in order."""
    order: list[str] = []
    waiting = list(keys)
    while waiting:
        ready = next(
            k for k in waiting
            if k not in _CONDITIONS or set(_CONDITIONS[k].reads) <= {*order, k}
        )
        order.append(ready)
        waiting.remove(ready)
    return tuple(order)


_ORDER: tuple[str, ...] = _walk_order(list(_KEYS))

_KIND_WORDS = {float: "a number", int: "an integer", str: "a string"}
_DIMENSIONS_FOR_KIND: dict[type, tuple[type, ...]] = {
    float: (FloatRange, Choice, Fixed),
    int: (IntRange, Choice, Fixed),
    str: (Choice, Fixed),
}


def _fits(value: object, kind: type) -> bool:
    if kind is float:
        return _is_number(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


def _check_dimension(key: str, dim: object) -> None:
    """Raise ``SpaceError`` unless ``dim`` suits ``key`` and every value it yields is valid."""
    if key not in _KEYS:
        raise SpaceError(
            f"unknown setting {key!r} in the search space; valid settings: {', '.join(_KEYS)}."
        )
    if not isinstance(dim, DIMENSION_TYPES):
        raise SpaceError(f"{key}: expected FloatRange, IntRange, Choice or Fixed, but got {dim!r}.")
    kind = _KEYS[key]
    allowed = _DIMENSIONS_FOR_KIND[kind]
    if not isinstance(dim, allowed):
        raise SpaceError(
            f"{key} holds {_KIND_WORDS[kind]}: it takes "
            f"{', '.join(t.__name__ for t in allowed)}, but got {type(dim).__name__}."
        )
    for value in dim.extremes():
        if not _fits(value, kind):
            raise SpaceError(
                f"{key} holds {_KIND_WORDS[kind]}, but {dim.describe()!r} includes {value!r}."
            )
        try:
            PipelineConfig.from_flat({key: value})
        except ConfigError as exc:
            shown = repr(dim.value) if isinstance(dim, Fixed) else dim.describe()
            raise SpaceError(
                f"{key}: {shown} is outside what the pipeline accepts: {exc}"
            ) from None
    if key == "cluster.k" and isinstance(dim, IntRange) and dim.low < 2:
        raise SpaceError(
            "cluster.k as a range means 'off, or k in low..high' with k >= 2, "
            f"but got low={dim.low}; "
            "to list k values with 0 (off) among them, give choices such as [0, 16, 64]."
        )


def _possible(dims: Mapping[str, Dimension], key: str) -> tuple[Any, ...]:
    """Values bounding what ``key`` can take in a trial (its default when not in the space)."""
    dim = dims.get(key)
    return (_DEFAULTS[key],) if dim is None else tuple(dim.extremes())


def _check_qat_has_distillation(dims: Mapping[str, Dimension]) -> None:
    """Modes that fake-quantize during distillation must not meet a budget of 0 epochs."""
    fake_quant = [
        mode for mode in _possible(dims, "quantize.mode")
        if QUANT_MODES[str(mode)].fake_quant_training
    ]
    can_skip = min(_possible(dims, "distill.epochs")) <= 0
    if fake_quant and can_skip:
        mode = fake_quant[0]
        epochs = dims.get("distill.epochs")
        shown = epochs.describe() if epochs is not None else _DEFAULTS["distill.epochs"]
        raise SpaceError(
            f"{mode} needs distillation: quantize.mode can be {mode} while distill.epochs "
            f"({shown}) can be 0; keep distill.epochs above 0 "
            f"or remove {mode} from quantize.mode."
        )


@dataclasses.dataclass(frozen=True, eq=False)
class SearchSpace(Mapping[str, Dimension]):
    """Flat setting key -> dimension; validated on construction.

    ``profile_epochs`` is the distillation budget of the fixed MCaaS profiles (see
    ``spaces.profile_config``), so they train as long as the study's trials typically do.
    """

    dimensions: Mapping[str, Dimension] = dataclasses.field(default_factory=dict)
    profile_epochs: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.dimensions, Mapping):
            raise SpaceError(
                f"a search space maps setting keys to dimensions, but got {self.dimensions!r}."
            )
        dims = dict(self.dimensions)
        for key, dim in dims.items():
            _check_dimension(key, dim)
        _check_qat_has_distillation(dims)
        if not _is_number(self.profile_epochs) or self.profile_epochs <= 0:
            raise SpaceError(
                f"profile_epochs must be a number > 0, but got {self.profile_epochs!r}."
            )
        try:
            PipelineConfig.from_flat({"distill.epochs": self.profile_epochs})
        except ConfigError as exc:
            raise SpaceError(f"profile_epochs is not a valid budget: {exc}") from None
        object.__setattr__(self, "profile_epochs", float(self.profile_epochs))
        # Stored in walk order, read-only: a frozen space must not change under a running study.
        object.__setattr__(
            self, "dimensions", MappingProxyType({k: dims[k] for k in _ORDER if k in dims})
        )

    def __reduce__(self) -> tuple[Any, ...]:
        # Worker processes (--jobs, Ray) receive the space by pickling; a mappingproxy can't be.
        return (SearchSpace, (dict(self.dimensions), self.profile_epochs))

    def __getitem__(self, key: str) -> Dimension:
        return self.dimensions[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.dimensions)

    def __len__(self) -> int:
        return len(self.dimensions)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SearchSpace):
            return NotImplemented
        return (
            dict(self.dimensions) == dict(other.dimensions)
            and self.profile_epochs == other.profile_epochs
        )

    def __hash__(self) -> int:
        return hash((frozenset(self.dimensions.items()), self.profile_epochs))

    def __repr__(self) -> str:
        return f"SearchSpace({dict(self.dimensions)!r}, profile_epochs={self.profile_epochs!r})"

    def fixed_values(self) -> dict[str, Scalar]:
        """The settings this space holds at one value."""
        return {key: dim.value for key, dim in self.dimensions.items() if isinstance(dim, Fixed)}

    def param_dimension(self, name: str) -> Dimension:
        """The dimension a trial is asked for under parameter ``name`` (``cluster.on`` too)."""
        if name == CLUSTER_ON and isinstance(self.dimensions.get("cluster.k"), IntRange):
            return _CLUSTER_SWITCH
        dim = self.dimensions.get(name)
        if dim is None or isinstance(dim, Fixed):
            raise SpaceError(
                f"{name!r} is not a parameter of this space; "
                f"its parameters: {', '.join(self._param_names())}."
            )
        return dim

    def suggest(self, trial: TrialLike) -> PipelineConfig:
        """Ask ``trial`` for every active setting and return the sampled config.

        Parameter names are the flat keys (plus ``cluster.on``). A trial that runs a named
        config (a profile) gets it from ``spaces.trial_config``, which asks through this.
        """
        decided = self._walk(lambda name, dim: dim.suggest(trial, name))  # type: ignore[union-attr]
        return PipelineConfig.from_flat(decided)

    def config_from_params(self, params: Mapping[str, Any]) -> PipelineConfig:
        """Rebuild a finished trial's config from its params (those ``suggest`` recorded).

        Fixed settings are applied; settings whose condition does not hold keep their defaults
        (clustering off without ``cluster.on``); a profile trial's config comes from
        ``spaces.rebuilt_config``. Params that do not match this space (one missing, or one it
        does not search) raise ``SpaceError``: the trial came from another space.
        """
        searched = set(self._param_names())
        extra = sorted(name for name in params if name not in searched)
        if extra:
            raise SpaceError(
                f"this space does not search {', '.join(map(repr, extra))}; it searches "
                f"{', '.join(sorted(searched))}. Was the trial run with another space file?"
            )

        def pick(name: str, dim: Dimension) -> Any:
            if name not in params:
                raise SpaceError(
                    f"the trial has no parameter {name!r}, which this space searches "
                    f"({dim.describe()}). Was the trial run with another space file?"
                )
            return params[name]

        return PipelineConfig.from_flat(self._walk(pick))

    def params_from_config(self, config: PipelineConfig) -> dict[str, Any]:
        """The params ``suggest`` records for a trial that ends in ``config`` (values as in
        ``config``, whether or not they lie inside their dimension)."""
        flat = config.to_flat()
        params: dict[str, Any] = {}

        def pick(name: str, dim: Dimension) -> Any:
            value = flat["cluster.k"] != 0 if name == CLUSTER_ON else flat[name]
            params[name] = value
            return value

        self._walk(pick)
        return params

    def describe(self) -> list[tuple[str, str]]:
        """``(key, "0.0 .. 0.95")`` rows in walk order, with the condition each is asked under."""
        rows = []
        for key, dim in self.dimensions.items():
            text = dim.describe()
            if key == "cluster.k" and isinstance(dim, IntRange):
                text = f"off | {text}"
            condition = _CONDITIONS.get(key)
            if condition is not None and not isinstance(dim, Fixed):
                text += f"  (if {condition.text})"
            rows.append((key, text))
        return rows

    def _param_names(self) -> list[str]:
        names = []
        for key, dim in self.dimensions.items():
            if key == "cluster.k" and isinstance(dim, IntRange):
                names.append(CLUSTER_ON)
            if not isinstance(dim, Fixed):
                names.append(key)
        return names

    def _walk(self, pick: Callable[[str, Dimension], Any]) -> dict[str, Any]:
        """Decide the settings this space holds, parents first; ``pick(name, dim)`` gives the
        value of each searched setting whose condition holds. Returns the decided settings."""
        current = dict(_DEFAULTS)
        decided: dict[str, Any] = {}
        for key, dim in self.dimensions.items():
            if isinstance(dim, Fixed):
                value = dim.value
            else:
                condition = _CONDITIONS.get(key)
                if condition is not None and not condition.holds(current):
                    continue
                if key == "cluster.k" and isinstance(dim, IntRange):
                    value = pick(key, dim) if pick(CLUSTER_ON, _CLUSTER_SWITCH) else 0
                else:
                    value = pick(key, dim)
            current[key] = decided[key] = value
        return decided


def default_space() -> SearchSpace:
    """Every setting over the default range declared beside it in ``stages.config``; the others
    (quantize.format, calibration_samples, export.opset, prune.method) stay at their defaults.

    ``prune.method`` stays structured: unstructured sparsity keeps every weight in the file, so
    it improves only gzip bytes among the targets; searching it would spend trials on configs
    that rarely pay off. A space file can add it back.
    """
    return SearchSpace(
        {key: _dimension(_KEYS[key], h.search) for key, h in _HINTS.items() if h.search is not None}
    )


def _dimension(kind: type, search: Span | OneOf) -> Dimension:
    """The dimension a declared default range stands for, for a setting of type ``kind``."""
    if isinstance(search, OneOf):
        return Choice(search.choices)
    if kind is int:
        step = 1 if search.step is None else int(search.step)
        return IntRange(int(search.low), int(search.high), log=search.log, step=step)
    return FloatRange(search.low, search.high, log=search.log, step=search.step)
