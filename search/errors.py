"""Errors the CLI turns into one-line messages with exit code 2."""


class UserError(Exception):
    """The user's input is wrong: a bad path, name, checkpoint or flag value."""
