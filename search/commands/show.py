"""``mcaas-search show``: one trial of a study in detail (settings, per-stage metrics, state and
failure reason, where its artifact is, and the command that exports it)."""

from __future__ import annotations

import argparse

from rich.console import Console

from search.commands import add_storage_argument
from search.errors import UserError
from search.exporting import torch_artifact_of
from search.reporting.tables import print_trial
from search.study import StudyInfo, load_study, open_storage, trial_records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--study", required=True, help="name of the study")
    parser.add_argument("--trial", type=int, required=True, metavar="N", help="trial number")
    add_storage_argument(parser)


def run(args: argparse.Namespace) -> int:
    study = load_study(args.study, open_storage(args.storage, create=False))
    info = StudyInfo.load(study)
    records = trial_records(study)
    by_number = {r.number: r for r in records}
    if args.trial not in by_number:
        known = f"trials are numbered 0..{max(by_number)}" if by_number else "it has no trials"
        raise UserError(f"study {args.study!r} has no trial {args.trial}; {known}")
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
