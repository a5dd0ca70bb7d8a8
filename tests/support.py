"""Helpers every test package uses: running the CLI in-process, waiting for a condition with a
deadline (never a fixed sleep: a loaded machine makes any fixed wait either too short or too long),
and counting the calls of a costly function (tests of work not done twice).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from unittest import mock

import pytest

T = TypeVar("T")
CliResult = tuple[int, str, str]
# The ``run_cli`` fixture: ``run_cli([...]) -> (exit code, stdout, stderr)``.
RunCli = Callable[[Sequence[str]], CliResult]


class WaitTimeout(AssertionError):
    """``wait_until`` ran out of time (an assertion failure, so pytest reports the message)."""


def wait_until(
    condition: Callable[[], T],
    timeout_s: float,
    message: str | Callable[[], str],
    *,
    interval_s: float = 0.1,
) -> T:
    """Call ``condition`` every ``interval_s`` until it returns something truthy, and return that.

    After ``timeout_s`` raise ``WaitTimeout`` with ``message`` (a callable is called then, so it
    can show the state at the moment of failure: a log's tail, the last status). An exception
    from ``condition`` (an assertion that a process died) ends the wait at once.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            raise WaitTimeout(f"{text} (waited {timeout_s:g} s)")
        time.sleep(interval_s)


def cli_runner(capsys: pytest.CaptureFixture[str]) -> RunCli:
    """The ``run_cli`` fixture's runner: ``search.cli.main(argv)`` with its exit code (argparse's
    usage errors included), stdout and stderr; tables 200 columns wide, so rows are not wrapped."""
    from search.cli import main

    def run(argv: Sequence[str]) -> CliResult:
        capsys.readouterr()
        with mock.patch.dict(os.environ, {"COLUMNS": "200"}):
            try:
                code = main(list(argv))
            except SystemExit as exc:  # argparse usage errors exit directly
                code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def count_calls(
    monkeypatch: pytest.MonkeyPatch, owner: object, name: str, note: Callable[..., Any] = lambda *a, **k: 1
) -> list[Any]:
    """Wrap ``owner.name`` for the test: each call still runs, and appends ``note(*args,
    **kwargs)`` (by default 1) to the list returned."""
    calls: list[Any] = []
    real = getattr(owner, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(note(*args, **kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls
