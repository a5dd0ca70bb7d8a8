"""Errors raised by the compression stages."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A pipeline setting is unknown or out of range (the user's input is wrong)."""


class StageError(RuntimeError):
    """A stage cannot apply to this model. ``stage`` names the stage; ``setting`` the flat setting
    whose value is to blame when one is (a quantizer that rejects the graph fails for every config
    with that ``quantize.mode``, so a search avoids the value), None when the failure depends on
    the model and the numbers rather than on one value to avoid. Reads ``"stage: message"``."""

    def __init__(self, stage: str, message: str, *, setting: str | None = None) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage
        self.message = message
        self.setting = setting

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its fields (Ray and worker processes send errors between processes).
        return (_rebuild, (type(self), self.__dict__))


def _rebuild(cls: type[StageError], fields: dict[str, Any]) -> StageError:
    exc = cls.__new__(cls)
    RuntimeError.__init__(exc, f"{fields['stage']}: {fields['message']}")
    exc.__dict__.update(fields)
    return exc
