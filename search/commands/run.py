"""``mcaas-search [run]``: search the compression pipeline for the Pareto front under an
accuracy-drop limit. With no model it searches the built-in demo workload."""

from __future__ import annotations

import argparse
import math
import re
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console

from objectives import TARGETS, Constraint
from search.trials.context import baseline, make_context, trial_threads
from search.errors import UserError
from search.backends.local import (
    SAMPLERS,
    SearchSettings,
    check_resumable,
    create_or_resume,
    run_worker,
    run_workers,
    stop_workers,
)
from search.reporting.progress import LiveProgress
from search.study.storage import (
    STUDIES_DIR,
    StudyInfo,
    check_storage,
    storage_url,
    trial_records,
)
from search.commands import add_workload_arguments, spec_from_args
from search.workloads.workload import (
    Workload,
    WorkloadSpec,
    load_workload,
    pick_device,
)
from spaces import SearchSpace, default_space, demo_space, load_space

BACKENDS = ("optuna", "ray")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
# A study name becomes a folder under studies/: no path separators, no hidden names (.cache).
_STUDY_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# Upper bounds that catch typos (and keep --jobs from forking thousands of processes).
MAX_TRIALS, MAX_JOBS, MAX_THREADS = 100_000, 1024, 1024


def duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` -> seconds."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration like 90s, 30m or 2h, got {text!r}")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def positive_int(text: str, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0 or (high is not None and value > high):
        limit = f" up to {high}" if high is not None else ""
        raise argparse.ArgumentTypeError(f"expected a positive integer{limit}, got {text!r}")
    return value


def _int_up_to(high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        return positive_int(text, high)

    return parse


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


def study_arg(text: str) -> str:
    if not _STUDY_NAME.match(text):
        raise argparse.ArgumentTypeError(
            f"expected a name of letters, digits, '_', '-' and '.' (a folder under {STUDIES_DIR}/, "
            f"not starting with '.' or '-'), got {text!r}"
        )
    return text


def drop_points(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of points, got {text!r}") from None
    if not 0 <= value < 100:
        raise argparse.ArgumentTypeError(f"must be >= 0 and < 100, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(parser)
    goal = parser.add_argument_group("goal")
    goal.add_argument("--target", choices=TARGETS, default="size", help="what to compress: the ratio maximised")
    goal.add_argument(
        "--max-drop", type=drop_points, default=1.0, help="largest accuracy drop allowed (validation split)"
    )
    goal.add_argument(
        "--drop-type",
        choices=("absolute", "relative"),
        default="absolute",
        help="absolute: --max-drop in percentage points; relative: in percent of the teacher's accuracy",
    )
    goal.add_argument("--max-size", type=float, default=None, metavar="BYTES", help="largest file size allowed")
    goal.add_argument("--max-latency", type=float, default=None, metavar="MS", help="largest batch-1 latency allowed")
    search = parser.add_argument_group("search")
    search.add_argument(
        "--trials", type=_int_up_to(MAX_TRIALS), default=40, help="the study's total trials, fixed profiles included"
    )
    search.add_argument("--timeout", type=duration, default=None, help="stop starting trials after this (90s, 30m, 2h)")
    search.add_argument("--jobs", type=_int_up_to(MAX_JOBS), default=1, help="trials run in parallel (threads split between them)")
    search.add_argument("--backend", choices=BACKENDS, default="optuna", help="optuna: local processes; ray: Ray Tune")
    search.add_argument("--study", type=study_arg, default=None, help="study name (default: from workload and target)")
    search.add_argument(
        "--storage",
        default=None,
        help=f"study storage: a journal file or an RDB URL such as sqlite:///x.db; none means {STUDIES_DIR}/mcaas.journal",
    )
    search.add_argument("--space", type=Path, default=None, help="TOML file fixing, narrowing or dropping dimensions")
    search.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="Optuna sampler")
    search.add_argument("--no-profiles", action="store_true", help="do not run the three MCaaS fixed profiles first")
    search.add_argument("--no-early-stop", action="store_true", help="run every trial to the end")
    search.add_argument("--threads", type=_int_up_to(MAX_THREADS), default=None, help="threads per trial (default: cores / jobs)")
    ray = parser.add_argument_group("ray backend")
    ray.add_argument("--address", default=None, help="join this Ray cluster (default: start Ray locally)")
    ray.add_argument("--cpus-per-trial", type=_cpus, default=1.0, help="CPUs Ray reserves per trial")
    ray.add_argument("--gpus-per-trial", type=_gpus, default=0.0, help="GPUs Ray reserves per trial")


def study_name(workload: Workload, target: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{workload.name}-{target}").strip("-")


def pick_space(args: argparse.Namespace, spec: WorkloadSpec) -> SearchSpace:
    """The workload's base space, narrowed by ``--space`` (refused when that is no file)."""
    if args.space is not None and not args.space.is_file():
        what = "is a folder" if args.space.is_dir() else "does not exist"
        raise UserError(f"space file {str(args.space)!r} {what}")
    base = demo_space() if spec.is_demo else default_space()
    return load_space(args.space, base=base) if args.space else base


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    out = Console()
    constraint = Constraint(
        max_drop=args.max_drop, drop_type=args.drop_type, max_size=args.max_size, max_latency=args.max_latency
    )
    jobs = args.jobs
    spec = spec_from_args(args)
    # Every check that needs no workload comes first: bad input must fail before any training.
    space = pick_space(args, spec)
    check_storage(args.storage)
    workload = load_workload(spec, device=pick_device(args.device))
    threads = args.threads or trial_threads(workload, jobs)
    torch.set_num_threads(threads)
    name = args.study or study_name(workload, args.target)
    artifacts = STUDIES_DIR / name
    settings = SearchSettings(
        study=name,
        storage=args.storage,
        trials=args.trials,
        space=space,
        sampler=args.sampler,
        seed=args.seed,
        timeout_s=args.timeout,
        jobs=jobs,
        threads=threads,
        profiles=not args.no_profiles,
        early_stop=not args.no_early_stop,
        device=args.device,
    )
    info = _study_info(settings, workload, args.target, constraint, space, artifacts, console)
    study = create_or_resume(settings, info)
    info = StudyInfo.load(study)
    console.print(
        f"study [bold]{name}[/] in {storage_url(args.storage)}: {workload.name}, target {args.target}, "
        f"{constraint.describe()}; teacher {info.teacher_acc:.2f} % val, "
        f"{info.baseline['bytes'] / 1e6:.2f} MB, {info.baseline['latency_ms']:.3f} ms"
    )
    deadline = time.time() + args.timeout if args.timeout else None
    started = time.time()
    interrupted = False
    try:
        with LiveProgress(study, info, total=args.trials, jobs=jobs, console=console):
            if args.backend == "ray":
                from search.backends import ray_tune as ray_driver  # the only module importing ray

                ray_driver.run(
                    settings,
                    spec,
                    address=args.address,
                    cpus_per_trial=args.cpus_per_trial,
                    gpus_per_trial=args.gpus_per_trial,
                    deadline=deadline,
                )
            elif jobs == 1:
                run_worker(settings, workload, deadline=deadline)
            else:
                procs = run_workers(settings, spec, deadline)
                try:
                    for p in procs:
                        p.join()
                except KeyboardInterrupt:
                    stop_workers(procs)
                    raise
    except KeyboardInterrupt:
        interrupted = True
    _finish(out, console, study, info, name, args, time.time() - started, interrupted)
    return 130 if interrupted else 0


def _study_info(
    settings: SearchSettings,
    workload: Workload,
    target: str,
    constraint: Constraint,
    space: SearchSpace,
    artifacts: Path,
    console: Console,
) -> StudyInfo:
    """The study's record; the teacher's baseline is measured only for a new study, and an
    existing one is checked to be resumable before any work."""
    from search.study.storage import load_study, open_storage

    try:
        existing = StudyInfo.load(load_study(settings.study, open_storage(settings.storage, create=True)))
    except UserError:
        existing = None
    if existing is not None:
        info = StudyInfo(
            workload=workload.fingerprint,
            target=target,
            constraint=constraint,
            baseline=existing.baseline,
            baseline_onnx=existing.baseline_onnx,
            artifacts_dir=existing.artifacts_dir,
            space=existing.space,
        )
        check_resumable(settings.study, existing, info)
        return info
    # Also computes and caches the teacher's logits once, before any worker needs them.
    ctx = make_context(workload, artifacts / "trials", threads=settings.threads, seed=settings.seed or 0)
    with console.status("measuring the teacher's exported fp32 artifact (the baseline)"):
        path, metrics = baseline(ctx, artifacts / "baseline")
    return StudyInfo(
        workload=workload.fingerprint,
        target=target,
        constraint=constraint,
        baseline=metrics,
        baseline_onnx=str(path.resolve()),
        artifacts_dir=str(artifacts.resolve()),
        space=[list(row) for row in space.describe()],
    )


def _finish(
    out: Console,
    console: Console,
    study: object,
    info: StudyInfo,
    name: str,
    args: argparse.Namespace,
    seconds: float,
    interrupted: bool,
) -> None:
    from search.reporting.report import write_report
    from search.reporting.tables import print_failures, print_front

    records = trial_records(study)  # type: ignore[arg-type]
    print_front(out, info, records, study_name=name, storage=args.storage)
    print_failures(out, records)
    saved = sum(float(t.user_attrs.get("saved_s", 0.0)) for t in study.get_trials(deepcopy=False))  # type: ignore[attr-defined]
    pruned = sum(r.state == "pruned" for r in records)
    if pruned:
        out.print(f"early stopping: {pruned} trials stopped, about {saved / 60:.1f} min of training saved")
    report = write_report(study, info, storage=args.storage)  # type: ignore[arg-type]
    out.print(f"report: {report}")
    out.print(f"wall time: {seconds / 60:.1f} min")
    if interrupted:
        command = "mcaas-search " + shlex.join(sys.argv[1:])
        done = sum(r.state in ("complete", "pruned") for r in records)
        console.print(f"interrupted with {done} trials done; rerun the same command to resume:")
        console.print(f"  {command}", markup=False, highlight=False, soft_wrap=True)
