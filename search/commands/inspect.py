"""``mcaas-search inspect``: the pre-flight analysis of a teacher on its own (what structural
pruning can do, which blocks can go, operators, latency per thread count, epoch time, data size):
what a study over this workload would search, before it spends anything."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from objectives import TARGETS
from search.commands import add_workload_arguments, spec_from_args
from search.trials.context import (
    cached_analysis,
    make_context,
    measure_baseline_into,
    trial_threads,
)
from search.workloads import load_workload, pick_device
from search.workloads.analysis import Analysis
from search.workloads.workload import workload_space
from spaces import fit_space


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the analysis as JSON")
    parser.add_argument(
        "--target",
        choices=TARGETS,
        default="size",
        help="the target a study would maximise: a latency study leaves out number formats slower than fp32 here",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("studies") / "inspect",
        help="folder for the teacher's exported fp32 file the analysis measures",
    )


def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    console = Console(stderr=True)
    workload = load_workload(spec, device=pick_device(args.device))
    threads = trial_threads(workload, jobs=1)
    torch.set_num_threads(threads)
    ctx = make_context(workload, args.workdir, threads=threads, seed=args.seed, need_logits=False)
    with console.status("measuring the teacher's exported fp32 artifact"):
        ctx, teacher = measure_baseline_into(ctx, args.workdir / "baseline")
    assert ctx.baseline_onnx is not None
    with console.status("analysing the teacher: what prunes, which blocks can go, how long an epoch takes"):
        analysis = cached_analysis(workload, ctx, ctx.baseline_onnx)
    space = fit_space(workload_space(spec), analysis.facts, target=args.target)
    if args.json:
        summary = {
            "workload": workload.name,
            "teacher": teacher,
            "analysis": analysis.to_dict(),
            "space": dict(space.describe()),
        }
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    out = Console()
    print_analysis(out, analysis, title=f"{workload.name}: teacher {teacher['val_acc']:.2f} % validation accuracy")
    table = Table(title=f"the search space a study of it searches (--target {args.target})")
    table.add_column("setting")
    table.add_column("values")
    for key, text in space.describe():
        table.add_row(key, text)
    out.print(table)
    return 0


def print_analysis(console: Console, analysis: Analysis, *, title: str) -> None:
    """The analysis as a two-column table."""
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("finding")
    for what, finding in analysis.rows():
        table.add_row(what, finding)
    console.print(table)
