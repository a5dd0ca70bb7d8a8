"""Where a MobileNetV2 trial's time goes outside training: BENCHMARKS.md's issue-36 export figures.

Runs three trials of a ``mobilenet_v2`` teacher on an image folder (28 px) through
``stages.pipeline.run_pipeline`` as a search does, distillation held at 0.2 epochs, and writes
the wall and CPU seconds of each stage and of the work between stages (the untrained student's
trace, export, quantization and latency; the torch metrics; the files' size records) to ``OUT``
as JSON.
Run it once with the project tree to measure on ``PYTHONPATH``, from that tree's root:

    PYTHONPATH=$PWD python studies/benchmarks/fmnist-mobilenet_v2/trial_cost.py \\
        TEACHER.pt DATA_ROOT WORKDIR OUT.json

Timings of two trees are comparable only when run alternately on the same machine state.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import stages.pipeline as pipeline
from search.trials.context import cached_analysis, make_context, measure_baseline_into, trial_threads, with_analysis
from search.workloads import WorkloadSpec, load_workload, pick_device
from stages.config import PipelineConfig

CUT = "depth.cut=7,depth.fraction=0.73,prune.ratio=0.05,prune.round_to=8,distill.epochs=0.2,quantize.mode=int8-static"
# (label, config, whether the untrained student is measured before training, as the skip gate
# and the multi-fidelity rungs do)
TRIALS = [
    ("cut 7 stages + 73 % of blocks, int8-static, untrained measured", CUT, True),
    ("the same config again, untrained not measured", CUT, False),
    ("50 % pruned, int8-qat, untrained measured",
     "prune.ratio=0.5,prune.round_to=8,distill.epochs=0.2,quantize.mode=int8-qat", True),
]
WALL: dict[str, float] = collections.defaultdict(float)
CPU: dict[str, float] = collections.defaultdict(float)


def timing(label: Callable[..., str], fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, adding the wall and CPU seconds of each call under ``label(*args)``."""

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            WALL[label(*args)] += time.perf_counter() - wall
            CPU[label(*args)] += time.process_time() - cpu

    return timed


def instrument() -> None:
    for cls in (pipeline.Depth, pipeline.Prune, pipeline.Distill, pipeline.Cluster, pipeline.Quantize):
        cls.run = timing(lambda self, *_: self.name, cls.run)  # type: ignore[method-assign]
    pipeline.Export.run = timing(  # type: ignore[method-assign]
        lambda self, model, ctx: "export (untrained student)" if ctx.workdir.name == "untrained" else "export",
        pipeline.Export.run,
    )
    for name, label in [
        ("trace_onnx", "trace (untrained student)"),
        ("untrained_metrics", "untrained student (trace + export + quantize + latency)"),
        ("measure_torch", "torch metrics between stages"),
        ("onnx_sizes", "file sizes and params/MACs"),
        ("measure_onnx", "measure"),
    ]:
        if hasattr(pipeline, name):  # trace_onnx: where the untrained student's graph is kept
            setattr(pipeline, name, timing(lambda *_, label=label: label, getattr(pipeline, name)))


def main(teacher: Path, data_root: Path, workdir: Path, out: Path) -> None:
    warnings.filterwarnings("ignore")
    instrument()
    spec = WorkloadSpec(model="mobilenet_v2", weights=teacher, dataset="imagefolder", data_root=data_root,
                        image_size=28, allow_weak_teacher=True)
    workload = load_workload(spec, device=pick_device("cpu"), progress=False)
    threads = trial_threads(workload, jobs=1)
    torch.set_num_threads(threads)
    cache = workdir / "cache"
    ctx = make_context(workload, workdir, threads=threads, cache_dir=cache)
    wall, cpu = time.perf_counter(), time.process_time()
    ctx, _ = measure_baseline_into(ctx, workdir / "baseline")
    result: dict[str, Any] = {"baseline": {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu}}
    ctx = with_analysis(ctx, cached_analysis(workload, ctx, ctx.baseline_onnx, cache_dir=cache))  # type: ignore[arg-type]
    result["sizes"] = {"train": len(ctx.data.train), "val": len(ctx.data.val), "test": len(ctx.data.test)}
    result["trials"] = []
    for i, (label, text, untrained) in enumerate(TRIALS):
        WALL.clear()
        CPU.clear()
        config = PipelineConfig.from_flat(dict(kv.split("=") for kv in text.split(",")))
        wall, cpu = time.perf_counter(), time.process_time()
        res = pipeline.run_pipeline(config, dataclasses.replace(ctx, workdir=workdir / f"t{i}"),
                                    on_untrained=(lambda _: None) if untrained else None, untrained_latency=True)
        row = {"label": label, "config": text, "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
               "parts_wall": dict(WALL), "parts_cpu": dict(CPU),
               "metrics": {k: res.metrics[k] for k in ("val_acc", "bytes", "latency_ms")}}
        result["trials"].append(row)
        print(json.dumps(row), flush=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*(Path(a) for a in sys.argv[1:]))
