"""The benchmark's plots: per target, test drop against ratio for every compared trial, and the
hypervolume after each trial, in one self-contained HTML page; and the search efficiency page
(hypervolume against trial count for the search and random search, with random search's final
hypervolume and the trial count at which the search reaches it; and hypervolume against compute,
training samples seen, for every method, with the compute the methods are compared at, the
default search's hypervolume there and the compute at which the multi-fidelity search reaches it)."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from search.bench.plan import METHOD_LABELS
from search.bench.results import BenchSummary, TargetResults, passes_text, reaches_share, test_drop
from stages.files import write_atomic

PLOT_HTML, PLOT_PNG, EFFICIENCY_HTML, EFFICIENCY_PNG = "bench.html", "bench.png", "efficiency.html", "efficiency.png"
METHOD_COLOURS = {"profiles": "#8c564b", "random": "#7f7f7f", "search": "#1f77b4", "asha": "#d62728",
                  "ort-int8": "#2ca02c", "torch-pruning": "#ff7f0e", "nncf": "#9467bd"}
# One marker for each fixed config (the profiles, the peers): they are points, not a search.
FIXED_SYMBOLS = {"profiles": "diamond", "ort-int8": "square", "torch-pruning": "triangle-up", "nncf": "star"}


def ratio_ticks(ratios: list[float]) -> list[float]:
    """Ticks at 1, 2, 5, 10, 20, 50, ... over ``ratios`` (and one step beyond each end): plotly's
    own log ticks label 20 as "2" between 10 and 100."""
    positive = [r for r in ratios if r > 0]
    if not positive:
        return []
    ticks = [m * 10.0**e for e in range(-3, 7) for m in (1, 2, 5)]
    low = max((t for t in ticks if t <= min(positive)), default=ticks[0])
    high = min((t for t in ticks if t >= max(positive)), default=ticks[-1])
    return [t for t in ticks if low <= t <= high]


def _hypervolume_traces(fig: go.Figure, block: TargetResults, *, row: int, col: int, legend: bool) -> None:
    """The hypervolume after each trial of each searching method."""
    for method, volumes in block.histories.items():
        fig.add_trace(
            go.Scatter(x=list(range(1, len(volumes) + 1)), y=volumes, mode="lines+markers", name=METHOD_LABELS[method],
                       legendgroup=method, showlegend=legend, line={"color": METHOD_COLOURS[method]}),
            row=row, col=col,
        )
    fig.update_xaxes(title_text="trials", row=row, col=col)
    fig.update_yaxes(title_text="hypervolume (pt x log10 ratio)", row=row, col=col)


def write_plots(summary: BenchSummary, path: Path) -> Path:
    """Per target: every compared trial (test drop against ratio) and hypervolume per trial."""
    rows = len(summary.targets)
    titles = []
    for block in summary.targets:
        titles += [f"{block.target}: test accuracy drop vs {block.target} ratio", f"{block.target}: hypervolume after each trial"]
    fig = make_subplots(rows=rows, cols=2, subplot_titles=titles, horizontal_spacing=0.08, vertical_spacing=0.16 / max(rows, 1))
    for i, block in enumerate(summary.targets, 1):
        for method, records in block.points.items():
            fig.add_trace(
                go.Scatter(
                    x=[r.ratio(block.target) for r in records],
                    y=[test_drop(summary.baseline, r) for r in records],
                    mode="markers",
                    name=METHOD_LABELS[method],
                    legendgroup=method,
                    showlegend=i == 1,
                    marker={"color": METHOD_COLOURS.get(method, "#17becf"), "size": 11 if method in FIXED_SYMBOLS else 8,
                            "symbol": FIXED_SYMBOLS.get(method, "circle")},
                    text=[f"{r.profile or ''} trial {r.number}" for r in records],
                ),
                row=i, col=1,
            )
        fig.add_hline(y=summary.plan.constraint.max_drop, line_dash="dash", line_color="#d1495b", row=i, col=1)
        drops = [test_drop(summary.baseline, r) for rs in block.points.values() for r in rs]
        # Trials that lost far more than the bound would squash the interesting band: cut off.
        top = min(max(drops, default=1.0), 5 * summary.plan.constraint.max_drop + 1)
        fig.update_yaxes(range=[min(min(drops, default=0.0), 0.0) - 0.5, top + 0.5], row=i, col=1)
        ticks = ratio_ticks([r.ratio(block.target) for rs in block.points.values() for r in rs])
        fig.update_xaxes(type="log", title_text=f"{block.target} ratio vs teacher (log)", tickvals=ticks,
                         ticktext=[f"{t:g}x" for t in ticks], row=i, col=1)
        fig.update_yaxes(title_text="test drop (points; larger drops off the chart)", row=i, col=1)
        _hypervolume_traces(fig, block, row=i, col=2, legend=False)
    fig.update_layout(
        title=f"{summary.plan.name}: search vs fixed profiles, random search, multi-fidelity search and peers (<= {summary.plan.constraint.max_drop:g} pt)",
        height=480 * rows + 80, width=1280, template="plotly_white",
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, fig.to_html(include_plotlyjs=True, full_html=True))
    return path


def _compute_traces(fig: go.Figure, block: TargetResults, *, row: int, col: int, legend: bool) -> None:
    """Hypervolume against training samples seen for every method (a fixed config: its points),
    with the compute the methods are compared at (dotted)."""
    for method, steps in block.compute_histories.items():
        fixed = method in FIXED_SYMBOLS
        fig.add_trace(
            go.Scatter(x=[seen for seen, _ in steps], y=[volume for _, volume in steps],
                       mode="markers" if fixed else "lines+markers", name=METHOD_LABELS[method], legendgroup=method,
                       showlegend=legend, line={"color": METHOD_COLOURS.get(method, "#17becf")},
                       marker={"symbol": FIXED_SYMBOLS.get(method, "circle"), "size": 11 if fixed else 6}),
            row=row, col=col,
        )
    if block.budget:
        fig.add_vline(x=block.budget, line_dash="dot", line_color=METHOD_COLOURS["search"], row=row, col=col)
    if block.search_volume is not None and "asha" in block.compute_histories:
        fig.add_hline(y=block.search_volume, line_dash="dash", line_color=METHOD_COLOURS["search"], row=row, col=col)
        if block.asha_reaches_search is not None:
            fig.add_vline(x=block.asha_reaches_search, line_dash="dot", line_color=METHOD_COLOURS["asha"], row=row, col=col)
    fig.update_xaxes(title_text="training samples seen (optimizer steps x batch size)", row=row, col=col)
    fig.update_yaxes(title_text="hypervolume (pt x log10 ratio)", row=row, col=col)


def write_efficiency(summary: BenchSummary, path: Path) -> Path:
    """Per target: hypervolume against trial count for the search and random search, random
    search's final hypervolume (dashed) and the trial count at which the search reaches it; and
    hypervolume against compute for every method, with the default search's compute (dotted)
    and, beside a multi-fidelity search, the default search's hypervolume there (dashed) and the
    compute at which the multi-fidelity search reaches it (dotted)."""
    blocks = [b for b in summary.targets if b.histories or b.compute_histories]
    rows = max(len(blocks), 1)
    titles = []
    for b in blocks:
        reaches, share, short = "", reaches_share(b), b.short_share("asha")
        if "asha" in b.compute_histories and b.search_volume is not None:
            if share is not None:
                reaches = f"; ASHA reaches its level at {share:.0%} of it"
            elif short is not None:
                reaches = f"; ASHA, at {short:.0%} of it, has not reached its level"
            else:
                reaches = "; ASHA never reaches its level"
        # Two lines each: side by side, one-line titles run into each other at this width.
        titles += [f"{b.target}: search reaches random search's<br>final hypervolume at trial {passes_text(b)}"
                   if "random" in b.histories else f"{b.target}: hypervolume after each trial",
                   f"{b.target}: hypervolume against compute<br>(dotted: the default search's{reaches})"]
    fig = make_subplots(rows=rows, cols=2, subplot_titles=titles or None, horizontal_spacing=0.08,
                        vertical_spacing=0.16 / rows)
    for i, block in enumerate(blocks, 1):
        _hypervolume_traces(fig, block, row=i, col=1, legend=False)
        random = block.histories.get("random")
        if random:
            fig.add_hline(y=random[-1], line_dash="dash", line_color=METHOD_COLOURS["random"], row=i, col=1)
        at = block.search_passes_random
        if at is not None and "search" in block.histories:
            fig.add_vline(x=at, line_dash="dot", line_color=METHOD_COLOURS["search"], row=i, col=1)
        _compute_traces(fig, block, row=i, col=2, legend=i == 1)
    fig.update_layout(title=f"{summary.plan.name}: search efficiency (hypervolume against trials and against compute)",
                      height=420 * rows + 80, width=1280, template="plotly_white")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, fig.to_html(include_plotlyjs=True, full_html=True))
    return path
