"""``mcaas-search show``: one trial of a study in detail (settings, per-stage metrics, state and
failure reason, where its artifact is, and the command that exports it); without ``--trial``, the
study itself (its pre-flight analysis of the teacher and its search space)."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from search.commands import add_json_argument, add_select_argument, add_storage_argument
from search.errors import UserError
from search.exporting import torch_artifact_of
from search.reporting.as_json import study_json, trial_json, write_json
from search.reporting.format import export_command
from search.reporting.tables import print_trial
from search.study import StudyInfo, load_study, open_storage, trial_records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, help="name of the study")
    parser.add_argument(
        "--trial",
        type=int,
        default=None,
        metavar="N",
        help="trial number; without it, the study's pre-flight analysis of the teacher and its space",
    )
    add_storage_argument(parser)
    add_select_argument(parser)
    add_json_argument(parser, "the trial (or the study: its front, recommended trial, analysis and space)")


def run(args: argparse.Namespace) -> int:
    study = load_study(args.study, open_storage(args.storage, create=False))
    info = StudyInfo.load(study)
    records = trial_records(study)
    if args.trial is None:
        if args.json:
            write_json({**study_json(args.study, info, records, storage=args.storage, select=args.select),
                        "analysis": info.analysis or None, "space": dict(info.space)})
        else:
            _print_study(Console(), args.study, info)
        return 0
    by_number = {r.number: r for r in records}
    if args.trial not in by_number:
        known = f"trials are numbered 0..{max(by_number)}" if by_number else "it has no trials"
        raise UserError(f"study {args.study!r} has no trial {args.trial}; {known}")
    if args.json:
        trial = by_number[args.trial]
        exportable = trial.state == "complete"
        write_json({**trial_json(info, trial), "torch_artifact": torch_artifact_of(study, args.trial),
                    "export": export_command(args.study, args.storage, trial=args.trial) if exportable else None})
        return 0
    print_trial(
        Console(),
        info,
        by_number[args.trial],
        records,
        study_name=args.study,
        storage=args.storage,
        torch_artifact=torch_artifact_of(study, args.trial),
    )
    return 0


def _print_study(console: Console, name: str, info: StudyInfo) -> None:
    """What the study was run for, the pre-flight analysis stored with it, and its space."""
    from search.commands.inspect import print_analysis
    from search.workloads import Analysis

    console.print(f"study [bold]{name}[/]: target {info.target}, {info.constraint.describe()}; teacher {info.teacher_acc:.2f} % val")
    if info.analysis:
        print_analysis(console, Analysis.from_dict(info.analysis), title="pre-flight analysis of the teacher")
    else:
        console.print("(no pre-flight analysis: the study predates it)")
    table = Table(title="search space")
    table.add_column("setting")
    table.add_column("values")
    for key, text in info.space:
        table.add_row(key, text)
    console.print(table)
    console.print(f"trials: mcaas-search show --study {name} --trial N", highlight=False)
