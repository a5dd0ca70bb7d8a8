"""``mcaas-search list``: the studies in a storage with trial counts, target, constraint and the
best feasible ratio."""

from __future__ import annotations

import argparse
import dataclasses

import optuna
from rich.console import Console

from search.commands import add_json_argument, add_storage_argument
from search.errors import UserError
from search.reporting.as_json import write_json
from search.reporting.tables import StudyRow, print_studies, study_row
from search.study import StudyInfo, open_storage, storage_url, trial_records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_storage_argument(parser)
    add_json_argument(parser, "the studies")


def run(args: argparse.Namespace) -> int:
    storage = open_storage(args.storage, create=False)
    rows: list[StudyRow] = []
    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    for summary in sorted(summaries, key=lambda s: s.study_name):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        records = trial_records(study)
        try:
            info: StudyInfo | None = StudyInfo.load(study)
            note = ""
        except (UserError, KeyError, TypeError, ValueError):
            info, note = None, "not an mcaas-search study"
        rows.append(study_row(summary.study_name, info, records, note))
    if args.json:
        write_json({"storage": storage_url(args.storage), "studies": [dataclasses.asdict(r) for r in rows]})
    else:
        print_studies(Console(), rows, storage=storage_url(args.storage))
    return 0
