"""Published results overlaid on the report (``search.reporting.reference``): the CSV and its refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.reporting import reference
from tests.search.study_fixtures import HandMadeStudy, assert_refused
from tests.support import RunCli


def test_reference_overlay_keeps_the_targets_rows(
    hand: HandMadeStudy, tmp_path: Path, run_cli: RunCli
) -> None:
    csv = tmp_path / "published.csv"
    csv.write_text(
        "method,size_ratio,latency_ratio,accuracy_drop\n"
        "NNCF int8,4.0,1.9,0.0\n"
        "MCaaS balanced,9.5,,0.8\n"
        "TensorRT fp16,,2.5,0.1\n"
    )
    refs = reference.read_reference(csv, "size")
    assert refs == [reference.ReferencePoint("NNCF int8", 4.0, 0.0), reference.ReferencePoint("MCaaS balanced", 9.5, 0.8)]
    assert [r.method for r in reference.read_reference(csv, "latency")] == ["NNCF int8", "TensorRT fp16"]
    out = tmp_path / "out"
    code, _, err = run_cli(["report", "--study", "hand", "--storage", hand.storage, "--reference", str(csv), "--out", str(out)])
    assert code == 0, err
    page = (out / "report.html").read_text()
    assert "published results" in page and "MCaaS balanced" in page and "TensorRT fp16" not in page


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "does not exist"),
        ("method,latency_ratio,accuracy_drop\nx,2,0.1\n", "lacks column(s) size_ratio"),
        ("method,size_ratio,accuracy_drop\nx,two,0.1\n", "line 2: size_ratio must be a number"),
        ("method,size_ratio,accuracy_drop\nx,2,\n", "line 2: accuracy_drop must be a number"),
        ("method,size_ratio,accuracy_drop\nx,-3,0.1\n", "line 2: size_ratio must be > 0"),
        ("method,size_ratio,accuracy_drop\n", "has no row with a size_ratio value"),
        ("method,size_ratio,accuracy_drop\n,2,0.1\n", "line 2: empty method name"),
    ],
)
def test_bad_reference_csv_is_refused(
    hand: HandMadeStudy, tmp_path: Path, run_cli: RunCli, content: str | None, says: str
) -> None:
    csv = tmp_path / "ref.csv"
    if content is not None:
        csv.write_text(content)
    assert_refused(run_cli, "report", "--study", "hand", "--storage", hand.storage, "--reference", str(csv),
        "--out", str(tmp_path / "out"), says=says,
    )
    assert not (tmp_path / "out").exists()  # refused before writing anything
