"""Published results read from a CSV, overlaid on the report's Pareto plot for scale."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

from search.errors import UserError


@dataclasses.dataclass(frozen=True)
class ReferencePoint:
    """A published result: method name, its ratio on the study's target, its accuracy drop."""

    method: str
    ratio: float
    drop: float


def read_reference(path: Path, target: str) -> list[ReferencePoint]:
    """Read a CSV of published results with columns ``method``, ``<target>_ratio`` (e.g.
    ``size_ratio`` or ``latency_ratio``) and ``accuracy_drop`` (points).

    Rows with an empty ``<target>_ratio`` are skipped (they report another target); anything
    else malformed is a one-line UserError naming the line.
    """
    column = f"{target}_ratio"
    expected = f"expected columns method, {column}, accuracy_drop"
    if not path.is_file():
        raise UserError(f"reference file {str(path)!r} does not exist; {expected}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [(h or "").strip() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(
            f"reference file {str(path)!r} is not a readable CSV ({exc}); {expected}"
        ) from None
    missing = [c for c in ("method", column, "accuracy_drop") if c not in header]
    if missing:
        found = ", ".join(header) or "none"
        raise UserError(
            f"reference CSV {str(path)!r} lacks column(s) {', '.join(missing)} for this "
            f"{target} study; {expected} (found: {found})"
        )
    points = []
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if not row.get(column):
            continue
        method = row.get("method") or ""
        if not method:
            raise UserError(f"reference CSV {str(path)!r} line {line}: empty method name")
        ratio = _number(path, line, column, row[column])
        drop = _number(path, line, "accuracy_drop", row.get("accuracy_drop", ""))
        if ratio <= 0:
            raise UserError(
                f"reference CSV {str(path)!r} line {line}: {column} must be > 0, but got {ratio:g}"
            )
        points.append(ReferencePoint(method, ratio, drop))
    if not points:
        raise UserError(f"reference CSV {str(path)!r} has no row with a {column} value; {expected}")
    return points


def _number(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UserError(
            f"reference CSV {str(path)!r} line {line}: {column} must be a number, but got {text!r}"
        )
    return value
