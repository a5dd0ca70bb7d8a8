"""``mcaas-search [run]``: search the compression pipeline for the Pareto front under an
accuracy-drop limit. With no model it searches the built-in demo workload."""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import shlex
import sys
from pathlib import Path

import torch
from rich.console import Console

from objectives import DEFAULT_MAX_DROP, TARGETS, Constraint
from search.backends import (
    BACKENDS,
    DEFAULT_STRATEGY,
    SAMPLERS,
    STRATEGIES,
    StudyRun,
    join_with_study_teacher,
    run_study,
)
from search.commands import (
    add_json_argument,
    add_select_argument,
    add_workload_arguments,
    checked,
    count_arg,
    float_or_text,
    spec_from_args,
)
from search.reporting.as_json import study_json, write_json
from search.reporting.progress import LiveProgress
from search.request import (
    MAX_JOBS,
    MAX_THREADS,
    MAX_TRIALS,
    SearchRequest,
    check_max_drop,
    check_study_name,
    check_timeout,
)
from search.study import (
    STUDIES_DIR,
    StudyInfo,
    check_storage,
    storage_url,
    trial_records,
)
from search.study.artifacts import open_store
from search.trials.context import trial_threads
from search.workloads import (
    Workload,
    WorkloadSpec,
    evaluate_accuracy,
    load_workload,
    pick_device,
    val_split_note,
)

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def _seconds(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a positive duration like 90s, 30m or 2h, got {text!r}")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


duration = checked(_seconds, check_timeout)
study_arg = checked(str, check_study_name)
drop_points = checked(float_or_text, check_max_drop)


def _cpus(text: str) -> float:
    return _number(text, low=0.0, low_ok=False)


def _gpus(text: str) -> float:
    return _number(text, low=0.0, low_ok=True)


def _number(text: str, *, low: float, low_ok: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and (value >= low if low_ok else value > low)):
        raise argparse.ArgumentTypeError(f"must be {'>=' if low_ok else '>'} {low:g} and finite, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(parser)
    goal = parser.add_argument_group("goal")
    goal.add_argument("--target", choices=TARGETS, default="size", help="what to compress: the ratio maximised")
    goal.add_argument(
        "--max-drop", type=drop_points, default=DEFAULT_MAX_DROP, help="largest accuracy drop allowed (validation split)"
    )
    goal.add_argument(
        "--drop-type",
        choices=("absolute", "relative"),
        default="absolute",
        help="absolute: --max-drop in percentage points; relative: in percent of the teacher's accuracy",
    )
    goal.add_argument("--max-size", type=float, default=None, metavar="BYTES", help="largest file size allowed")
    goal.add_argument("--max-latency", type=float, default=None, metavar="MS", help="largest batch-1 latency allowed")
    add_select_argument(parser)
    search = parser.add_argument_group("search")
    search.add_argument(
        "--trials", type=count_arg("trials", MAX_TRIALS), default=40, help="the study's total trials, fixed profiles included"
    )
    search.add_argument("--timeout", type=duration, default=None, help="stop starting trials after this (90s, 30m, 2h)")
    search.add_argument("--jobs", type=count_arg("jobs", MAX_JOBS), default=1, help="trials run in parallel (threads split between them)")
    search.add_argument(
        "--backend",
        choices=BACKENDS,
        default="optuna",
        help="; ".join(f"{name}: {entry.description}" for name, entry in BACKENDS.items()),
    )
    search.add_argument("--study", type=study_arg, default=None, help="study name (default: from workload and target)")
    search.add_argument(
        "--storage",
        default=None,
        help=f"study storage: a journal file or an RDB URL such as sqlite:///x.db; none means {STUDIES_DIR}/mcaas.journal",
    )
    search.add_argument(
        "--artifacts",
        default=None,
        metavar="DIR|s3://BUCKET",
        help="artifact store for trial files, so any machine with the storage can export them "
        "(a folder all machines mount, or an S3-compatible bucket); none: files stay in studies/",
    )
    search.add_argument("--space", type=Path, default=None, help="TOML file fixing, narrowing or dropping dimensions")
    search.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="Optuna sampler")
    search.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default=None,
        help="how trials spend the training budget (default: the study's own; "
        f"{DEFAULT_STRATEGY} for a new study): "
        + "; ".join(f"{name}: {entry.description}" for name, entry in STRATEGIES.items()),
    )
    search.add_argument("--no-profiles", action="store_true", help="do not run the three MCaaS fixed profiles first")
    search.add_argument("--no-early-stop", action="store_true", help="run every trial to the end")
    search.add_argument("--threads", type=count_arg("threads", MAX_THREADS), default=None, help="threads per trial (default: cores / jobs)")
    add_json_argument(parser, "the result (study, front, recommended trial, export command)")
    ray = parser.add_argument_group("ray backend")
    ray.add_argument("--address", default=None, help="join this Ray cluster (default: start Ray locally)")
    ray.add_argument("--cpus-per-trial", type=_cpus, default=1.0, help="CPUs Ray reserves per trial")
    ray.add_argument("--gpus-per-trial", type=_gpus, default=0.0, help="GPUs Ray reserves per trial")


def request_from_args(args: argparse.Namespace) -> SearchRequest:
    """The search the flags ask for, checked (``SearchRequest``)."""
    spec = spec_from_args(args)
    if args.val_fraction is None:  # the default split grows until it can decide the bound
        spec = dataclasses.replace(spec, decide_drop=args.max_drop)
    return SearchRequest(
        spec=spec,
        target=args.target,
        constraint=Constraint(
            max_drop=args.max_drop, drop_type=args.drop_type, max_size=args.max_size, max_latency=args.max_latency
        ),
        study=args.study,
        trials=args.trials,
        timeout=args.timeout,
        jobs=args.jobs,
        threads=args.threads,
        sampler=args.sampler,
        strategy=args.strategy,
        profiles=not args.no_profiles,
        early_stop=not args.no_early_stop,
        space_file=args.space,
        storage=args.storage,
        artifacts=args.artifacts,
        backend=args.backend,
        backend_options={
            "address": args.address, "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial
        },
        device=args.device,
    )


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    out = Console()
    request = request_from_args(args)
    # Every check that needs no workload comes first: bad input must fail before any training.
    space = request.space()
    check_storage(request.storage)
    if request.artifacts is not None:
        open_store(request.artifacts)
    backend = request.make_backend()
    device = pick_device(request.device)
    if request.study is not None:
        joined = join_with_study_teacher(request.spec, request.study, request.storage)
        if joined is not None:
            console.print(joined, highlight=False, soft_wrap=True)
    workload = load_workload(request.spec, device=device)
    _say_how_the_split_decides(console, workload, request.spec, request.constraint)
    threads = request.threads or trial_threads(workload, request.jobs)
    torch.set_num_threads(threads)
    name = request.study_name(workload)
    settings = request.settings(name, space, threads)
    constraint = request.constraint

    def watch(study: object, info: StudyInfo) -> LiveProgress:
        console.print(
            f"study [bold]{name}[/] in {storage_url(request.storage)}: {workload.name}, target {request.target}, "
            f"{constraint.describe()}; teacher {info.teacher_acc:.2f} % val, "
            f"{info.baseline['bytes'] / 1e6:.2f} MB, {info.baseline['latency_ms']:.3f} ms"
        )
        return LiveProgress(study, info, total=request.trials, jobs=request.jobs, console=console)  # type: ignore[arg-type]

    result = run_study(settings, workload, request.target, constraint, backend, status=console.status, watch=watch)
    _finish(out, console, result, args)
    return 130 if result.interrupted else 0


def _say_how_the_split_decides(
    console: Console, workload: Workload, asked: WorkloadSpec, constraint: Constraint
) -> None:
    """Before trial 0: one line when the default validation split was grown to decide the bound,
    and one when the split cannot decide it (even a trial that agrees with the teacher on every
    validation image would not be vouched for), naming the remedy."""
    data = workload.data
    n_val, pool = len(data.val), len(data.train) + len(data.val)
    if workload.spec.val_fraction != asked.val_fraction:
        console.print(
            f"validation split grown to {workload.spec.val_fraction:g} of the training data "
            f"({n_val} of {pool} images) so it can decide {constraint.describe()}",
            highlight=False, soft_wrap=True,
        )
    relative = constraint.drop_type == "relative"
    teacher_acc = evaluate_accuracy(workload.teacher, data.val) if relative else 100.0
    note = val_split_note(n_val, pool, constraint.allowed_drop(teacher_acc),
                          flag_per_point=100.0 / max(teacher_acc, 1.0) if relative else 1.0)
    if note is not None:
        console.print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)


def _finish(out: Console, console: Console, result: StudyRun, args: argparse.Namespace) -> None:
    from search.reporting.page import budget_lines, write_report
    from search.reporting.tables import print_failures, print_front

    study, info = result.study, result.info
    records = trial_records(study)
    if args.json:  # what a script needs to go on: "search, then export the recommended trial"
        report = write_report(study, info, storage=args.storage)
        write_json({**study_json(study.study_name, info, records, storage=args.storage, select=args.select),
                    "report": str(report), "wall_s": result.seconds, "interrupted": result.interrupted})
    else:
        print_front(out, info, records, study_name=study.study_name, storage=args.storage,
                    select=args.select)
        print_failures(out, records)
        pruned = [r for r in records if r.state == "pruned"]
        if pruned:
            saved = sum(r.saved_s for r in pruned)
            out.print(f"early stopping: {len(pruned)} trials stopped, about {saved / 60:.1f} min of training saved")
        for line in budget_lines(info, records):
            out.print(line, highlight=False)
        report = write_report(study, info, storage=args.storage)
        out.print(f"report: {report}")
        out.print(f"wall time: {result.seconds / 60:.1f} min")
    if result.interrupted:
        command = "mcaas-search " + shlex.join(sys.argv[1:])
        done = sum(r.state in ("complete", "pruned") for r in records)
        console.print(f"interrupted with {done} trials done; rerun the same command to resume:")
        console.print(f"  {command}", markup=False, highlight=False, soft_wrap=True)
