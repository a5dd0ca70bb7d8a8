"""The study report: plain records gathered from the trials, then plotly figures drawn from them.

As in Optuna's ``visualization`` package, each figure has a ``gather_*`` function that turns the
study into a plain record (no plotly) and a ``draw_*`` function that turns the record into a
figure, so the numbers can be tested without reading plotly objects. ``write_html`` puts the
figures into one self-contained HTML page (plotly.js embedded once, works offline),
``write_trials_csv`` writes every trial with all its settings and metrics, and ``write_report``
does both for a study (what ``mcaas-search report`` and the end of a search call).

The scoring helpers at the top (``scored_points``, ``front_records``, ``recommended_record``,
``closest_records``) adapt trial records to the pure Pareto logic in ``objectives``; the terminal
tables and ``export --best`` use them too, so all three agree on the front and the pick.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import html
import math
import shlex
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from objectives import (
    Point,
    closest_infeasible,
    format_violations,
    hypervolume,
    pareto_front,
    recommend,
)
from search.errors import UserError, first_line
from search.study.storage import StudyInfo, TrialRecord, trial_records
from stages.files import write_atomic

REPORT_HTML = "report.html"
TRIALS_CSV = "trials.csv"

# Profile name -> plotly marker symbol; unknown profile names fall back to "hexagon".
PROFILE_SYMBOLS: dict[str, str] = {
    "high-accuracy": "diamond",
    "balanced": "square",
    "max-compression": "triangle-up",
}
FEASIBLE_COLOUR, INFEASIBLE_COLOUR, FRONT_COLOUR = "#2a9d4b", "#d1495b", "#1b5e20"
REFERENCE_COLOUR, PICK_COLOUR = "#555555", "#f4a300"

# Chromium looked up in this order for --screenshot.
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
SCREENSHOT_TIMEOUT_S = 120


# ---------------------------------------------------------------------------------------------
# Scoring: trial records -> objective points (pure logic lives in ``objectives``)


def objectives_of(info: StudyInfo, record: TrialRecord) -> tuple[float, float] | None:
    """``(validation accuracy %, ratio on the target)`` of a completed trial, or None when the
    trial has no usable numbers (not complete, or its metrics are missing or not finite)."""
    if record.state != "complete":
        return None
    values = record.values or ()
    acc = record.metrics.get("val_acc", values[0] if len(values) > 0 else math.nan)
    ratio = record.ratios.get(info.target, values[1] if len(values) > 1 else math.nan)
    try:
        acc, ratio = float(acc), float(ratio)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(acc) and math.isfinite(ratio) and ratio > 0):
        return None
    return acc, ratio


def scored_points(info: StudyInfo, records: Iterable[TrialRecord]) -> list[Point]:
    """One ``objectives.Point`` per completed trial with usable numbers (id = trial number)."""
    points = []
    for record in records:
        scored = objectives_of(info, record)
        if scored is not None:
            points.append(Point(record.number, scored[0], scored[1], feasible=record.feasible))
    return points


def front_records(info: StudyInfo, records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """The feasible Pareto front, sorted by ratio ascending."""
    by_number = {r.number: r for r in records}
    return [by_number[p.id] for p in pareto_front(scored_points(info, records))]


def recommended_record(info: StudyInfo, records: Sequence[TrialRecord]) -> TrialRecord | None:
    """The trial to ship (``objectives.recommend``: the most compressed feasible front trial)."""
    pick = recommend(scored_points(info, records))
    return None if pick is None else next(r for r in records if r.number == pick.id)


def closest_records(
    info: StudyInfo, records: Sequence[TrialRecord], n: int = 3
) -> list[tuple[TrialRecord, dict[str, float]]]:
    """The ``n`` infeasible completed trials closest to feasible, each with the bounds it broke."""
    by_number = {r.number: r for r in records}
    scored = [r for r in records if objectives_of(info, r) is not None and not r.feasible]
    pairs = closest_infeasible(((r.number, r.violations) for r in scored), n)
    return [(by_number[number], broken) for number, broken in pairs]


def accuracy_drop(info: StudyInfo, record: TrialRecord) -> float | None:
    """Validation accuracy lost against the teacher, in points (None without numbers)."""
    scored = objectives_of(info, record)
    return None if scored is None else info.teacher_acc - scored[0]


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


def settings_summary(config: Mapping[str, Any]) -> str:
    """The key settings of a pipeline config in one short line, stage by stage (defaults such
    as structured/global pruning left out; ``show`` and trials.csv list every setting)."""
    parts = []
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
    else:
        parts.append("no pruning")
    epochs = config.get("distill.epochs", 0) or 0
    alpha = config.get("distill.alpha")
    if not epochs:
        parts.append("no training")
    elif alpha == 0:
        parts.append(f"fine-tune {epochs:g} ep")
    else:
        kd = f"KD {epochs:g} ep"
        if "distill.temperature" in config:
            kd += f" T{config['distill.temperature']:g}"
        if alpha is not None:
            kd += f" a{alpha:.2g}"
        parts.append(kd)
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


# ---------------------------------------------------------------------------------------------
# Reference results (published numbers overlaid on the Pareto plot)


@dataclasses.dataclass(frozen=True)
class ReferencePoint:
    """A published result: method name, its ratio on the study's target, its accuracy drop."""

    method: str
    ratio: float
    drop: float


def read_reference(path: Path, target: str) -> list[ReferencePoint]:
    """Read a CSV of published results with columns ``method``, ``<target>_ratio`` (e.g.
    ``size_ratio`` or ``latency_ratio``) and ``accuracy_drop`` (points).

    Rows with an empty ``<target>_ratio`` are skipped (they report another target); anything
    else malformed is a one-line UserError naming the line.
    """
    column = f"{target}_ratio"
    expected = f"expected columns method, {column}, accuracy_drop"
    if not path.is_file():
        raise UserError(f"reference file {str(path)!r} does not exist; {expected}")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [(h or "").strip() for h in (reader.fieldnames or [])]
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(
            f"reference file {str(path)!r} is not a readable CSV ({exc}); {expected}"
        ) from None
    missing = [c for c in ("method", column, "accuracy_drop") if c not in header]
    if missing:
        found = ", ".join(header) or "none"
        raise UserError(
            f"reference CSV {str(path)!r} lacks column(s) {', '.join(missing)} for this "
            f"{target} study; {expected} (found: {found})"
        )
    points = []
    for line, row in enumerate(rows, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if not row.get(column):
            continue
        method = row.get("method") or ""
        if not method:
            raise UserError(f"reference CSV {str(path)!r} line {line}: empty method name")
        ratio = _number(path, line, column, row[column])
        drop = _number(path, line, "accuracy_drop", row.get("accuracy_drop", ""))
        if ratio <= 0:
            raise UserError(
                f"reference CSV {str(path)!r} line {line}: {column} must be > 0, but got {ratio:g}"
            )
        points.append(ReferencePoint(method, ratio, drop))
    if not points:
        raise UserError(f"reference CSV {str(path)!r} has no row with a {column} value; {expected}")
    return points


def _number(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise UserError(
            f"reference CSV {str(path)!r} line {line}: {column} must be a number, but got {text!r}"
        )
    return value


# ---------------------------------------------------------------------------------------------
# Gather: plain records for each figure


@dataclasses.dataclass(frozen=True)
class PlotPoint:
    """One completed trial on the Pareto plot."""

    number: int
    ratio: float
    drop: float
    feasible: bool
    profile: str | None
    hover: str


@dataclasses.dataclass(frozen=True)
class ParetoData:
    """Everything the Pareto plot shows."""

    study_name: str
    target: str
    constraint: str
    allowed_drop: float
    points: list[PlotPoint]
    front: list[int]  # trial numbers along the front, by ratio ascending
    recommended: int | None
    counts: dict[str, int]
    references: list[ReferencePoint]


def trial_hover(info: StudyInfo, record: TrialRecord) -> str:
    """Hover text of a trial: number, profile, metrics and key settings (HTML line breaks)."""
    m = record.metrics
    head = f"<b>trial {record.number}</b>"
    if record.profile:
        head += f" (profile {html.escape(record.profile)})"
    drop = accuracy_drop(info, record)
    lines = [head]
    if drop is not None:
        acc = info.teacher_acc - drop
        test = f", test {m['test_acc']:.2f} %" if "test_acc" in m else ""
        lines.append(f"val acc {acc:.2f} % (drop {drop:.2f} pt){test}")
    ratios = ", ".join(f"{k} {v:.2f}x" for k, v in record.ratios.items())
    if ratios:
        lines.append(f"ratios: {ratios}")
    size = f"size {format_bytes(m.get('bytes'))}"
    if "latency_ms" in m:
        size += f", latency {m['latency_ms']:.3g} ms"
    lines.append(size)
    lines.append(html.escape(settings_summary(record.config)))
    broken = {k: v for k, v in record.violations.items() if v > 0}
    if broken:
        lines.append("broke: " + html.escape(format_violations(broken)))
    return "<br>".join(lines)


def gather_pareto(
    info: StudyInfo,
    records: Sequence[TrialRecord],
    *,
    study_name: str,
    references: Sequence[ReferencePoint] = (),
) -> ParetoData:
    plot_points = []
    for record in records:
        drop = accuracy_drop(info, record)
        scored = objectives_of(info, record)
        if drop is None or scored is None:
            continue
        plot_points.append(
            PlotPoint(
                number=record.number,
                ratio=scored[1],
                drop=drop,
                feasible=record.feasible,
                profile=record.profile,
                hover=trial_hover(info, record),
            )
        )
    pick = recommended_record(info, records)
    return ParetoData(
        study_name=study_name,
        target=info.target,
        constraint=info.constraint.describe(),
        allowed_drop=info.constraint.allowed_drop(info.teacher_acc),
        points=plot_points,
        front=[r.number for r in front_records(info, records)],
        recommended=None if pick is None else pick.number,
        counts=state_counts(records),
        references=list(references),
    )


@dataclasses.dataclass(frozen=True)
class StageStep:
    """The model after one stage (or the teacher, first)."""

    stage: str
    seconds: float | None
    val_acc: float | None
    bytes: float | None
    latency_ms: float | None


@dataclasses.dataclass(frozen=True)
class StagesData:
    """Per-stage progression of one trial."""

    trial: int
    why: str  # "recommended", or why another trial is shown
    steps: list[StageStep]


def gather_stages(info: StudyInfo, records: Sequence[TrialRecord]) -> StagesData | None:
    """The recommended trial's metrics after each stage (the closest infeasible one when no
    trial is feasible); None when no completed trial recorded stages."""
    pick = recommended_record(info, records)
    why = "recommended"
    if pick is None:
        closest = closest_records(info, records, 1)
        if not closest:
            return None
        pick, why = closest[0][0], "closest to feasible; no trial is feasible"
    if not pick.stages:
        return None
    steps = [
        StageStep(
            "teacher",
            None,
            info.baseline.get("val_acc"),
            info.baseline.get("bytes"),
            info.baseline.get("latency_ms"),
        )
    ]
    for stage in pick.stages:
        metrics = stage.get("metrics") or {}
        if not metrics:  # e.g. the "measure" step: wall time only, no model state
            continue
        steps.append(
            StageStep(
                str(stage.get("stage", "?")),
                stage.get("seconds"),
                metrics.get("val_acc"),
                metrics.get("bytes"),
                metrics.get("latency_ms"),
            )
        )
    return StagesData(pick.number, why, steps)


def gather_importances(study: optuna.Study) -> dict[str, float] | str:
    """Parameter importances for the ratio objective, or why there are none (a sentence).

    Needs at least two completed trials with parameters; any failure of the evaluator (too few
    distinct values, a single-valued space) becomes the reason instead of an error.
    """
    complete = [
        t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        if t.params and t.values
    ]
    if len(complete) < 2:
        return f"needs at least 2 completed trials with parameters; this study has {len(complete)}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # experimental-API notices are not the user's business
            importances = optuna.importance.get_param_importances(
                study, target=lambda t: t.values[1]
            )
    except Exception as exc:  # the evaluators raise several kinds for degenerate inputs
        return f"could not be computed: {first_line(exc)}"
    if not importances:
        return "no parameter varied across the completed trials"
    return {k: float(v) for k, v in importances.items()}


@dataclasses.dataclass(frozen=True)
class HistoryData:
    """Best feasible ratio and hypervolume after each trial, by trial number."""

    numbers: list[int]
    best_ratio: list[float | None]
    hypervolume: list[float]
    ref_accuracy: float


def gather_history(info: StudyInfo, records: Sequence[TrialRecord]) -> HistoryData:
    """Progress of the search: after each trial (by number), the best feasible ratio so far and
    the hypervolume of the feasible front above the required accuracy
    (``objectives.hypervolume``)."""
    ref = info.constraint.required_accuracy(info.teacher_acc)
    numbers, best, volume = [], [], []
    points: list[Point] = []
    top: float | None = None
    for record in sorted(records, key=lambda r: r.number):
        scored = objectives_of(info, record)
        if scored is not None:
            points.append(Point(record.number, scored[0], scored[1], feasible=record.feasible))
            if record.feasible:
                top = scored[1] if top is None else max(top, scored[1])
        numbers.append(record.number)
        best.append(top)
        volume.append(hypervolume(points, ref_accuracy=ref))
    return HistoryData(numbers, best, volume, ref)


@dataclasses.dataclass(frozen=True)
class ReportData:
    """Everything the HTML report shows."""

    study_name: str
    info: StudyInfo
    pareto: ParetoData
    stages: StagesData | None
    importances: dict[str, float] | str
    history: HistoryData
    front: list[TrialRecord]
    recommended: TrialRecord | None
    closest: list[tuple[TrialRecord, dict[str, float]]]
    export_line: str | None  # the command that exports the recommended trial


def gather_report(
    study: optuna.Study,
    info: StudyInfo,
    records: Sequence[TrialRecord],
    *,
    references: Sequence[ReferencePoint] = (),
    export_line: str | None = None,
) -> ReportData:
    return ReportData(
        study_name=study.study_name,
        info=info,
        pareto=gather_pareto(info, records, study_name=study.study_name, references=references),
        stages=gather_stages(info, records),
        importances=gather_importances(study),
        history=gather_history(info, records),
        front=front_records(info, records),
        recommended=recommended_record(info, records),
        closest=closest_records(info, records),
        export_line=export_line,
    )


# ---------------------------------------------------------------------------------------------
# Draw: plotly figures from the plain records


def draw_pareto(data: ParetoData) -> go.Figure:
    """Ratio on the target (log x) against accuracy drop (y): feasible and infeasible trials in
    two colours, the fixed profiles as labelled symbols, the feasible front joined by a line,
    the recommended trial ringed, the max-drop bound dashed, published results as grey stars."""
    fig = go.Figure()
    search = [p for p in data.points if p.profile is None]
    for feasible, name, colour in (
        (True, "feasible", FEASIBLE_COLOUR),
        (False, "infeasible", INFEASIBLE_COLOUR),
    ):
        group = [p for p in search if p.feasible == feasible]
        if group:
            fig.add_trace(
                go.Scatter(
                    x=[p.ratio for p in group],
                    y=[p.drop for p in group],
                    mode="markers",
                    name=f"{name} trials",
                    marker=dict(
                        color=colour, size=9, opacity=0.8, line=dict(width=0.5, color="white")
                    ),
                    hovertext=[p.hover for p in group],
                    hoverinfo="text",
                )
            )
    by_number = {p.number: p for p in data.points}
    front = [by_number[n] for n in data.front if n in by_number]
    if front:
        fig.add_trace(
            go.Scatter(
                x=[p.ratio for p in front],
                y=[p.drop for p in front],
                mode="lines",
                name="Pareto front (feasible)",
                line=dict(color=FRONT_COLOUR, width=2),
                hoverinfo="skip",
            )
        )
    for profile in sorted({p.profile for p in data.points if p.profile}):
        group = [p for p in data.points if p.profile == profile]
        fig.add_trace(
            go.Scatter(
                x=[p.ratio for p in group],
                y=[p.drop for p in group],
                mode="markers+text",
                name=f"MCaaS profile: {profile}",
                text=[profile for _ in group],
                textposition="top center",
                textfont=dict(size=12),
                marker=dict(
                    symbol=PROFILE_SYMBOLS.get(profile, "hexagon"),
                    size=15,
                    color=[FEASIBLE_COLOUR if p.feasible else INFEASIBLE_COLOUR for p in group],
                    line=dict(width=1.5, color="black"),
                ),
                hovertext=[p.hover for p in group],
                hoverinfo="text",
            )
        )
    if data.recommended is not None and data.recommended in by_number:
        pick = by_number[data.recommended]
        fig.add_trace(
            go.Scatter(
                x=[pick.ratio],
                y=[pick.drop],
                mode="markers+text",
                name=f"recommended: trial {pick.number}",
                text=[f"recommended #{pick.number}"],
                textposition="bottom center",
                textfont=dict(size=12, color="black"),
                marker=dict(symbol="circle-open", size=24, color=PICK_COLOUR, line=dict(width=3)),
                hovertext=[pick.hover],
                hoverinfo="text",
            )
        )
    if data.references:
        fig.add_trace(
            go.Scatter(
                x=[r.ratio for r in data.references],
                y=[r.drop for r in data.references],
                mode="markers+text",
                name="published results",
                text=[r.method for r in data.references],
                textposition="middle right",
                textfont=dict(size=11, color=REFERENCE_COLOUR),
                marker=dict(symbol="star", size=13, color=REFERENCE_COLOUR),
                hovertext=[
                    f"<b>{html.escape(r.method)}</b> (published)<br>{r.ratio:.3g}x {data.target}, "
                    f"drop {r.drop:.2f} pt"
                    for r in data.references
                ],
                hoverinfo="text",
            )
        )
    fig.add_hline(
        y=data.allowed_drop,
        line=dict(color=INFEASIBLE_COLOUR, dash="dash", width=1.5),
        annotation_text=f"max drop {data.allowed_drop:.3g} pt",
        annotation_position="top left",
    )
    fig.add_hline(y=0, line=dict(color="#999999", width=1), annotation_text="teacher",
                  annotation_position="bottom left")
    not_plotted = data.counts["pruned"] + data.counts["failed"] + data.counts["running"]
    subtitle = describe_counts(data.counts)
    if not_plotted:
        subtitle += " (pruned, failed and running trials have no final metrics: not plotted)"
    if not data.points:
        fig.add_annotation(text="no completed trial yet", showarrow=False, x=0.5, y=0.5,
                           xref="paper", yref="paper", font=dict(size=18))
    fig.update_layout(
        title=dict(
            text=f"{html.escape(data.study_name)}: {data.target} compression vs accuracy drop "
            f"({html.escape(data.constraint)})",
            subtitle=dict(text=subtitle),
        ),
        xaxis=dict(
            type="log",
            title=f"{data.target} compression ratio (teacher / trial, log scale)",
            **_log_ticks([p.ratio for p in data.points] + [r.ratio for r in data.references]),
        ),
        yaxis=dict(title="accuracy drop vs teacher (points, validation; lower is better)",
                   zeroline=False),
        height=620,
        template="plotly_white",
        legend=dict(orientation="v", x=1.02, y=1),
        margin=dict(t=90),
    )
    return fig


def _log_ticks(values: Sequence[float]) -> dict[str, Any]:
    """Tick marks for a log ratio axis labelled ``2x``, ``5x``, ``10x``... (plotly's default
    labels minor ticks by their leading digit only: ``10, 2, 3`` for 10, 20, 30)."""
    if not values:
        return {}
    lo, hi = min(values) / 1.3, max(values) * 1.3
    ticks: list[float] = []
    for mantissas in ((1, 2, 3, 5), (1, 1.5, 2, 3, 4, 5, 7)):
        ticks = [
            m * 10.0**e
            for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
            for m in mantissas
            if lo <= m * 10.0**e <= hi
        ]
        if len(ticks) >= 4:
            break
    # A fixed range keeps every tick on screen (autorange may stop short of the outer ones).
    return {
        "tickvals": ticks,
        "ticktext": [f"{t:g}x" for t in ticks],
        "range": [math.log10(lo), math.log10(hi)],
    }


def draw_stages(data: StagesData) -> go.Figure:
    """Four panels over the stages: validation accuracy, size, latency and wall time."""
    fig = make_subplots(
        rows=2,
        cols=2,
        subplot_titles=("validation accuracy (%)", "size (kB)", "latency, batch 1 (ms)",
                        "stage wall time (s)"),
        vertical_spacing=0.16,
    )
    names = [s.stage for s in data.steps]

    def line(values: list[float | None], row: int, col: int, unit: str) -> None:
        fig.add_trace(
            go.Scatter(
                x=names, y=values, mode="lines+markers", showlegend=False,
                connectgaps=False, marker=dict(size=9, color=FRONT_COLOUR),
                hovertemplate="%{x}: %{y:.4g} " + unit + "<extra></extra>",
            ),
            row=row, col=col,
        )

    line([s.val_acc for s in data.steps], 1, 1, "%")
    line([None if s.bytes is None else s.bytes / 1e3 for s in data.steps], 1, 2, "kB")
    line([s.latency_ms for s in data.steps], 2, 1, "ms")
    timed = [s for s in data.steps if s.seconds is not None]
    fig.add_trace(
        go.Bar(x=[s.stage for s in timed], y=[s.seconds for s in timed], showlegend=False,
               marker_color="#577590", hovertemplate="%{x}: %{y:.3g} s<extra></extra>"),
        row=2, col=2,
    )
    fig.update_layout(
        title=f"trial {data.trial} ({data.why}): the model after each stage "
        "(torch numbers before export, ONNX Runtime after)",
        height=620,
        template="plotly_white",
    )
    return fig


def draw_importances(importances: Mapping[str, float], target: str) -> go.Figure:
    """Horizontal bars, most important parameter on top."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(
        go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
               marker_color="#577590", hovertemplate="%{y}: %{x:.3f}<extra></extra>")
    )
    fig.update_layout(
        title=f"parameter importance for the {target} ratio (fANOVA over completed trials)",
        xaxis_title="importance",
        height=max(300, 60 + 28 * len(items)),
        template="plotly_white",
        margin=dict(l=160),
    )
    return fig


def draw_history(data: HistoryData, target: str) -> go.Figure:
    """Best feasible ratio and hypervolume after each trial."""
    fig = make_subplots(
        rows=1, cols=2,
        subplot_titles=(f"best feasible {target} ratio so far",
                        f"hypervolume above {data.ref_accuracy:.2f} % accuracy and 1x"),
    )
    fig.add_trace(
        go.Scatter(x=data.numbers, y=data.best_ratio, mode="lines+markers", line_shape="hv",
                   showlegend=False, marker=dict(color=FRONT_COLOUR),
                   hovertemplate="after trial %{x}: %{y:.3g}x<extra></extra>"),
        row=1, col=1,
    )
    fig.add_trace(
        go.Scatter(x=data.numbers, y=data.hypervolume, mode="lines+markers", line_shape="hv",
                   showlegend=False, marker=dict(color="#577590"),
                   hovertemplate="after trial %{x}: %{y:.4g}<extra></extra>"),
        row=1, col=2,
    )
    if all(b is None for b in data.best_ratio):
        fig.add_annotation(text="no feasible trial yet", showarrow=False, x=0.5, y=0.5,
                           xref="x domain", yref="y domain", font=dict(size=15), row=1, col=1)
    step = max(1, math.ceil(len(data.numbers) / 10))
    fig.update_xaxes(title_text="trial number", tick0=0, dtick=step)
    fig.update_yaxes(title_text="ratio (x)", type="log", row=1, col=1)
    fig.update_yaxes(title_text="accuracy points x log10 ratio", rangemode="tozero", row=1, col=2)
    fig.update_layout(title="search history", height=420, template="plotly_white")
    return fig


# ---------------------------------------------------------------------------------------------
# Output files




_PAGE_STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, Roboto, sans-serif; margin: 24px 32px;
       color: #222; max-width: 1500px; }
h1 { font-size: 22px; margin: 0 0 6px 0; }
h2 { font-size: 17px; margin: 28px 0 6px 0; }
p, li { font-size: 14px; line-height: 1.45; margin: 4px 0; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px 0; }
th, td { border-bottom: 1px solid #ddd; padding: 3px 10px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
code { background: #f4f4f4; padding: 1px 4px; border-radius: 3px; }
.muted { color: #666; }
"""


def _front_table_html(data: ReportData) -> str:
    info = data.info
    rows = data.front or [r for r, _ in data.closest]
    if not rows:
        return "<p class='muted'>No completed trial yet.</p>"
    caption = "Pareto front (feasible trials)" if data.front else (
        "No feasible trial. Closest trials and the bound each broke:")
    head = ("<tr><th>trial</th><th class='l'>profile</th><th>val acc %</th><th>drop pt</th>"
            f"<th>test acc %</th><th>{info.target} ratio</th><th>size</th><th>latency ms</th>"
            "<th class='l'>settings</th></tr>")
    body = []
    broken = {r.number: b for r, b in data.closest}
    if data.front:  # most compressed first; closest trials stay in closeness order
        rows = sorted(rows, key=lambda r: -r.ratio(info.target))
    for r in rows:
        m = r.metrics
        mark = " *" if data.recommended is not None and r.number == data.recommended.number else ""
        drop = accuracy_drop(info, r)
        settings = settings_summary(r.config)
        if r.number in broken:
            settings += " | broke " + format_violations(broken[r.number])
        body.append(
            "<tr>"
            f"<td>{r.number}{mark}</td><td class='l'>{html.escape(r.profile or '')}</td>"
            f"<td>{format_number(m.get('val_acc'), '.2f')}</td>"
            f"<td>{format_number(drop, '.2f')}</td>"
            f"<td>{format_number(m.get('test_acc'), '.2f')}</td>"
            f"<td>{format_number(r.ratio(info.target), '.2f')}x</td>"
            f"<td>{format_bytes(m.get('bytes'))}</td>"
            f"<td>{format_number(m.get('latency_ms'), '.3g')}</td>"
            f"<td class='l'>{html.escape(settings)}</td></tr>"
        )
    return f"<p>{caption}</p><table>{head}{''.join(body)}</table>"


def _summary_html(data: ReportData) -> str:
    info = data.info
    w = info.workload
    b = info.baseline
    required = info.constraint.required_accuracy(info.teacher_acc)
    workload = ", ".join(
        f"{k} {html.escape(str(w[k]))}"
        for k in ("model", "dataset", "image_size")
        if w.get(k) is not None
    )
    teacher = (
        f"teacher: val {format_number(b.get('val_acc'), '.2f')} %, "
        f"test {format_number(b.get('test_acc'), '.2f')} %, "
        f"{format_bytes(b.get('bytes'))}, {format_number(b.get('latency_ms'), '.3g')} ms batch 1"
    )
    lines = [
        f"<h1>mcaas-search report: {html.escape(data.study_name)}</h1>",
        f"<p>{workload or 'workload unknown'} &middot; target <b>{html.escape(info.target)}</b> "
        f"&middot; constraint <b>{html.escape(info.constraint.describe())}</b> "
        f"(required validation accuracy {required:.2f} %)"
        f" &middot; {teacher}</p>",
        f"<p>{html.escape(describe_counts(data.pareto.counts))}.</p>",
    ]
    pick = data.recommended
    if pick is not None:
        drop = accuracy_drop(info, pick)
        lines.append(
            f"<p><b>Recommended: trial {pick.number}</b>"
            + (f" (profile {html.escape(pick.profile)})" if pick.profile else "")
            + f": {format_number(pick.ratio(info.target), '.2f')}x {html.escape(info.target)} at "
            f"{format_number(drop, '.2f')} pt validation drop, test accuracy "
            f"{format_number(pick.metrics.get('test_acc'), '.2f')} % "
            "(the most compressed feasible trial on the front).</p>"
        )
    else:
        closest = (
            f" Closest: trial {data.closest[0][0].number}, which broke "
            f"{html.escape(format_violations(data.closest[0][1]))}."
            if data.closest
            else ""
        )
        lines.append(f"<p><b>No trial is feasible yet.</b>{closest}</p>")
    if data.export_line:
        lines.append(f"<p>Export it: <code>{html.escape(data.export_line)}</code></p>")
    return "\n".join(lines)


def write_html(path: Path, data: ReportData) -> list[go.Figure]:
    """Write the self-contained HTML report to ``path`` (atomically); returns the figures drawn.

    plotly.js is embedded once, with the first figure; the others reuse it, so the page works
    offline and stays one file.
    """
    sections: list[tuple[str, go.Figure | None, str]] = [
        ("Pareto front", draw_pareto(data.pareto), ""),
    ]
    if data.stages is not None:
        sections.append(("Per-stage progression", draw_stages(data.stages), ""))
    sections.append(("Search history", draw_history(data.history, data.info.target), ""))
    if isinstance(data.importances, dict):
        importance = draw_importances(data.importances, data.info.target)
        sections.append(("Parameter importance", importance, ""))
    else:
        sections.append(("Parameter importance", None, f"Not shown: {data.importances}."))
    figures = [fig for _, fig, _ in sections if fig is not None]
    parts = [_summary_html(data)]
    first = True
    config = {"displaylogo": False, "responsive": True}
    for title, fig, note in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if note:
            parts.append(f"<p class='muted'>{html.escape(note)}</p>")
        if fig is not None:
            parts.append(fig.to_html(full_html=False, include_plotlyjs=first, config=config))
            first = False
        if title == "Pareto front":
            parts.append(_front_table_html(data))
    stamp = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    parts.append(f"<p class='muted'>Written by mcaas-search report on {stamp}.</p>")
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>mcaas-search: {html.escape(data.study_name)}</title>"
        f"<style>{_PAGE_STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n"
    )
    write_atomic(path, page)
    return figures


def write_report(
    study: optuna.Study,
    info: StudyInfo,
    *,
    out_dir: Path | None = None,
    storage: str | None = None,
    references: Sequence[ReferencePoint] = (),
) -> Path:
    """Write ``report.html`` and ``trials.csv`` of ``study`` into ``out_dir`` (default: the
    study's artifacts folder, created if needed); returns the HTML path. ``storage`` is the
    ``--storage`` the user gave, repeated in the export command the report suggests."""
    out_dir = Path(info.artifacts_dir) if out_dir is None else out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    records = trial_records(study)
    pick = recommended_record(info, records)
    command = export_command(study.study_name, storage) if pick is not None else None
    data = gather_report(study, info, records, references=references, export_line=command)
    html_path = out_dir / REPORT_HTML
    write_html(html_path, data)
    write_trials_csv(out_dir / TRIALS_CSV, info, records)
    return html_path


def trials_frame(info: StudyInfo, records: Sequence[TrialRecord]) -> pd.DataFrame:
    """One row per trial: state, objectives, every setting, metric, ratio and constraint value."""
    pick = recommended_record(info, records)
    front = {r.number for r in front_records(info, records)}
    rows = []
    for r in sorted(records, key=lambda r: r.number):
        drop = accuracy_drop(info, r)
        row: dict[str, Any] = {
            "trial": r.number,
            "state": r.state,
            "profile": r.profile or "",
            "feasible": r.feasible,
            "on_front": r.number in front,
            "recommended": pick is not None and r.number == pick.number,
            "val_acc": r.metrics.get("val_acc"),
            "accuracy_drop": drop,
            f"{info.target}_ratio": r.ratios.get(info.target),
        }
        row.update({f"config.{k}": v for k, v in sorted(r.config.items())})
        row.update({f"metrics.{k}": v for k, v in sorted(r.metrics.items())})
        row.update({f"ratio.{k}": v for k, v in sorted(r.ratios.items())})
        row.update({f"violation.{k}": v for k, v in sorted(r.violations.items())})
        row.update({"seconds": r.seconds, "artifact": r.artifact or "", "reason": r.reason or ""})
        rows.append(row)
    return pd.DataFrame(rows)


def write_trials_csv(path: Path, info: StudyInfo, records: Sequence[TrialRecord]) -> pd.DataFrame:
    """Write :func:`trials_frame` as CSV (atomically) and return it."""
    frame = trials_frame(info, records)
    write_atomic(path, frame.to_csv(index=False))
    return frame


# ---------------------------------------------------------------------------------------------
# Screenshot (a real browser renders the page)


def find_chromium(candidates: Sequence[str] = CHROMIUM_CANDIDATES) -> str | None:
    """Path of a Chromium binary, or None."""
    for name in candidates:
        found = shutil.which(name)
        if found:
            return found
    return None


def take_screenshot(
    html_path: Path,
    png_path: Path,
    *,
    chromium: str | None = None,
    size: tuple[int, int] = (1400, 2000),
    run: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run,
) -> Path:
    """Render ``html_path`` in headless Chromium and save a PNG of the top of the page.

    A fresh profile folder each time (no state, no first-run work); networking and updates off,
    since the page is self-contained.
    """
    binary = chromium or find_chromium()
    if binary is None:
        raise UserError(
            "--screenshot needs Chromium, but none was found (looked for "
            f"{', '.join(CHROMIUM_CANDIDATES)}); install it (e.g. apt install chromium) "
            "or drop --screenshot"
        )
    if not png_path.parent.is_dir():
        raise UserError(f"--screenshot folder {str(png_path.parent)!r} does not exist")
    with tempfile.TemporaryDirectory(prefix="mcaas-chromium-") as profile:
        tmp_png = Path(profile) / "shot.png"
        command = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}/user",
            # Let plotly finish drawing before the capture.
            "--virtual-time-budget=5000",
            f"--screenshot={tmp_png}", f"--window-size={size[0]},{size[1]}",
            html_path.resolve().as_uri(),
        ]
        try:
            done = run(command, capture_output=True, timeout=SCREENSHOT_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise UserError(
                f"Chromium took over {SCREENSHOT_TIMEOUT_S} s to render the report"
            ) from None
        if done.returncode != 0 or not tmp_png.is_file():
            lines = [ln for ln in done.stderr.decode(errors="replace").splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else f"exit code {done.returncode}"
            raise UserError(f"Chromium could not take the screenshot: {last}")
        write_atomic(png_path, tmp_png.read_bytes())
    return png_path
