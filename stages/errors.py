"""Errors raised by the compression stages."""


class ConfigError(ValueError):
    """A pipeline setting is unknown or out of range (the user's input is wrong)."""


class StageError(RuntimeError):
    """A stage cannot apply to this model; the message names the stage and the layer."""
