"""Run one config through depth -> prune -> distill (+QAT) -> cluster -> export -> quantize -> measure.

Quantization runs on the exported ONNX graph (ONNX Runtime's quantizer), so it comes after export:
the int8 model is the one that ships, and ``torch.ao.quantization`` (deprecated) is never used.
Every final number is measured on the file written to ``ctx.workdir / "model.onnx"``.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path

from torch import nn

from objectives import metrics
from stages._base import OnnxFile, PipelineResult, StageRecord, timed
from stages._context import Context
from stages.cluster import Cluster
from stages.config import PipelineConfig
from stages.depth import Depth
from stages.distill import Distill, checkpointed_step, trained_epochs, training_plan
from stages.export import EXPORT_FORMATS, Export, TracedGraph, trace_onnx
from stages.measure import best_latency, measure_onnx, measure_torch, onnx_sizes, thread_counts
from stages.prune import Prune
from stages.quant_modes import QUANT_MODES
from stages.quantize import Quantize
from stages.teacher import teacher_logits

# Called once the structural stages (depth, prune) are done, with the student's torch metrics
# (params, macs, ...) and the training samples distillation is to see (``samples_seen``, 0 when
# it does not run), before any training; the search raises from it to skip a config that is
# already dominated, and counts what a trial it stops during training saw.
AfterPrune = Callable[[dict[str, float]], None]

# Called with the ONNX metrics of the untrained structural student (``untrained_metrics``) right
# before ``after_prune``: what its ratio will be, measured in seconds instead of estimated.
OnUntrained = Callable[[dict[str, float]], None]

# The torch.export file a trial leaves beside its ONNX artifact when it is not quantized.
TORCH_ARTIFACT = EXPORT_FORMATS["pt2"].file_name


def run_pipeline(
    config: PipelineConfig,
    ctx: Context,
    *,
    after_prune: AfterPrune | None = None,
    on_untrained: OnUntrained | None = None,
    untrained_latency: bool = False,
    torch_artifact: bool = True,
) -> PipelineResult:
    """Compress a copy of ``ctx.teacher`` as ``config`` says and measure the exported artifact.

    ``on_untrained`` hears ``untrained_metrics`` of the structural student (with latency when
    ``untrained_latency``) before any training.

    Returns the final metrics (ONNX Runtime, on the artifact) and a record after each stage that
    ran: torch metrics after depth/prune/distill/cluster (validation accuracy only where no
    distillation follows, gzip bytes after the last), the exported file's size after export (when
    quantization follows), ONNX Runtime metrics of the final file.
    """
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    records: list[StageRecord] = []
    model: nn.Module = copy.deepcopy(ctx.teacher).to(ctx.device).eval()

    qat = QUANT_MODES[config.quantize.mode].fake_quant_training
    # A watched stage reports validation accuracy at the end of its budget: keep that number
    # rather than measure the same model again (not after QAT, which reports the accuracy with
    # fake quantization, before it is stripped).
    reported: dict[str, float] = {}
    if ctx.on_progress is not None:
        ctx = dataclasses.replace(ctx, on_progress=_remember_final(ctx.on_progress, reported))
    torch_stages = [
        (Depth(config.depth), config.depth.fraction > 0 or config.depth.cut > 0),
        (Prune(config.prune), config.prune.ratio > 0 or config.prune.heads > 0),
        (Distill(config.distill, qat=qat), config.distill.epochs > 0),
        (Cluster(config.cluster), config.cluster.k > 0),
    ]
    # The structural stages (depth, prune) fix the student's shape: ``after_prune`` hears its
    # metrics once they are done, before any training.
    structural = {"depth", "prune"}
    heard = after_prune is None and on_untrained is None
    after_prune = after_prune or (lambda _: None)
    enabled_names = [stage.name for stage, enabled in torch_stages if enabled]
    samples = 0
    traced: TracedGraph | None = None
    for stage, enabled in torch_stages:
        if stage.name == "distill" and enabled:
            steps, batch_size = training_plan(config.distill, model, ctx)
            # Steps a rung checkpoint holds were trained (and counted) by an earlier run.
            samples = (steps - checkpointed_step(ctx.rung_checkpoint, steps)) * batch_size
        if stage.name not in structural and not heard:
            heard = True
            if on_untrained is not None:
                measured, traced = untrained_metrics(model, config, ctx, latency=untrained_latency)
                on_untrained(measured)
            pruned = records[-1].metrics if records else measure_torch(model, ctx, accuracy=False)
            after_prune({**pruned, metrics.SAMPLES_SEEN: float(samples)})  # type: ignore[misc]
        if not enabled:
            continue
        if stage.name == "distill" and config.distill.alpha > 0 and ctx.teacher_logits is None:
            logits = teacher_logits(
                ctx.teacher, ctx.data.train, device=ctx.device, batch_size=ctx.eval_batch_size
            )
            ctx = dataclasses.replace(ctx, teacher_logits=logits)
        model, seconds = timed(lambda s=stage: s.run(model, ctx))  # type: ignore[misc]
        known = reported.get(stage.name) if not (qat and stage.name == "distill") else None
        # Distillation measures the student it trains: the accuracy of what it starts from (a
        # validation pass, as long as several seconds of a trial) tells the search nothing.
        # Compressibility (gzip bytes) is recorded for the module that is exported: sparsity and
        # clustering survive every later torch stage, and the intermediate values tell nothing.
        later = enabled_names[enabled_names.index(stage.name) + 1 :]
        stage_metrics = measure_torch(
            model, ctx, accuracy=known is None and "distill" not in later, gzip_bytes=not later
        )
        if known is not None:
            stage_metrics[metrics.VAL_ACC] = known
            stage_metrics[metrics.N_VAL] = float(len(ctx.data.val))
        if stage.name == "distill" and config.distill.size_boost > 1:
            stage_metrics[metrics.EPOCHS] = trained_epochs(config.distill, model, ctx)
        if stage.name == "distill":
            stage_metrics[metrics.SAMPLES_SEEN] = float(samples)
        records.append(StageRecord(stage.name, seconds, stage_metrics))

    model = model.cpu().eval()
    # Written from the untrained student's graph where it was traced (TracedGraph: the same
    # file as tracing the trained module again, without the trace).
    exported, export_s = timed(lambda: Export(config.export, traced=traced).run(model, ctx))
    assert isinstance(exported, OnnxFile)
    if config.quantize.mode != "none":
        # The fp32 file is an intermediate: its accuracy is the module's (measured above) and
        # only the quantized file is timed, so record its size alone.
        records.append(StageRecord("export", export_s, onnx_sizes(exported.path, ctx, torch_model=model)))
    final, quant_s = timed(lambda: Quantize(config.quantize).run(exported, ctx))
    assert isinstance(final, OnnxFile)
    final_metrics, measure_s = timed(lambda: measure_onnx(final.path, ctx, torch_model=model))
    assert isinstance(final_metrics, dict)
    last = "quantize" if config.quantize.mode != "none" else "export"
    records.append(StageRecord(last, quant_s + (0 if last == "quantize" else export_s), final_metrics))
    records.append(StageRecord("measure", measure_s, {}))
    if torch_artifact and config.quantize.mode == "none":
        EXPORT_FORMATS["pt2"].writer(model, ctx.data.example_input(), ctx.workdir / TORCH_ARTIFACT)
    return PipelineResult(config=config, metrics=final_metrics, stages=records, artifact=final.path)


def untrained_metrics(
    model: nn.Module, config: PipelineConfig, ctx: Context, *, latency: bool = False
) -> tuple[dict[str, float], TracedGraph]:
    """What ``model`` (the structural student, untrained) measures once exported and in its
    number format: file bytes and params / MACs, and with ``latency`` its ONNX Runtime latency
    at its best thread count, the teacher's timed interleaved. Training changes weights, not
    shapes or formats, so these are the trained file's figures to within the quantizer's
    rounding, known seconds after pruning. Written under ``ctx.workdir / "untrained"``; also
    returns the traced graph, which the trained student's export is written from."""
    student = copy.deepcopy(model).cpu().eval()
    sub = dataclasses.replace(ctx, workdir=ctx.workdir / "untrained")
    sub.workdir.mkdir(parents=True, exist_ok=True)
    traced = trace_onnx(student, ctx.data.example_input(), opset=config.export.opset)
    exported = Export(config.export, traced=traced).run(student, sub)
    final = Quantize(config.quantize).run(exported, sub)
    assert isinstance(exported, OnnxFile) and isinstance(final, OnnxFile)
    result = onnx_sizes(final.path, sub, torch_model=student)
    if latency:
        (ms, threads), teacher = best_latency(
            final.path,
            ctx.baseline_onnx,
            ctx.data.example_input(1).numpy(),
            ctx.latency_threads or thread_counts(),
            runs=ctx.latency_runs,
            budget_s=ctx.latency_budget_s,
        )
        result[metrics.LATENCY_MS], result[metrics.LATENCY_THREADS] = ms, float(threads)
        if teacher is not None:
            result[metrics.TEACHER_LATENCY_MS] = teacher[0]
    return result, traced


def _remember_final(
    callback: Callable[[str, float, float], None], final: dict[str, float]
) -> Callable[[str, float, float], None]:
    """``callback``, also noting each stage's accuracy at the end of its budget in ``final``."""

    def on_progress(stage: str, fraction: float, val_acc: float) -> None:
        if fraction >= 1.0:
            final[stage] = val_acc
        callback(stage, fraction, val_acc)

    return on_progress


def measure_baseline(ctx: Context, workdir: Path) -> tuple[Path, dict[str, float]]:
    """Export the teacher as fp32 ONNX once and measure it: the reference of every ratio."""
    teacher_ctx = dataclasses.replace(ctx, workdir=workdir, baseline_onnx=None)
    workdir.mkdir(parents=True, exist_ok=True)
    teacher = ctx.teacher.cpu().eval()
    exported = Export(PipelineConfig().export).run(teacher, teacher_ctx)
    metrics = measure_onnx(exported.path, teacher_ctx, torch_model=teacher)
    ctx.teacher.to(ctx.device)
    return exported.path, metrics

