"""``mcaas-search report``: the Pareto front table in the terminal, plus a self-contained HTML
report (Pareto plot, per-stage progression, history, parameter importance) and trials.csv."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from search.commands import add_select_argument, add_storage_argument
from search.errors import UserError
from search.reporting.page import TRIALS_CSV, write_report
from search.reporting.reference import read_reference
from search.reporting.screenshot import find_chromium, take_screenshot
from search.reporting.tables import print_failures, print_front
from search.study import StudyInfo, load_study, open_storage, trial_records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, help="name of the study to report on")
    add_storage_argument(parser)
    add_select_argument(parser)
    parser.add_argument(
        "--reference",
        type=Path,
        default=None,
        metavar="FILE.csv",
        help="published results to overlay: CSV with columns method, size_ratio or "
        "latency_ratio, accuracy_drop",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="folder for report.html and trials.csv (default: the study's artifacts folder)",
    )
    parser.add_argument(
        "--screenshot",
        type=Path,
        default=None,
        metavar="PNG",
        help="also save a PNG of the rendered report, taken with headless Chromium",
    )


def _out_dir(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise UserError(
            f"--out {str(out)!r} is a file; expected a folder for report.html and trials.csv"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out folder {str(out)!r}: {exc.strerror or exc}") from None
    return out


def run(args: argparse.Namespace) -> int:
    study = load_study(args.study, open_storage(args.storage, create=False))
    info = StudyInfo.load(study)
    records = trial_records(study)
    references = read_reference(args.reference, info.target) if args.reference is not None else []
    if args.screenshot is not None:
        if not args.screenshot.parent.is_dir():
            raise UserError(f"--screenshot folder {str(args.screenshot.parent)!r} does not exist")
        if find_chromium() is None:
            raise UserError(
                "--screenshot needs Chromium (looked for /usr/bin/chromium and chromium on PATH); "
                "install it (e.g. apt install chromium) or drop --screenshot"
            )
    out = _out_dir(args.out if args.out is not None else Path(info.artifacts_dir))

    console = Console()
    print_front(console, info, records, study_name=args.study, storage=args.storage,
                select=args.select)
    print_failures(console, records)
    html_path = write_report(study, info, out_dir=out, storage=args.storage, references=references)
    console.print(f"report: {html_path}", highlight=False, soft_wrap=True)
    console.print(f"trials: {out / TRIALS_CSV}", highlight=False, soft_wrap=True)
    if args.screenshot is not None:
        take_screenshot(html_path, args.screenshot)
        console.print(f"screenshot: {args.screenshot}", highlight=False, soft_wrap=True)
    return 0
