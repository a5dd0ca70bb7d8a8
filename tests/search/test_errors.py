"""The one helper that turns an exception into a line for a one-line error message."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import stages.export
from search.errors import MAX_LINE, UserError, first_line
from search.exporting import measure_accuracy
from stages import Split


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (ValueError("bad value\nsecond line"), "bad value"),
        (ValueError("\n  \n  indented first\nmore"), "indented first"),
        (RuntimeError(), "RuntimeError"),
        (RuntimeError("   \n"), "RuntimeError"),
        (KeyError("k"), "'k'"),
    ],
)
def test_first_line_is_the_first_non_blank_line_or_the_type(exc: BaseException, expected: str) -> None:
    assert first_line(exc) == expected


def test_first_line_typed_and_cut() -> None:
    assert first_line(OSError("disk full"), typed=True) == "OSError: disk full"
    assert first_line(OSError(), typed=True) == "OSError"
    long = first_line(ValueError("x" * 1000))
    assert len(long) == MAX_LINE and long.endswith("...")


def test_an_empty_load_error_is_a_user_error_not_an_index_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the one helper, ``str(exc).splitlines()[0]`` raised IndexError on an empty message."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError()

    monkeypatch.setattr(stages.export, "OnnxRunner", refuse)
    split = Split(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(UserError, match="cannot load .*: RuntimeError$"):
        measure_accuracy(tmp_path / "m.onnx", "onnx", split)


def test_a_lost_database_is_found_behind_optunas_commit_error() -> None:
    """Optuna re-raises a failed commit as StorageInternalError from SQLAlchemy's error: the CLI
    must still see "the database connection failed" (one line, not a traceback)."""
    import optuna
    import sqlalchemy.exc

    from search.cli import _lost_database

    lost = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    try:
        try:
            raise lost
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from exc
    except optuna.exceptions.StorageInternalError as wrapped:
        assert _lost_database(wrapped) is lost
    assert _lost_database(lost) is lost
    assert _lost_database(ValueError("not a database")) is None
