"""The report's output files: the self-contained HTML page and ``trials.csv``.

``write_html`` puts the figures into one page (plotly.js embedded once, works offline),
``write_trials_csv`` writes every trial with all its settings and metrics, and ``write_report``
does both for a study (what ``mcaas-search report`` and the end of a search call).
"""

from __future__ import annotations

import datetime
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import plotly.graph_objects as go

from objectives import DEFAULT_SELECTION, SELECTIONS, format_violations, metrics
from search.reporting.figures import (
    draw_history,
    draw_importances,
    draw_pareto,
    draw_stages,
)
from search.reporting.format import (
    describe_counts,
    drop_legend,
    drop_text,
    export_command,
    format_bytes,
    format_number,
    interval_note,
    settings_summary,
)
from search.reporting.gather import ReportData, gather_report
from search.reporting.reference import ReferencePoint
from search.reporting.tables import latency_text
from search.study import StudyInfo, TrialRecord, trial_records
from search.study.rungs import calibration_lines, compute_line, slack_line, strategy_line
from search.study.scoring import (
    accuracy_drop,
    front_records,
    paired_val_drop,
    recommended_record,
)
from search.workloads import Analysis
from stages.files import write_atomic

REPORT_HTML = "report.html"
TRIALS_CSV = "trials.csv"

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
            f"<td>{format_number(m.get(metrics.VAL_ACC), '.2f')}</td>"
            f"<td>{html.escape(drop_text(drop, paired_val_drop(r.metrics)))}</td>"
            f"<td>{format_number(m.get(metrics.TEST_ACC), '.2f')}</td>"
            f"<td>{format_number(r.ratio(info.target), '.2f')}x</td>"
            f"<td>{format_bytes(m.get(metrics.BYTES))}</td>"
            f"<td>{html.escape(latency_text(m))}</td>"
            f"<td class='l'>{html.escape(settings)}</td></tr>"
        )
    legend = drop_legend(rows)
    legend = "" if legend is None else f"<p class='muted'>{html.escape(legend)}.</p>"
    return f"<p>{caption}</p><table>{head}{''.join(body)}</table>{legend}"


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
        f"teacher: val {format_number(b.get(metrics.VAL_ACC), '.2f')} %, "
        f"test {format_number(b.get(metrics.TEST_ACC), '.2f')} %, "
        f"{format_bytes(b.get(metrics.BYTES))}, {format_number(b.get(metrics.LATENCY_MS), '.3g')} ms batch 1"
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
            f"{html.escape(drop_text(drop, paired_val_drop(pick.metrics)))} pt validation drop, test accuracy "
            f"{format_number(pick.metrics.get(metrics.TEST_ACC), '.2f')} % "
            f"({html.escape(SELECTIONS[DEFAULT_SELECTION].describe)}).</p>"
        )
        for note in (interval_note(info, pick, paired_val_drop(pick.metrics)), data.passed_over):
            if note is not None:
                lines.append(f"<p class='muted'>Note: {html.escape(note)}.</p>")
    elif data.unvouched is not None:
        lines.append(f"<p><b>Nothing recommended:</b> {html.escape(data.unvouched)}.</p>")
    else:
        closest = (
            f" Closest: trial {data.closest[0][0].number}, which broke "
            f"{html.escape(format_violations(data.closest[0][1]))}."
            if data.closest
            else ""
        )
        lines.append(f"<p><b>No trial is feasible yet.</b>{closest}</p>")
    if data.held_on_test is not None:
        lines.append(f"<p class='muted'>{html.escape(data.held_on_test)}.</p>")
    if data.export_line:
        lines.append(f"<p>Export it: <code>{html.escape(data.export_line)}</code></p>")
    return "\n".join(lines)


def _analysis_html(stored: dict) -> str:
    """The study's stored pre-flight analysis as a two-column table."""
    rows = "".join(
        f"<tr><td class='l'>{html.escape(what)}</td><td class='l'>{html.escape(finding)}</td></tr>"
        for what, finding in Analysis.from_dict(stored).rows()
    )
    return f"<table>{rows}</table>"


def write_html(path: Path, data: ReportData, *, budget_lines: Sequence[str] = ()) -> list[go.Figure]:
    """Write the self-contained HTML report to ``path`` (atomically); returns the figures drawn.
    ``budget_lines``: what the study spent on training (see ``budget_lines``), one paragraph each.

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
    if budget_lines:
        parts.append("<h2>Training budget</h2>")
        parts.append("".join(f"<p>{html.escape(line)}</p>" for line in budget_lines))
    if data.info.analysis:
        parts.append("<h2>Pre-flight analysis of the teacher</h2>")
        parts.append(_analysis_html(data.info.analysis))
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
    write_html(html_path, data, budget_lines=budget_lines(info, records))
    write_trials_csv(out_dir / TRIALS_CSV, info, records)
    return html_path


def trials_frame(info: StudyInfo, records: Sequence[TrialRecord]) -> pd.DataFrame:
    """One row per trial: state, objectives, every setting, metric, ratio and constraint value."""
    pick = recommended_record(info, records)
    front = {r.number for r in front_records(info, records)}
    rows = []
    for r in sorted(records, key=lambda r: r.number):
        paired = paired_val_drop(r.metrics)
        drop, interval = accuracy_drop(info, r), (None, None) if paired is None else paired.interval()
        row: dict[str, Any] = {
            "trial": r.number,
            "state": r.state,
            "profile": r.profile or "",
            "feasible": r.feasible,
            "on_front": r.number in front,
            "recommended": pick is not None and r.number == pick.number,
            metrics.VAL_ACC: r.metrics.get(metrics.VAL_ACC),
            "accuracy_drop": drop,
            "accuracy_drop_low": interval[0],
            "accuracy_drop_high": interval[1],
            f"{info.target}_ratio": r.ratios.get(info.target),
        }
        row.update({f"config.{k}": v for k, v in sorted(r.config.items())})
        row.update({f"metrics.{k}": v for k, v in sorted(r.metrics.items())})
        row.update({f"ratio.{k}": v for k, v in sorted(r.ratios.items())})
        row.update({f"violation.{k}": v for k, v in sorted(r.violations.items())})
        row.update({
            "samples_seen": r.samples_seen,
            # Multi-fidelity: the steps received, the rung reached, accuracy at every rung.
            "budget_steps": r.budget_steps,
            "rung": len(r.rungs) - 1 if r.rungs else None,
            "rung_accuracies": ";".join(f"{steps}:{acc:.2f}" for steps, acc in r.rungs),
            "untrained_ratio": r.untrained_ratio,
            "resumed_from": r.resumed_from or None,
            "skipped_by": r.skipped_by,
        })
        row.update({"seconds": r.seconds, "artifact": r.artifact or "", "reason": r.reason or ""})
        rows.append(row)
    return pd.DataFrame(rows)


def budget_lines(info: StudyInfo, records: Sequence[TrialRecord]) -> list[str]:
    """What the study spent on training: how its multi-fidelity trials ended, the rung -> final
    calibration of each rung, how its ratios measured before training held, and the samples seen
    in all."""
    lines = [strategy_line(records), *calibration_lines(records), slack_line(records, info.target),
             compute_line(records)]
    return [line for line in lines if line]


def write_trials_csv(path: Path, info: StudyInfo, records: Sequence[TrialRecord]) -> pd.DataFrame:
    """Write :func:`trials_frame` as CSV (atomically) and return it."""
    frame = trials_frame(info, records)
    write_atomic(path, frame.to_csv(index=False))
    return frame
