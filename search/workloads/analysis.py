"""The pre-flight analysis of a teacher: what can be compressed and what it costs, found once per
study before any trial and stored with it (``mcaas-search inspect`` shows it on its own).

It probes structural pruning (layers torch-pruning breaks on are frozen, with the reason, and the
rest still prunes), finds and ranks the removable blocks, counts operators, times the teacher at
each thread count and in each searched number format (a format whose file runs slower than fp32
on this machine leaves a latency study's space), times one training epoch, and sizes the data. The study's search space is fitted
to it (``spaces.fit_space``), so a model nobody tuned the search for gets a search, not a study of
failures.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from objectives import images_to_decide, zero_drop_upper
from spaces import ModelFacts
from stages import Context, OnnxFile, StageError, count_params_macs, weight_layers
from stages.config import QuantizeConfig
from stages.depth import find_cuts, most_removable, probe_inputs, rank_blocks
from stages.measure import (
    OnnxRunner,
    interleaved_medians,
    optimized_op_count,
    thread_counts,
)
from stages.prune_probe import probe_structured
from stages.quant_modes import QUANT_MODES
from stages.quantize import Quantize

# Bumped when what the analysis finds changes, so a cached analysis of an older version is redone.
VERSION = 7

# A number format whose teacher file runs more than this much slower than fp32 (best thread count
# against best) is slow here: two medians of the same file differ by a few percent.
SLOW_FORMAT_MARGIN = 0.05

# Optimizer steps timed to estimate one epoch (after one untimed warm-up step).
TIMED_STEPS = 3


@dataclasses.dataclass(frozen=True)
class Analysis:
    """What the pre-flight analysis found (JSON-able through ``to_dict`` / ``from_dict``)."""

    structural: bool
    structural_reason: str | None
    frozen_layers: dict[str, str]
    prunable_layers: int
    weight_layers: int
    blocks: list[tuple[str, float]]  # removable blocks, least important first, loss increase
    cuts: list[list[str]]  # cuts[k]: the trailing stages a cut k + 1 deep replaces
    params: int
    macs: int
    operators: int
    latency_ms: dict[int, float]  # the teacher's fp32 file at each thread count
    epoch_seconds: float
    steps_per_epoch: int
    batch_size: int
    train_size: int
    val_size: int
    test_size: int
    seconds: float
    attention_heads: list[int] = dataclasses.field(default_factory=list)  # per attention layer
    # quantize.mode -> the teacher's file in that format, median ms at its best thread count
    # (modes that share a quantizer share a file; a mode that failed on the teacher is absent)
    format_latency_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    # How many removable blocks, least important first, can go together while the output still
    # depends on the input (a ViT keeps one encoder layer); None: not measured (older analyses).
    removable_at_once: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["blocks"] = [[name, _finite(score)] for name, score in self.blocks]
        d["latency_ms"] = {str(k): v for k, v in self.latency_ms.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Analysis:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in fields}
        values["blocks"] = [(str(name), math.inf if score is None else float(score)) for name, score in d["blocks"]]
        values["latency_ms"] = {int(k): float(v) for k, v in d["latency_ms"].items()}
        values["cuts"] = [list(cut) for cut in d.get("cuts", [])]
        return cls(**values)

    @property
    def facts(self) -> ModelFacts:
        """What the search space is fitted to."""
        return ModelFacts(
            structural=self.structural,
            removable_blocks=len(self.blocks),
            removable_at_once=self.removable_at_once,
            cuttable_stages=len(self.cuts),
            attention_layers=len(self.attention_heads),
            steps_per_epoch=self.steps_per_epoch,
            epoch_seconds=self.epoch_seconds,
            slow_modes=self.slow_modes(),
        )

    def slow_modes(self) -> tuple[str, ...]:
        """Modes whose teacher file runs slower than fp32 (``"none"``) here, beyond the margin."""
        fp32 = self.format_latency_ms.get("none")
        if fp32 is None:
            return ()
        limit = fp32 * (1 + SLOW_FORMAT_MARGIN)
        return tuple(mode for mode, ms in self.format_latency_ms.items() if ms > limit)

    @property
    def stage_cuts(self) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(cut) for cut in self.cuts)

    @property
    def block_ranking(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.blocks)

    def fastest_threads(self) -> int:
        return min(self.latency_ms, key=self.latency_ms.__getitem__)

    def rows(self, *, ranked: bool = True) -> list[tuple[str, str]]:
        """``(what, finding)`` rows for a table; ``ranked=False`` (a model with random weights)
        lists the removable blocks without their importance, which only trained weights give."""
        if self.structural:
            pruning = f"{self.prunable_layers} of {self.weight_layers} weight layers can be thinned"
        else:
            pruning = f"not possible ({self.structural_reason}); unstructured sparsity instead"
        rows = [
            ("parameters / MACs", f"{self.params:,} / {self.macs:,}"),
            ("ONNX operators (optimized graph)", str(self.operators)),
            ("structural pruning", pruning),
        ]
        for layer, reason in self.frozen_layers.items():
            rows.append((f"  left whole: {layer}", reason))
        if self.blocks and ranked:
            order = ", ".join(f"{name} ({_shown(score)})" for name, score in self.blocks)
            rows.append((f"removable blocks ({len(self.blocks)})", f"least important first (loss increase): {order}"))
        elif self.blocks:
            names = ", ".join(sorted((name for name, _ in self.blocks), key=_module_order))
            rows.append((f"removable blocks ({len(self.blocks)})", f"{names} (not ranked: importance needs a trained teacher)"))
        else:
            rows.append(("removable blocks", "none (no residual block keeps its input's shape)"))
        if self.removable_at_once is not None and self.removable_at_once < len(self.blocks):
            rows.append(("  removed together, at most", f"{self.removable_at_once} (without the rest the output no longer depends on the input)"))
        if self.cuts:
            deepest = ", ".join(self.cuts[-1])
            rows.append((f"trailing stages that can be cut ({len(self.cuts)})", f"the last first, a new classifier reading what is left: {deepest}"))
        else:
            rows.append(("trailing stages that can be cut", "none"))
        if self.attention_heads:
            heads = sorted(set(self.attention_heads))
            rows.append((f"attention layers ({len(self.attention_heads)})",
                         f"{'/'.join(map(str, heads))} heads each; whole heads can be removed (prune.heads)"))
        latency = ", ".join(f"{ms:.3f} ms @{t}t" for t, ms in sorted(self.latency_ms.items()))
        rows.append(("teacher latency (fp32, batch 1)", f"{latency}; fastest on {self.fastest_threads()} thread(s)"))
        fp32 = self.format_latency_ms.get("none")
        if fp32 is not None:
            slow = set(self.slow_modes())
            formats = ", ".join(
                f"{mode} {fp32 / ms:.2f}x{' (slower: not searched for latency)' if mode in slow else ''}"
                for mode, ms in self.format_latency_ms.items()
                if mode != "none"
            )
            rows.append(("teacher in each format, speed vs fp32", formats or "no format could be built"))
        rows += [
            ("one training epoch", f"{self.epoch_seconds:.1f} s ({self.steps_per_epoch} steps of {self.batch_size})"),
            ("data", f"{self.train_size} train / {self.val_size} validation / {self.test_size} test"),
            ("validation split vouches for", f"a drop bound of {zero_drop_upper(self.val_size):.2f} pt at best "
             "(the 95 % interval of a trial that agrees with the teacher on every image)"),
        ]
        return rows


def val_split_note(n_val: int, n_pool: int, allowed_drop: float, *, flag_per_point: float = 1.0) -> str | None:
    """One line when a validation split of ``n_val`` images (carved from ``n_pool`` training
    images) cannot decide an ``allowed_drop``-point bound: even a trial that agrees with the
    teacher on every image has a 95 % interval reaching past it, so the ``confident`` rule can
    recommend nothing. It names the remedies: the ``--val-fraction`` that would decide it (when
    the data has the images), more data, or the ``--max-drop`` this split can decide
    (``flag_per_point`` turns points into ``--max-drop``'s unit: 100 / teacher accuracy for a
    relative bound). None when the split decides the bound."""
    upper = zero_drop_upper(n_val)
    if upper <= allowed_drop:
        return None
    needed = images_to_decide(allowed_drop)
    remedies = ["more data"]
    if needed is not None and needed < n_pool:
        fraction = math.ceil(1000 * needed / n_pool) / 1000
        remedies.insert(0, f"--val-fraction {fraction:g} ({needed} images)")
    widest = math.ceil(100 * upper * flag_per_point) / 100
    return (
        f"the validation split ({n_val} images) cannot decide a {allowed_drop:.2f}-point bound: a trial "
        f"that agrees with the teacher on every image is vouched for only within {upper:.2f} pt, "
        f"so no trial can be recommended; use {', '.join(remedies)}, or --max-drop {widest:g}"
    )


def _module_order(name: str) -> list[tuple[int, int | str]]:
    """Sort key putting ``features.3`` before ``features.10``, as the model defines them."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in name.split(".")]


def _finite(score: float) -> float | None:
    return score if math.isfinite(score) else None


def _shown(score: float) -> str:
    return f"{score:+.3f}" if math.isfinite(score) else "breaks the model"


def analyze(ctx: Context, baseline_onnx: Path) -> Analysis:
    """Analyse ``ctx.teacher`` on ``ctx.data`` (the teacher is not changed); ``baseline_onnx`` is
    its exported fp32 file (operators and latency are measured on it)."""
    started = time.perf_counter()
    teacher = ctx.teacher
    probe = probe_structured(teacher, ctx)
    example = ctx.data.example_input(1).to(ctx.device)
    params, macs = count_params_macs(teacher, example)
    blocks = rank_blocks(teacher, ctx)
    at_once = most_removable(teacher, [name for name, _ in blocks], probe_inputs(ctx))
    cuts = find_cuts(teacher, example, ctx.data.num_classes)
    counts = thread_counts()
    with tempfile.TemporaryDirectory(dir=baseline_onnx.parent, prefix=".formats-") as tmp:
        files = {"none": baseline_onnx, **_format_files(ctx, baseline_onnx, Path(tmp))}
        paths = list(dict.fromkeys(files.values()))
        runners = [OnnxRunner(path, t) for path in paths for t in counts]
        medians = interleaved_medians(runners, ctx.data.example_input(1).numpy(), runs=50, budget_s=len(runners))
    n = len(counts)
    per_file = {path: medians[i * n : (i + 1) * n] for i, path in enumerate(paths)}
    latency = dict(zip(counts, per_file[baseline_onnx]))
    format_latency = {mode: min(per_file[path]) for mode, path in files.items()}
    steps = math.ceil(len(ctx.data.train) / ctx.batch_size)
    return Analysis(
        structural=probe.possible,
        structural_reason=probe.reason,
        frozen_layers=probe.frozen,
        prunable_layers=len(probe.pruned_layers),
        weight_layers=len(weight_layers(teacher)),
        blocks=blocks,
        removable_at_once=at_once,
        cuts=[list(cut) for cut in cuts],
        params=params,
        macs=macs,
        operators=optimized_op_count(baseline_onnx),
        latency_ms=latency,
        epoch_seconds=_step_seconds(ctx) * steps,
        steps_per_epoch=steps,
        batch_size=ctx.batch_size,
        train_size=len(ctx.data.train),
        val_size=len(ctx.data.val),
        test_size=len(ctx.data.test),
        seconds=time.perf_counter() - started,
        attention_heads=[m.num_heads for m in teacher.modules() if isinstance(m, nn.MultiheadAttention)],
        format_latency_ms=format_latency,
    )


def _format_files(ctx: Context, fp32: Path, workdir: Path) -> dict[str, Path]:
    """quantize.mode -> the teacher's fp32 file converted by that mode's quantizer in ``workdir``,
    for every mode the default space searches (one file per quantizer: int8-qat's is int8-static's).
    A mode whose conversion fails on the teacher is left out: its trials report that themselves."""
    files: dict[str, Path] = {}
    built: dict[object, Path] = {}
    for mode, entry in QUANT_MODES.items():
        if mode == "none" or not entry.searched_by_default:
            continue
        if entry.quantizer not in built:
            stage = Quantize(QuantizeConfig(mode=mode))
            try:  # the trials' own stage: converts, then checks that the file runs
                out = stage.run(OnnxFile(fp32), dataclasses.replace(ctx, workdir=workdir / mode))
            except StageError:
                continue
            built[entry.quantizer] = out.path
        files[mode] = built[entry.quantizer]
    return files


def _step_seconds(ctx: Context) -> float:
    """Seconds of one training step of the teacher (a copy) at ``ctx.batch_size``."""
    model = copy.deepcopy(ctx.teacher).to(ctx.device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    batches = ctx.data.train.batches(ctx.batch_size)
    timings = []
    for i, (x, y) in enumerate(batches):
        if i > TIMED_STEPS:
            break
        start = time.perf_counter()
        optimizer.zero_grad()
        logits = model(x.to(ctx.device))
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        nn.functional.cross_entropy(logits, y.to(ctx.device)).backward()
        optimizer.step()
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        if i > 0:  # the first step warms up
            timings.append(time.perf_counter() - start)
    return sum(timings) / len(timings) if timings else 0.0
