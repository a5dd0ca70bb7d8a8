"""Plotly figures drawn from the plain records of ``gather`` (the only module of the report
that imports plotly)."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from search.reporting.format import describe_counts
from search.reporting.gather import HistoryData, ParetoData, StagesData
from spaces import is_mcaas_profile

# Profile name -> plotly marker symbol; unknown profile names fall back to "hexagon".
PROFILE_SYMBOLS: dict[str, str] = {
    "high-accuracy": "diamond",
    "balanced": "square",
    "max-compression": "triangle-up",
}
FEASIBLE_COLOUR, INFEASIBLE_COLOUR, FRONT_COLOUR = "#2a9d4b", "#d1495b", "#1b5e20"
REFERENCE_COLOUR, PICK_COLOUR = "#555555", "#f4a300"


def draw_pareto(data: ParetoData) -> go.Figure:
    """Ratio on the target (log x) against accuracy drop (y, range from ``data.drop_axis``: trials
    beyond it drawn at the edge as arrows): feasible and infeasible trials in
    two colours, the fixed profiles as labelled symbols, the feasible front joined by a line,
    the recommended trial ringed, the max-drop bound dashed, published results as grey stars."""
    fig = go.Figure()
    search = [p for p in data.points if p.profile is None and not p.off_axis]
    for feasible, name, colour in (
        (True, "feasible", FEASIBLE_COLOUR),
        (False, "infeasible", INFEASIBLE_COLOUR),
    ):
        group = [p for p in search if p.feasible == feasible]
        if group:
            fig.add_trace(
                go.Scatter(
                    x=[p.ratio for p in group],
                    y=[p.shown_drop for p in group],
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
                y=[p.shown_drop for p in front],
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
                y=[p.shown_drop for p in group],
                mode="markers+text",
                name=f"MCaaS profile: {profile}" if is_mcaas_profile(profile) else f"quantization alone: {profile}",
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
    beyond = [p for p in data.points if p.off_axis]
    if beyond:
        fig.add_trace(
            go.Scatter(
                x=[p.ratio for p in beyond],
                y=[p.shown_drop for p in beyond],
                mode="markers",
                name=f"beyond the axis (drop > {data.drop_axis.ceiling:g} pt; true value on hover)",
                marker=dict(
                    symbol="arrow-bar-up", size=14, line=dict(width=2),
                    color=[FEASIBLE_COLOUR if p.feasible else INFEASIBLE_COLOUR for p in beyond],
                ),
                hovertext=[p.hover for p in beyond],
                hoverinfo="text",
            )
        )
    if data.recommended is not None and data.recommended in by_number:
        pick = by_number[data.recommended]
        fig.add_trace(
            go.Scatter(
                x=[pick.ratio],
                y=[pick.shown_drop],
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
                   zeroline=False, range=[data.drop_axis.low, data.drop_axis.high]),
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
