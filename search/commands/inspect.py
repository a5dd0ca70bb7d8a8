"""``mcaas-search inspect``: the pre-flight analysis of a teacher on its own (what structural
pruning can do, which blocks can go, operators, latency per thread count, epoch time, data size):
what a study over this workload would search, before it spends anything."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from objectives import TARGETS, metrics
from search.commands import add_json_argument, add_workload_arguments, spec_from_args
from search.reporting.as_json import write_json
from search.trials.context import (
    cached_analysis,
    make_context,
    measure_baseline_into,
    trial_threads,
)
from search.workloads import Analysis, load_workload, pick_device, workload_space
from spaces import fit_space

# What random weights measure but mean nothing by.
ACCURACY_KEYS = (metrics.VAL_ACC, metrics.TEST_ACC)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(
        parser,
        weights_help="teacher checkpoint (a state_dict); without it (the demo aside) the model is "
        "inspected with random weights: everything but the block ranking and the accuracy",
    )
    add_json_argument(parser, "the analysis")
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


def teacher_would_add(model: str, dataset: str) -> str:
    """What ``inspect`` of an untrained model leaves out, and how to get the teacher that gives it."""
    return (
        "without --weights the model has random weights: a trained teacher adds the importance "
        "ranking of the removable blocks and the accuracy; train one with `mcaas-search train "
        f"--model {model} --dataset {dataset} --out CHECKPOINT.pt` and inspect it with --weights"
    )


def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    console = Console(stderr=True)
    # Everything but the block ranking and the accuracy needs no trained weights: a user may ask
    # what a model offers before spending minutes to hours on training it.
    untrained = spec.weights is None and not spec.is_demo
    workload = load_workload(spec, device=pick_device(args.device), untrained=untrained)
    threads = trial_threads(workload, jobs=1)
    torch.set_num_threads(threads)
    ctx = make_context(workload, args.workdir, threads=threads, seed=args.seed, need_logits=False)
    with console.status("measuring the teacher's exported fp32 artifact"):
        ctx, teacher = measure_baseline_into(ctx, args.workdir / "baseline")
    assert ctx.baseline_onnx is not None
    with console.status("analysing the teacher: what prunes, which blocks can go, how long an epoch takes"):
        analysis = cached_analysis(workload, ctx, ctx.baseline_onnx)
    space = fit_space(workload_space(spec), analysis.facts, target=args.target)
    note = teacher_would_add(spec.model_name, spec.dataset_name) if untrained else None
    if args.json:
        summary = {
            "workload": workload.name,
            "teacher": teacher,
            "analysis": analysis.to_dict(),
            "space": dict(space.describe()),
            "untrained": untrained,
            "note": note,
        }
        if untrained:  # random weights: their accuracy and block scores say nothing
            summary["teacher"] = {k: v for k, v in teacher.items() if k not in ACCURACY_KEYS}
            summary["analysis"]["blocks"] = [[name, None] for name, _ in analysis.blocks]
        write_json(summary)
        return 0
    out = Console()
    title = (f"{workload.name}: untrained (random weights)" if untrained
             else f"{workload.name}: teacher {teacher['val_acc']:.2f} % validation accuracy")
    print_analysis(out, analysis, title=title, ranked=not untrained)
    table = Table(title=f"the search space a study of it searches (--target {args.target})")
    table.add_column("setting")
    table.add_column("values")
    for key, text in space.describe():
        table.add_row(key, text)
    out.print(table)
    if note is not None:
        out.print(f"note: {note}", markup=False, highlight=False)
    return 0


def print_analysis(console: Console, analysis: Analysis, *, title: str, ranked: bool = True) -> None:
    """The analysis as a two-column table (``ranked``: see ``Analysis.rows``)."""
    table = Table(title=title, show_header=False)
    table.add_column("what", style="bold")
    table.add_column("finding")
    for what, finding in analysis.rows(ranked=ranked):
        table.add_row(what, finding)
    console.print(table)
