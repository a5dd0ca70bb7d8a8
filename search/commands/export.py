"""``mcaas-search export``: write a trial's model (from its stored artifact, no re-training) in one
of ``EXPORT_FORMATS`` with a JSON sidecar, verified by re-measuring its test accuracy in the
format's runtime."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from objectives import format_violations
from search.commands import add_select_argument, add_storage_argument
from search.exporting import (
    FORMATS,
    check_out_path,
    export_format,
    export_trial,
    fetch_files,
    select_trial,
)
from search.reporting.format import format_bytes
from search.study import StudyInfo, load_study, open_storage, trial_records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, help="name of the study")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, metavar="N", help="export trial N")
    which.add_argument(
        "--best",
        action="store_true",
        help="export the recommended trial (see --select)",
    )
    add_select_argument(parser)
    parser.add_argument(
        "--out", type=Path, required=True, metavar="PATH", help="model file to write (its folder must exist)"
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="onnx",
        help="; ".join(f"{name}: {export_format(name).description}" for name in FORMATS),
    )
    add_storage_argument(parser)


def run(args: argparse.Namespace) -> int:
    study = load_study(args.study, open_storage(args.storage, create=False))
    info = StudyInfo.load(study)
    check_out_path(args.out)
    selection = select_trial(
        info, trial_records(study), study_name=args.study, trial=args.trial, best=args.best,
        select=args.select,
    )
    selection = fetch_files(study, selection)
    record = selection.record
    result = export_trial(info, selection, study_name=args.study, out=args.out, fmt=args.format, study=study)
    console = Console()
    console.print(
        f"exported trial {record.number} ({selection.why}) as {result.fmt} to {result.path} "
        f"({format_bytes(result.bytes)})",
        highlight=False, markup=False, soft_wrap=True,
    )
    for beside in result.files[1:]:
        console.print(f"  with: {beside}", highlight=False, markup=False, soft_wrap=True)
    console.print(f"  sidecar: {result.sidecar}", highlight=False, markup=False, soft_wrap=True)
    runtime = export_format(result.fmt).runtime.name
    if result.stored_test_acc is None:
        console.print(
            f"  test accuracy measured in {runtime}: {result.measured_test_acc:.2f} % ({result.n_test} test "
            "samples; the search measures test accuracy only for trials within the bound on validation)",
            highlight=False, markup=False,
        )
    else:
        console.print(
            f"  verified: test accuracy re-measured in {runtime} {result.measured_test_acc:.2f} % "
            f"matches the stored {result.stored_test_acc:.2f} % ({result.n_test} test samples)",
            highlight=False, markup=False,
        )
    broken = {k: v for k, v in record.violations.items() if v > 0}
    if broken:
        console.print(
            f"  note: trial {record.number} is infeasible: it broke {format_violations(broken)}",
            highlight=False, markup=False,
        )
    return 0
