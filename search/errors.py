"""Errors the CLI turns into one-line messages with exit code 2, and the one helper that turns
any exception into a line fit for such a message."""

from __future__ import annotations

from objectives import ObjectiveError
from stages.errors import ConfigError, StageError

__all__ = ["USER_ERRORS", "UserError", "first_line"]

# A first line longer than this is cut: a one-line error must stay readable.
MAX_LINE = 300


class UserError(Exception):
    """The user's input is wrong: a bad path, name, checkpoint or flag value."""


# The errors that mean "the input was wrong", from every layer: the CLI answers them with one
# line and exit code 2, a service job fails with their message, no traceback. The layers below
# (objectives, stages) cannot raise ``UserError``: they know nothing of search.
USER_ERRORS: tuple[type[Exception], ...] = (UserError, ConfigError, StageError, ObjectiveError)


def first_line(exc: BaseException, *, typed: bool = False) -> str:
    """The first non-blank line of ``exc``'s message (cut at ``MAX_LINE`` characters), or the
    exception's type name when the message is empty, so a one-line error never ends in nothing.

    ``typed`` prefixes the type name (``OSError: ...``) where the kind itself is informative.
    """
    line = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    if not line:
        return type(exc).__name__
    if len(line) > MAX_LINE:
        line = line[: MAX_LINE - 3] + "..."
    return f"{type(exc).__name__}: {line}" if typed else line
