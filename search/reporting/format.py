"""Plain-text formatting shared by the report page and the terminal tables: sizes, numbers, a
pipeline config in one line, trial counts by state and the ``export`` command line."""

from __future__ import annotations

import math
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from objectives import PairedDrop
from search.study import StudyInfo, TrialRecord
from search.study.scoring import accuracy_drop, paired_val_drop, recommended_record


def format_bytes(n: float | None) -> str:
    """``1.23 MB``-style size; ``-`` when unknown."""
    if n is None or not math.isfinite(n):
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f} B"


def format_number(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``; ``-`` when unknown or not finite."""
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "-"
    return format(value, spec)


def drop_text(drop: float | None, paired: PairedDrop | None) -> str:
    """``0.56±0.82``: a validation drop in points with the half-width of its 95 % interval (left
    out for records measured without the teacher's per-image results)."""
    text = format_number(drop, ".2f")
    if paired is None or text == "-":
        return text
    low, high = paired.interval()
    return f"{text}±{(high - low) / 2:.2f}"


def drop_legend(records: Iterable[TrialRecord]) -> str | None:
    """What the drop column's ``±`` means, when some of ``records`` carry paired counts."""
    paired = next((p for p in (paired_val_drop(r.metrics) for r in records) if p is not None), None)
    if paired is None:
        return None
    return (
        "drop pt: validation accuracy lost against the teacher, ± its 95 % interval "
        f"(paired, on the same {paired.n} images)"
    )


def interval_note(info: StudyInfo, pick: TrialRecord, paired: PairedDrop | None) -> str | None:
    """A sentence when the accuracy bound lies inside the recommended trial's 95 % interval: the
    validation split is too small to tell that trial from one that breaks the bound."""
    if paired is None:
        return None
    low, high = paired.interval()
    allowed = info.constraint.allowed_drop(info.teacher_acc)
    if high <= allowed:
        return None
    return (
        f"the bound ({allowed:.2f} pt) lies inside the 95 % interval of this drop "
        f"([{low:.1f}, {high:.1f}] pt on {paired.n} validation images): the validation split "
        "cannot tell this trial from one that breaks the bound; its test accuracy is the check"
    )


def passed_over_note(info: StudyInfo, records: Iterable[TrialRecord], pick: TrialRecord) -> str | None:
    """A sentence naming the trial the point estimate would have recommended, when the
    recommended ``pick`` is another one (the validation split cannot vouch for that trial)."""
    point = recommended_record(info, list(records), "point")
    if point is None or point.number == pick.number:
        return None
    paired = paired_val_drop(point.metrics)
    upper = "" if paired is None else f", its 95 % interval reaching {paired.interval()[1]:.2f} pt"
    return (
        f"trial {point.number} ({point.ratio(info.target):.2f}x) is within the bound only on its "
        f"measured drop ({format_number(accuracy_drop(info, point), '.2f')} pt{upper}), so it is "
        "not recommended; --select point takes it"
    )


# A distilled student rarely beats a well-trained teacher of its own family by more than a point
# or two (born-again networks gain about 1-2 pt on CIFAR-100); one further above it, beyond the
# noise of the validation split, says the teacher stopped short of what its architecture reaches.
UNDERTRAINED_GAIN_PT = 2.0


def teacher_note(info: StudyInfo, pick: TrialRecord, paired: PairedDrop | None) -> str | None:
    """A sentence when the recommended trial beats its teacher on validation by more than
    ``UNDERTRAINED_GAIN_PT`` (and, where the paired counts give one, by more than the 95 %
    interval's noise): the teacher is probably undertrained, a weak baseline for every ratio."""
    drop = accuracy_drop(info, pick)
    if drop is None or -drop <= UNDERTRAINED_GAIN_PT or (paired is not None and paired.interval()[1] >= 0):
        return None
    model, dataset = info.workload.get("model"), info.workload.get("dataset")
    train = "mcaas-search train" + ("" if model in (None, "demo") else f" --model {model} --dataset {dataset}")
    return (
        f"trial {pick.number} is {-drop:.2f} pt above its teacher on validation: the teacher is "
        "probably undertrained, so every ratio is measured against a weak baseline; train it "
        f"longer ({train} --epochs N, more epochs than it had) and search again"
    )


def settings_summary(config: Mapping[str, Any]) -> str:
    """The key settings of a pipeline config in one short line, stage by stage (defaults such
    as structured/global pruning left out; ``show`` and trials.csv list every setting)."""
    parts = []
    cut, fraction = config.get("depth.cut", 0) or 0, config.get("depth.fraction", 0) or 0
    if cut or fraction:
        depth = [f"cut {cut} stages"] if cut else []
        if fraction:
            depth.append(f"drop {fraction:.2f} of blocks")
        parts.append(", ".join(depth))
    ratio = config.get("prune.ratio", 0) or 0
    if ratio:
        prune = f"prune {ratio:.2f}"
        if config.get("prune.criterion"):
            prune += f" {config['prune.criterion']}"
        for key, default in (("prune.method", "structured"), ("prune.scope", "global")):
            if config.get(key, default) != default:
                prune += f" {config[key]}"
        if (config.get("prune.steps") or 1) > 1:
            prune += f" x{config['prune.steps']}"
        parts.append(prune)
    heads = config.get("prune.heads", 0) or 0
    if heads:
        parts.append(f"drop {heads:.2f} of heads")
    elif not ratio:
        parts.append("no pruning")
    epochs = config.get("distill.epochs", 0) or 0
    alpha = config.get("distill.alpha")
    if not epochs:
        parts.append("no training")
    elif alpha == 0:
        parts.append(f"fine-tune {epochs:.3g} ep")
    else:
        kd = f"KD {epochs:.3g} ep"
        if "distill.temperature" in config:
            kd += f" T{config['distill.temperature']:.3g}"
        if alpha is not None:
            kd += f" a{alpha:.2g}"
        parts.append(kd)
    if epochs and (config.get("distill.size_boost") or 1) > 1:
        parts[-1] += f" (up to x{config['distill.size_boost']:g} for a smaller student)"
    if config.get("cluster.k"):
        parts.append(f"k-means {config['cluster.k']}")
    mode = config.get("quantize.mode", "none")
    parts.append("fp32" if mode == "none" else str(mode))
    return " | ".join(parts)


def export_command(
    study_name: str, storage: str | None, *, trial: int | None = None, out: str | None = None
) -> str:
    """The ``mcaas-search export`` command line for ``trial`` (``--best`` when None)."""
    parts = ["mcaas-search", "export", "--study", study_name]
    if storage:
        parts += ["--storage", storage]
    parts += ["--best"] if trial is None else ["--trial", str(trial)]
    default_out = f"{study_name}.onnx" if trial is None else f"{study_name}-t{trial}.onnx"
    parts += ["--out", out or default_out]
    return " ".join(shlex.quote(p) for p in parts)


def state_counts(records: Iterable[TrialRecord]) -> dict[str, int]:
    """Trials by what became of them: feasible, infeasible, pruned, failed, running, and waiting
    (queued, such as a fixed profile an interrupted search has not run yet)."""
    counts = dict.fromkeys(("feasible", "infeasible", "pruned", "failed", "running", "waiting"), 0)
    for r in records:
        if r.state == "complete":
            counts["feasible" if r.feasible else "infeasible"] += 1
        else:
            counts[r.state] += 1
    return counts


def describe_counts(counts: Mapping[str, int]) -> str:
    """``12 trials: 5 feasible, 3 infeasible, 2 pruned, 2 failed``."""
    total = sum(counts.values())
    parts = [f"{n} {state}" for state, n in counts.items() if n or state not in ("running", "waiting")]
    return f"{total} trial{'s' if total != 1 else ''}: " + ", ".join(parts)
