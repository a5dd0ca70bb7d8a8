"""``mcaas-search bench``: the default search against the three MCaaS fixed profiles, random
search, the multi-fidelity search (at the default search's compute) and peer methods on one
workload and trial budget, for each target; writes BENCHMARKS.md,
CSVs and plots. Resumable: the same command continues where it stopped. ``--quick``: a smoke run."""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from rich.console import Console

from objectives import TARGETS, Constraint
from search.bench.plan import ASHA_TRIAL_FACTOR, METHODS, BenchPlan, bench_command, run_bench
from search.bench.results import WORKLOAD_GOALS
from search.commands import add_workload_arguments, count_arg, spec_from_args
from search.commands.run import drop_points, duration, study_arg
from search.errors import UserError
from search.request import MAX_THREADS, MAX_TRIALS, SearchRequest
from search.study import check_storage
from search.trials.context import trial_threads
from search.workloads import load_workload, pick_device
from spaces import Fixed, SearchSpace

# --quick: enough trials that the search runs past its three profiles, a distillation of one epoch.
QUICK_TRIALS = 4
QUICK_EPOCHS = 1.0
QUICK_MARKDOWN = "bench.md"
# The benchmark's studies, in one journal beside its results: committed with them, a fresh clone
# resumes every study where it stopped (the trial files stay behind, uncommitted).
JOURNAL = "bench.journal"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(parser)
    bench = parser.add_argument_group("benchmark")
    bench.add_argument("--name", type=study_arg, default=None, help="benchmark name, prefix of its studies (default: bench-WORKLOAD)")
    bench.add_argument("--targets", nargs="+", choices=TARGETS, default=["size", "latency"], help="targets to benchmark")
    bench.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="methods to run and compare")
    bench.add_argument("--max-drop", type=drop_points, default=1.0, help="largest accuracy drop allowed, in points")
    bench.add_argument("--trials", type=count_arg("trials", MAX_TRIALS), default=40, help="trials per study")
    bench.add_argument("--round", dest="round_size", type=count_arg("round", MAX_TRIALS), default=10, help="trials per study per round")
    bench.add_argument("--space", type=Path, default=None, help="TOML file fixing, narrowing or dropping dimensions")
    bench.add_argument("--threads", type=count_arg("threads", MAX_THREADS), default=None, help="torch and ONNX Runtime threads (default: all cores)")
    bench.add_argument("--timeout", type=duration, default=None, help="start no trial after this (90s, 30m, 2h): the running one finishes, the section is written from what is done, and the same command resumes")
    bench.add_argument("--storage", default=None, help=f"study storage (default: {JOURNAL} in the results folder, which a repository can commit so the benchmark resumes anywhere)")
    bench.add_argument("--out", type=Path, default=None, help="Markdown file whose section for this benchmark (--name) is (re)written, others kept (default: BENCHMARKS.md; with --quick, bench.md in the results folder)")
    bench.add_argument("--results", type=Path, default=None, help="folder for the CSV and plots (default: studies/benchmarks/NAME)")
    bench.add_argument("--report-only", action="store_true", help="run no trial: rewrite the summary from the studies")
    bench.add_argument(
        "--quick",
        action="store_true",
        help=f"a smoke run that checks every row is produced, not what the ratios are: {QUICK_TRIALS} trials per "
        f"study in one round (the multi-fidelity search: at most {QUICK_TRIALS}), distillation of {QUICK_EPOCHS:g} "
        "epoch(s); name NAME-quick, summary in the results folder",
    )


def quick_space(space: SearchSpace) -> SearchSpace:
    """``space`` with a short distillation: the searched budget and the profiles' (the fit to the
    workload still raises the profiles' budget to its minimum of optimizer steps)."""
    dims = {**space.dimensions, "distill.epochs": Fixed(QUICK_EPOCHS)}
    return SearchSpace(dims, profile_epochs=QUICK_EPOCHS)


def _argv(
    args: argparse.Namespace,
    plan: BenchPlan,
    targets: tuple[str, ...] | None = None,
    methods: tuple[str, ...] | None = None,
) -> list[str]:
    """The flags that reproduce this benchmark (workload, budget, methods), defaults left out;
    ``targets`` / ``methods`` narrow it to part of the benchmark (the same studies)."""
    targets = targets or plan.targets
    methods = methods or plan.methods
    argv = ["bench"]
    for flag, value in (
        ("--model", args.model),
        ("--weights", args.weights),
        ("--dataset", args.dataset),
        ("--data-root", args.data_root),
        ("--image-size", args.image_size),
        ("--val-fraction", args.val_fraction),
        ("--space", args.space),
    ):
        if value is not None:
            argv += [flag, str(value)]
    if args.seed:
        argv += ["--seed", str(args.seed)]
    for flag, on in (("--allow-pickle", args.allow_pickle), ("--download", args.download)):
        if on:
            argv.append(flag)
    argv += ["--name", plan.name, "--targets", *targets]
    if args.quick:
        argv.append("--quick")
    if set(methods) != set(METHODS):
        argv += ["--methods", *methods]
    argv += ["--max-drop", f"{args.max_drop:g}"]
    if not args.quick:
        argv += ["--trials", str(plan.trials), "--round", str(plan.round_size)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return argv


def run(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    if args.out is None and not args.quick:
        args.out = Path("BENCHMARKS.md")
    if args.out is not None and args.out.exists() and not args.out.is_file():
        raise UserError(f"--out {str(args.out)!r} is not a file; expected the Markdown file to write")
    if args.out is not None and not args.out.parent.is_dir():
        raise UserError(f"--out folder {str(args.out.parent)!r} does not exist")
    if args.results is not None and args.results.exists() and not args.results.is_dir():
        raise UserError(f"--results {str(args.results)!r} is a file; expected a folder for the CSV and plots")
    if args.storage is not None:
        check_storage(args.storage)
    if args.quick:
        args.trials = args.round_size = QUICK_TRIALS
    request = SearchRequest(
        spec=spec_from_args(args),
        constraint=Constraint(max_drop=args.max_drop),
        trials=args.trials,
        threads=args.threads,
        space_file=args.space,
        storage=args.storage,
        device=args.device,
    )
    space = request.space()
    if args.quick:
        space = quick_space(space)
    workload = load_workload(request.spec, device=pick_device(request.device))
    threads = request.threads or trial_threads(workload, 1)
    torch.set_num_threads(threads)
    name = args.name or f"bench-{workload.name}" + ("-quick" if args.quick else "")
    results = args.results or Path("studies") / "benchmarks" / name
    if args.storage is None:
        results.mkdir(parents=True, exist_ok=True)
        request = dataclasses.replace(request, storage=str(results / JOURNAL))
    plan = BenchPlan(
        name=name,
        targets=tuple(dict.fromkeys(args.targets)),
        methods=tuple(dict.fromkeys(args.methods)),
        round_size=min(args.round_size, args.trials),
        request=request,
        space=space,
        threads=threads,
        goals=WORKLOAD_GOALS.get(workload.name, {}),
        # A smoke run's multi-fidelity search: as many trials as the others (the quick space
        # trains one short budget, so it would otherwise run to its cap on the profiles' compute).
        asha_trial_factor=1 if args.quick else ASHA_TRIAL_FACTOR,
    )
    if args.quick and args.out is None:  # a smoke run never rewrites BENCHMARKS.md unless told to
        args.out = results / QUICK_MARKDOWN
        results.mkdir(parents=True, exist_ok=True)
    command = bench_command(_argv(args, plan))

    def method_command(target: str, method: str) -> str:
        return bench_command(_argv(args, plan, (target,), ("search",) if method == "profiles" else (method,)))

    def summary(_: int | None = None) -> None:
        from search.bench.summary import write_summary

        written = write_summary(plan, workload, out=args.out, results=results, command=command, method_command=method_command, console=console)
        console.print(f"summary: {', '.join(str(p) for p in written)}")

    def after_round(upto: int) -> None:
        # The summary between rounds is a convenience: whatever goes wrong writing it (a full
        # disk, a file open elsewhere, a bug) must not stop hours of benchmark. Say so and go
        # on; the next round or --report-only writes it.
        try:
            summary(upto)
        except Exception as exc:  # noqa: BLE001 - see above
            console.print(f"bench: could not write the summary after round {upto}: {type(exc).__name__}: {exc}")

    if args.report_only:
        summary()
        return 0
    deadline = time.time() + args.timeout if args.timeout else None
    try:
        finished = run_bench(plan, workload, console, deadline=deadline, after_round=after_round)
    except KeyboardInterrupt:
        console.print("bench interrupted; the summary covers the trials done. Rerun the same command to resume:")
        console.print(f"  {command}", markup=False, highlight=False, soft_wrap=True)
        summary()
        return 130
    if not finished:
        summary()
    return 0
