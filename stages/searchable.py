"""How a stage setting may be searched, declared beside its default in ``stages.config``:
its default search range and the condition under which it matters at all.

Plain data (``spaces`` turns it into dimensions): stages know nothing of the search, and the
default search space is derived from these declarations rather than written out apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Condition", "Hint", "OneOf", "Span", "hint_of", "setting"]

_HINT = "search"


@dataclasses.dataclass(frozen=True)
class Condition:
    """When a setting matters: ``text`` for people, ``holds`` on the flat settings decided so
    far, ``reads`` the flat keys ``holds`` looks at (they are decided first)."""

    text: str
    holds: Callable[[Mapping[str, Any]], bool]
    reads: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Span:
    """Numbers in ``[low, high]``; ``log`` samples on a log scale, ``step`` on a grid from low."""

    low: float
    high: float
    log: bool = False
    step: float | None = None


@dataclasses.dataclass(frozen=True)
class OneOf:
    """One of a few listed values."""

    choices: tuple[Any, ...]


@dataclasses.dataclass(frozen=True)
class Hint:
    """A setting's default search range (None: not searched by default) and condition."""

    search: Span | OneOf | None = None
    when: Condition | None = None


def setting(default: Any, *, search: Span | OneOf | None = None, when: Condition | None = None) -> Any:
    """A dataclass field with ``default`` that carries its search range and condition."""
    return dataclasses.field(default=default, metadata={_HINT: Hint(search, when)})


def hint_of(field: dataclasses.Field[Any]) -> Hint:
    """The search declaration of ``field`` (an empty ``Hint`` for plain fields)."""
    return field.metadata.get(_HINT, Hint())
