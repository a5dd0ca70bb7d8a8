"""What a study learned from its failures, so no failure is paid for twice.

A trial that fails in a stage leaves a lesson in the study's user attributes: the layer
torch-pruning broke on (later trials leave it whole and prune the rest), or the setting value the
stage could not apply (``quantize.mode = int8-static`` on a model whose graph the quantizer
rejects: later configs with that value are skipped, not run). Every worker reads them before each
trial; the reason is kept once, with the trial that found it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import optuna

# Keys of the study's user attributes.
EXCLUDED, FROZEN = "excluded", "frozen_layers"


@dataclasses.dataclass(frozen=True)
class Exclusion:
    """A setting value that made a stage fail, with the reason and the trial it failed in."""

    key: str
    value: Any
    reason: str
    trial: int

    def describe(self) -> str:
        return f"{self.key}={self.value} failed in trial {self.trial}: {self.reason}"


def exclusions(study: optuna.Study) -> list[Exclusion]:
    return [Exclusion(**e) for e in study.user_attrs.get(EXCLUDED, [])]


def frozen_layers(study: optuna.Study) -> dict[str, str]:
    """Layers structural pruning broke on in some trial -> the reason."""
    return dict(study.user_attrs.get(FROZEN, {}))


def excluded_by(found: list[Exclusion], config: Mapping[str, Any]) -> Exclusion | None:
    """The first exclusion ``config`` (flat settings) falls under, or None."""
    return next((e for e in found if config.get(e.key) == e.value), None)


def exclude(study: optuna.Study, exclusion: Exclusion) -> None:
    """Record ``exclusion`` (once per key and value; call under the study's ask lock)."""
    found = exclusions(study)
    if any((e.key, e.value) == (exclusion.key, exclusion.value) for e in found):
        return
    study.set_user_attr(EXCLUDED, [dataclasses.asdict(e) for e in [*found, exclusion]])


def freeze_layer(study: optuna.Study, layer: str, reason: str) -> None:
    """Record that structural pruning must leave ``layer`` whole (call under the ask lock)."""
    frozen = frozen_layers(study)
    if layer not in frozen:
        study.set_user_attr(FROZEN, {**frozen, layer: reason})
