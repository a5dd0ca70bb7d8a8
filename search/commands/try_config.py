"""``mcaas-search try``: run one pipeline config on a workload and print its measured metrics."""

from __future__ import annotations

import argparse
import math
import sys
import traceback
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from objectives import ratios
from search.commands import add_json_argument, add_workload_arguments, spec_from_args
from search.errors import USER_ERRORS, UserError, first_line
from search.reporting.as_json import write_json
from search.reporting.format import drop_text
from search.study.scoring import paired_val_drop
from search.trials.context import (
    cached_analysis,
    make_context,
    measure_baseline_into,
    trial_threads,
    with_analysis,
)
from search.trials.worker import raised_at
from search.workloads import WorkloadSpec, load_workload, pick_device, workload_space
from spaces import MIN_STEPS, min_epochs
from stages import Context
from stages.config import PipelineConfig, valid_keys
from stages.pipeline import run_pipeline

MAX_THREADS = 1024  # more is a typo, and torch would fail only after the workload loaded
# Where a failed run's traceback goes (in --workdir): the terminal gets one line.
FAILURE_LOG = "failure.log"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(parser)
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help="a pipeline setting, repeatable. Settings not given take the stage defaults, except "
        "the distillation budget (distill.epochs), which fits the workload: its search space's "
        f"profile_epochs (15 for the demo, 1 otherwise), and at least {MIN_STEPS} "
        "optimizer steps on a small dataset. Valid keys: " + ", ".join(valid_keys()),
    )
    add_json_argument(parser, "the metrics")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=Path("studies") / "try",
        help="folder for the artifacts of this run (model.onnx, baseline/)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch / ONNX Runtime threads (default: all cores)"
    )


def workload_defaults(spec: WorkloadSpec, train_size: int) -> PipelineConfig:
    """The config that settings not given on the command line come from: the stage defaults
    with a distillation budget that fits the data: the workload's search space's profile budget,
    and at least ``spaces.MIN_STEPS`` optimizer steps (one epoch of the demo's 1,077 training
    images is 9 steps: far too few to recover a pruned model)."""
    steps_per_epoch = max(1, math.ceil(train_size / Context.batch_size))
    epochs = max(workload_space(spec).profile_epochs, min_epochs(steps_per_epoch))
    return PipelineConfig.from_flat({"distill.epochs": float(epochs)})


def parse_settings(items: list[str], base: PipelineConfig | None = None) -> PipelineConfig:
    """``["prune.ratio=0.5", ...]`` -> a validated config, keys not given taken from ``base``
    (ConfigError on bad keys or values)."""
    values: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise UserError(f"--set expects STAGE.KEY=VALUE, but got {item!r}")
        values[key.strip()] = value.strip()
    return PipelineConfig.from_flat(values, base=base)


def run(args: argparse.Namespace) -> int:
    parse_settings(args.settings)  # bad --set values first, before anything else is looked at
    spec = spec_from_args(args)
    if args.threads is not None and not 1 <= args.threads <= MAX_THREADS:
        raise UserError(f"--threads must lie in [1, {MAX_THREADS}], but got {args.threads}")
    console = Console(stderr=True)
    workload = load_workload(spec, device=pick_device(args.device))
    config = parse_settings(args.settings, base=workload_defaults(spec, len(workload.data.train)))
    threads = args.threads or trial_threads(workload, jobs=1)
    torch.set_num_threads(threads)
    ctx = make_context(
        workload,
        args.workdir,
        threads=threads,
        seed=args.seed,
        need_logits=config.distill.epochs > 0 and config.distill.alpha > 0,
    )
    with console.status("measuring the teacher's exported fp32 artifact"):
        ctx, teacher = measure_baseline_into(ctx, args.workdir / "baseline")
    if config.depth.fraction > 0 or config.depth.cut > 0 or (config.prune.ratio > 0 and config.prune.method == "structured"):
        assert ctx.baseline_onnx is not None
        with console.status("analysing the teacher: what prunes, which blocks can go"):
            ctx = with_analysis(ctx, cached_analysis(workload, ctx, ctx.baseline_onnx))
    try:
        with console.status("running " + " ".join(f"{k}={v}" for k, v in sorted(config.to_flat().items()))):
            result = run_pipeline(config, ctx)
    except USER_ERRORS:
        raise
    except Exception as exc:  # the config does not run on this model: say why in one line
        return report_failure(exc, args.workdir / FAILURE_LOG)
    summary = {
        "config": config.to_flat(),
        "metrics": result.metrics,
        "teacher": teacher,
        "ratios": ratios(teacher, result.metrics),
        "stages": [r.to_dict() for r in result.stages],
        "artifact": str(result.artifact),
    }
    if args.json:
        write_json(summary)
    else:
        print_try_result(Console(), summary)
    return 0


def report_failure(exc: BaseException, log: Path) -> int:
    """A config that fails in the pipeline (the model, not the input, is at fault): one line on
    stderr (the first line of what a search records for such a trial), the traceback kept in
    ``log``; exit code 1."""
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(traceback.format_exception(exc)))
    reason = first_line(exc, typed=True) + raised_at(exc)
    print(f"mcaas-search: error: the pipeline failed: {reason} (traceback in {log})", file=sys.stderr)
    return 1


_FINAL_ROWS = (
    ("validation accuracy %", "val_acc", "{:.2f}"),
    ("test accuracy %", "test_acc", "{:.2f}"),
    ("file bytes", "bytes", "{:,.0f}"),
    ("gzip bytes", "gzip_bytes", "{:,.0f}"),
    ("params", "params", "{:,.0f}"),
    ("MACs", "macs", "{:,.0f}"),
    ("latency ms (batch 1, ORT)", "latency_ms", "{:.3f}"),
)


def print_try_result(console: Console, summary: dict) -> None:
    """The final metrics beside the teacher's, the ratios, and the per-stage records."""
    metrics, teacher = summary["metrics"], summary["teacher"]
    final = Table(title="model vs teacher (measured on the exported artifacts in ONNX Runtime)")
    for col in ("metric", "model", "teacher"):
        final.add_column(col, justify="left" if col == "metric" else "right")
    for label, key, fmt in _FINAL_ROWS:
        # The teacher's latency is the one measured interleaved with the model in the same run.
        ref = metrics.get("teacher_latency_ms", teacher[key]) if key == "latency_ms" else teacher[key]
        final.add_row(label, fmt.format(metrics[key]), fmt.format(ref))
    console.print(final)
    console.print(
        "ratios vs teacher: "
        + ", ".join(f"{k} {v:.2f}x" for k, v in summary["ratios"].items())
        + f"; accuracy drop {drop_text(teacher['val_acc'] - metrics['val_acc'], paired_val_drop(metrics))}"
        + " pt (val, ± its 95 % interval), "
        + f"{teacher['test_acc'] - metrics['test_acc']:.2f} pt (test)"
    )
    per_stage = Table(title="after each stage (prune/distill/cluster: PyTorch; export/quantize: ONNX Runtime)")
    columns = [
        ("val acc %", "val_acc", "{:.2f}"),
        ("bytes", "bytes", "{:,.0f}"),
        ("gzip bytes", "gzip_bytes", "{:,.0f}"),
        ("params", "params", "{:,.0f}"),
        ("latency ms", "latency_ms", "{:.3f}"),
    ]
    if any("epochs" in record["metrics"] for record in summary["stages"]):  # distill.size_boost
        columns.append(("epochs", "epochs", "{:.3g}"))
    per_stage.add_column("stage", no_wrap=True, min_width=len("quantize"))
    for col in ("seconds", *(title for title, _, _ in columns)):
        per_stage.add_column(col, justify="right", overflow="fold")
    for record in summary["stages"]:
        m = record["metrics"]
        per_stage.add_row(
            record["stage"],
            f"{record['seconds']:.1f}",
            *(fmt.format(m[key]) if key in m else "-" for _, key, fmt in columns),
        )
    console.print(per_stage)
    console.print(f"artifact: {summary['artifact']}")
