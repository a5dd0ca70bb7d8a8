"""Terminal tables (rich): the Pareto front with the recommended trial and how to export it, the
"no feasible trial" message with the closest trials, one trial in detail, and the studies of a
storage. The search prints the same front table when it ends as ``report`` does."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from objectives import DEFAULT_SELECTION, SELECTIONS, TARGET_REGISTRY, format_violations, metrics
from search.reporting.format import (
    describe_counts,
    drop_legend,
    drop_text,
    export_command,
    format_bytes,
    format_number,
    interval_note,
    passed_over_note,
    settings_summary,
    state_counts,
    teacher_note,
)
from search.study import StudyInfo, TrialRecord
from search.study.rungs import calibration_lines, rungs_text, slack_line
from search.study.scoring import (
    accuracy_drop,
    closest_records,
    front_records,
    held_on_test,
    objectives_of,
    paired_val_drop,
    recommended_record,
    unvouched_note,
)
from spaces import is_mcaas_profile

# Metrics shown per stage and in a trial's detail, in this order: key -> (label, formatter).
_METRIC_COLUMNS: dict[str, tuple[str, Any]] = {
    metrics.VAL_ACC: ("val acc %", lambda v: f"{v:.2f}"),
    metrics.TEST_ACC: ("test acc %", lambda v: f"{v:.2f}"),
    metrics.BYTES: ("size", format_bytes),
    metrics.GZIP_BYTES: ("gzip", format_bytes),
    metrics.LATENCY_MS: ("latency ms", lambda v: f"{v:.3g}"),
    metrics.LATENCY_THREADS: ("threads", lambda v: f"{v:.0f}"),
    metrics.OPS: ("ops", lambda v: f"{v:.0f}"),
    metrics.PARAMS: ("params", lambda v: f"{v:,.0f}"),
    metrics.MACS: ("MACs", lambda v: f"{v:,.0f}"),
    metrics.EPOCHS: ("epochs", lambda v: f"{v:.3g}"),  # trained, where distill.size_boost lengthened them
    metrics.SAMPLES_SEEN: ("samples seen", lambda v: f"{v:,.0f}"),  # the training compute
}


def latency_text(m: Mapping[str, float]) -> str:
    """``0.0212 @1t``: the latency and the thread count it was measured at (its best)."""
    text = format_number(m.get(metrics.LATENCY_MS), ".3g")
    threads = m.get(metrics.LATENCY_THREADS)
    return text if threads is None else f"{text} @{threads:.0f}t"


def _ratio_text(record: TrialRecord, target: str) -> str:
    value = record.ratio(target)
    return "-" if not math.isfinite(value) else f"{value:.2f}x"


def print_front(
    console: Console,
    info: StudyInfo,
    records: Sequence[TrialRecord],
    *,
    study_name: str,
    storage: str | None,
    select: str = DEFAULT_SELECTION,
) -> TrialRecord | None:
    """Print the feasible Pareto front (plus the MCaaS profile trials beside it), the trial
    recommended under ``select`` and the command that exports it (or, when that rule vouches
    for no trial, one line saying what the data can vouch for); when no trial is feasible, the
    closest trials and the bound each broke. Returns the recommended trial or None."""
    counts = state_counts(records)
    required = info.constraint.required_accuracy(info.teacher_acc)
    console.print(
        f"[bold]{escape(study_name)}[/]: {escape(describe_counts(counts))}; "
        f"target {escape(info.target)}, {escape(info.constraint.describe())} "
        f"(teacher {info.teacher_acc:.2f} % -> at least {required:.2f} % validation accuracy)",
        highlight=False,
    )
    front = front_records(info, records)
    pick = recommended_record(info, records, select)
    if not front:
        _print_no_feasible(console, info, records, study_name=study_name, storage=storage)
        return None
    on_front = {r.number for r in front}
    profiles = [r for r in records if r.profile and r.number not in on_front and r.state == "complete"]
    table = Table(
        title=f"Pareto front: {info.target} ratio vs validation accuracy (feasible trials)",
        title_justify="left",
        header_style="bold",
    )
    # Numbers never wrap or get cut. On a narrow terminal the profile and settings columns would
    # be squeezed to nothing, so they are printed under the table instead.
    wide = console.width >= WIDE_TABLE
    names = ["trial", "val %", "drop pt", "test %", f"{info.target} ratio", "size", "latency ms"]
    for name in names:
        table.add_column(name, justify="right", no_wrap=True)
    if wide:
        table.add_column("profile", justify="left", overflow="fold")
        table.add_column("settings", justify="left", overflow="fold", ratio=1)
    rows = sorted(front, key=lambda r: -r.ratio(info.target))
    listed: list[tuple[TrialRecord, str, str]] = []
    for record in rows:
        is_pick = pick is not None and record.number == pick.number
        cells = _front_cells(info, record, mark="*" if is_pick else "")
        table.add_row(*(cells if wide else cells[: len(names)]), style="bold" if is_pick else None)
        listed.append((record, cells[-2], cells[-1]))
    if profiles:
        table.add_section()
        for record in sorted(profiles, key=lambda r: r.number):
            note = "" if record.feasible else " (infeasible)"
            cells = _front_cells(info, record, mark="", note=note)
            table.add_row(*(cells if wide else cells[: len(names)]), style="dim")
            listed.append((record, cells[-2], cells[-1]))
    console.print(table)
    if not wide:
        for record, profile, settings in listed:
            console.print(f"  {record.number}" + (f" {profile}" if profile else "") + f": {settings}",
                          highlight=False)
    if profiles:
        console.print("[dim]dimmed: MCaaS profile and quantization-only trials not on the front[/]")
    legend = drop_legend(rows)
    if legend is not None:
        console.print(f"[dim]{escape(legend)}[/]", highlight=False)
    held = held_on_test(info, records)
    if held is not None:
        allowed = info.constraint.allowed_drop(info.teacher_acc)
        console.print(f"[dim]{escape(held.describe(allowed))}[/]", highlight=False)
    if pick is None:
        console.print(f"[yellow]nothing recommended:[/] {escape(unvouched_note(info, records))}",
                      highlight=False)
        return None
    drop = accuracy_drop(info, pick)
    console.print(
        f"recommended (*): trial {pick.number}"
        + (f" (profile {escape(pick.profile)})" if pick.profile else "")
        + f": {_ratio_text(pick, info.target)} {escape(info.target)} at "
        f"{drop_text(drop, paired_val_drop(pick.metrics))} pt validation drop, test accuracy "
        f"{format_number(pick.metrics.get(metrics.TEST_ACC), '.2f')} % "
        f"({escape(SELECTIONS[select].describe)})",
        highlight=False,
    )
    for note in (interval_note(info, pick, paired_val_drop(pick.metrics)),
                 passed_over_note(info, records, pick),
                 teacher_note(info, pick, paired_val_drop(pick.metrics))):
        if note is not None:
            console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    console.print("export it:", highlight=False)
    trial = None if select == DEFAULT_SELECTION else pick.number
    console.print("  " + export_command(study_name, storage, trial=trial), markup=False,
                  highlight=False, soft_wrap=True)
    return pick


def print_failures(console: Console, records: Sequence[TrialRecord]) -> None:
    """The failed trials, each with its reason (the study went on without them)."""
    failed = [r for r in records if r.state == "failed"]
    if not failed:
        return
    console.print(f"failed trials ({len(failed)}):", highlight=False)
    for record in failed:
        console.print(
            f"  trial {record.number}: {record.reason or 'no reason recorded'}",
            markup=False, highlight=False, soft_wrap=True,
        )


WIDE_TABLE = 140  # columns: below this the front table leaves out the profile and settings


def _front_cells(info: StudyInfo, record: TrialRecord, *, mark: str, note: str = "") -> list[str]:
    m = record.metrics
    return [
        f"{record.number}{mark}",
        format_number(m.get(metrics.VAL_ACC), ".2f"),
        drop_text(accuracy_drop(info, record), paired_val_drop(record.metrics)),
        format_number(m.get(metrics.TEST_ACC), ".2f"),
        _ratio_text(record, info.target),
        format_bytes(m.get(metrics.BYTES)),
        latency_text(m),
        escape((record.profile or "") + note),
        escape(settings_summary(record.config)),
    ]


def _print_no_feasible(
    console: Console,
    info: StudyInfo,
    records: Sequence[TrialRecord],
    *,
    study_name: str,
    storage: str | None,
) -> None:
    closest = closest_records(info, records)
    console.print(
        f"[bold red]No feasible trial[/]: none meets {escape(info.constraint.describe())}.",
        highlight=False,
    )
    if not closest:
        console.print("No trial has completed yet, so there is nothing to compare.")
        return
    table = Table(title="Closest trials and the bound each broke", title_justify="left",
                  header_style="bold")
    for name, justify in (
        ("trial", "right"), ("profile", "left"), ("val acc %", "right"),
        ("drop pt", "right"),
        (f"{info.target} ratio", "right"), ("size", "right"), ("broke", "left"),
        ("settings", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for record, broken in closest:
        table.add_row(
            str(record.number),
            escape(record.profile or ""),
            format_number(record.metrics.get(metrics.VAL_ACC), ".2f"),
            drop_text(accuracy_drop(info, record), paired_val_drop(record.metrics)),
            _ratio_text(record, info.target),
            format_bytes(record.metrics.get(metrics.BYTES)),
            escape(format_violations(broken)),
            escape(settings_summary(record.config)),
        )
    console.print(table)
    console.print(
        "More trials, a longer distillation budget or a looser --max-drop may reach the bound. "
        "To export the closest trial anyway:",
        highlight=False,
    )
    console.print(
        "  " + export_command(study_name, storage, trial=closest[0][0].number),
        markup=False, highlight=False, soft_wrap=True,
    )


def print_trial(
    console: Console,
    info: StudyInfo,
    record: TrialRecord,
    records: Sequence[TrialRecord],
    *,
    study_name: str,
    storage: str | None,
    torch_artifact: str | None = None,
) -> None:
    """One trial in detail: state (and why it failed or stopped), settings, per-stage metrics,
    final metrics against the teacher, constraint values, where its artifact is and how to
    export it."""
    pick = recommended_record(info, records)
    on_front = {r.number for r in front_records(info, records)}
    status = record.state
    if record.state == "complete":
        status += ", feasible" if record.feasible else ", infeasible"
        if record.number in on_front:
            status += ", on the Pareto front"
        if pick is not None and pick.number == record.number:
            status += ", recommended"
    title = f"[bold]trial {record.number}[/] of study {escape(study_name)}: {escape(status)}"
    if record.profile:
        kind = "MCaaS profile" if is_mcaas_profile(record.profile) else "quantization alone:"
        title += f" ({kind} {escape(record.profile)})"
    console.print(title, highlight=False)
    if record.seconds is not None:
        console.print(f"wall time: {record.seconds:.1f} s", highlight=False)
    if record.reason:
        label = {"failed": "failure reason", "pruned": "stopped because"}.get(record.state, "note")
        console.print(f"{label}: {escape(record.reason)}", highlight=False)

    if record.rungs:
        console.print(_rungs_line(info, record, records), highlight=False)
    elif record.untrained_ratio is not None:
        console.print(f"measured before training: {record.untrained_ratio:.2f}x {info.target}", highlight=False)
    if record.skipped_by is not None:
        console.print(
            f"skipped before training: trial {record.skipped_by} dominates every outcome it could reach",
            highlight=False,
        )
    slack = slack_line(records, info.target) if record.untrained_ratio is not None else None
    if slack is not None:
        console.print(slack, highlight=False)

    if record.config:
        settings = Table(title="settings", title_justify="left", header_style="bold")
        settings.add_column("setting")
        settings.add_column("value")
        for key, value in sorted(record.config.items()):
            settings.add_row(escape(key), escape(str(value)))
        console.print(settings)

    if record.stages:
        console.print(_stage_table(info, record.stages))

    if record.metrics:
        console.print(_final_table(info, record))

    if record.violations:
        parts = []
        for key, value in record.violations.items():
            ok = "ok" if value <= 0 else "BROKEN"
            parts.append(f"{key} {value:+.4g} ({ok})")
        console.print("constraint values (<= 0 satisfied): " + escape(", ".join(parts)),
                      highlight=False)

    if record.state in ("failed", "pruned", "running", "waiting"):
        why = {"failed": "failed", "pruned": "was stopped early (pruned)"}.get(
            record.state, f"is still {record.state}"
        )
        console.print(f"no model to export: the trial {why}.", highlight=False)
        return
    console.print(f"artifact: {escape(_file_note(record.artifact))}", highlight=False)
    if torch_artifact:
        console.print(f"pt2 artifact: {escape(_file_note(torch_artifact))}", highlight=False)
    console.print("export it:", highlight=False)
    console.print("  " + export_command(study_name, storage, trial=record.number),
                  markup=False, highlight=False, soft_wrap=True)


def _file_note(path: str | None) -> str:
    if not path:
        return "none recorded"
    p = Path(path)
    if not p.is_file():
        return f"{path} (MISSING: moved or deleted since the search)"
    return f"{path} ({format_bytes(p.stat().st_size)})"


def _stage_table(info: StudyInfo, stages: Sequence[Mapping[str, Any]]) -> Table:
    keys = [k for k in _METRIC_COLUMNS if any(k in (s.get("metrics") or {}) for s in stages)]
    table = Table(title="after each stage (torch numbers before export, ONNX Runtime after)",
                  title_justify="left", header_style="bold")
    table.add_column("stage")
    table.add_column("seconds", justify="right")
    for key in keys:
        table.add_column(_METRIC_COLUMNS[key][0], justify="right")
    teacher = [
        _METRIC_COLUMNS[k][1](info.baseline[k]) if k in info.baseline else "-" for k in keys
    ]
    table.add_row("teacher", "-", *teacher, style="dim")
    for stage in stages:
        after = stage.get("metrics") or {}
        cells = [_METRIC_COLUMNS[k][1](after[k]) if k in after else "-" for k in keys]
        seconds = format_number(stage.get("seconds"), ".2f")
        table.add_row(escape(str(stage.get("stage", "?"))), seconds, *cells)
    return table


def _final_table(info: StudyInfo, record: TrialRecord) -> Table:
    table = Table(title="final metrics (ONNX Runtime, on the artifact)", title_justify="left",
                  header_style="bold")
    for name in ("metric", "trial", "teacher", "ratio / change"):
        table.add_column(name, justify="left" if name == "metric" else "right")
    # metric -> (the target whose ratio it is scored by, how to say the ratio)
    ratio_of = {t.metric: (name, t.gain) for name, t in TARGET_REGISTRY.items()}
    for key, (label, fmt) in _METRIC_COLUMNS.items():
        if key not in record.metrics:
            continue
        value = record.metrics[key]
        teacher = info.baseline.get(key)
        change = ""
        if key == metrics.LATENCY_THREADS:  # each at its best: the teacher's in the same run
            teacher = record.metrics.get(metrics.TEACHER_LATENCY_THREADS, teacher)
        elif key in (metrics.VAL_ACC, metrics.TEST_ACC):
            if teacher is not None:
                change = f"drop {teacher - value:.2f} pt"  # lost points positive, as the front's
        elif key in ratio_of and ratio_of[key][0] in record.ratios:
            change = f"{record.ratios[ratio_of[key][0]]:.2f}x {ratio_of[key][1]}"
        elif teacher is not None and value > 0:
            change = f"{teacher / value:.2f}x smaller"
        table.add_row(label, fmt(value), fmt(teacher) if teacher is not None else "-", change)
    return table


@dataclasses.dataclass(frozen=True)
class StudyRow:
    """One study of a storage, as ``list`` prints it."""

    name: str
    counts: dict[str, int]
    target: str | None
    constraint: str | None
    best_ratio: float | None
    best_trial: int | None
    note: str = ""


def study_row(name: str, info: StudyInfo | None, records: Sequence[TrialRecord], note: str = "") -> StudyRow:
    """Counts, target, constraint and the recommended trial's ratio of one study."""
    counts = state_counts(records)
    if info is None:
        return StudyRow(name, counts, None, None, None, None, note)
    pick = recommended_record(info, records)
    scored = objectives_of(info, pick) if pick is not None else None
    return StudyRow(
        name,
        counts,
        info.target,
        info.constraint.describe(),
        scored[1] if scored else None,
        pick.number if pick else None,
        note,
    )


def print_studies(console: Console, rows: Sequence[StudyRow], *, storage: str) -> None:
    """The studies of a storage with trial counts, target and recommended ratio, then each
    constraint with its studies. Names, numbers and headers are never cut: a study's name is what
    the user types next, so the table keeps only short columns (one line per study in 80 columns
    for names of about 25 characters) and the constraints, which are prose, go under it."""
    if not rows:
        console.print(f"no studies in {escape(storage)}", highlight=False)
        return
    table = Table(title=f"studies in {escape(storage)}", title_justify="left", header_style="bold",
                  box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    cells = [
        [
            escape(row.name),
            str(sum(row.counts.values())),
            str(row.counts["feasible"]) if row.target is not None else "-",
            str(row.counts["pruned"]),
            str(row.counts["failed"]),
            escape(row.target or "-"),
            "-" if row.best_ratio is None else f"{row.best_ratio:.2f}x ({row.best_trial})",
        ]
        for row in rows
    ]
    headers = ("study", "trials", "feasible", "pruned", "failed", "target", "recommended")
    widths = [max(len(name), *(len(c[i]) for c in cells)) for i, name in enumerate(headers)]
    # A name too long for the terminal folds onto a second line (every character kept); the
    # other columns keep room for their widest cell, so rich never ellipsizes one.
    widths[0] = max(len(headers[0]), min(widths[0], console.width - sum(widths[1:]) - 2 * len(headers)))
    for i, (name, width) in enumerate(zip(headers, widths)):
        table.add_column(name, justify="left" if i in (0, 5) else "right", no_wrap=i > 0,
                         overflow="fold", min_width=width)
    for row_cells in cells:
        table.add_row(*row_cells)
    console.print(table)
    groups: dict[str, list[str]] = {}
    for row in rows:
        groups.setdefault(row.constraint or row.note or "-", []).append(row.name)
    if len(groups) == 1:
        console.print(f"constraint of every study: {escape(next(iter(groups)))}", highlight=False)
        return
    for constraint, names in groups.items():
        console.print(f"{escape(constraint)}: {escape(', '.join(names))}", highlight=False)


def _rungs_line(info: StudyInfo, record: TrialRecord, records: Sequence[TrialRecord]) -> str:
    """A multi-fidelity trial's rungs, the budget it received, and the study's calibration."""
    lines = [f"rungs (successive halving): {rungs_text(record)}"]
    budget = f"budget received: {record.budget_steps} steps, rung {len(record.rungs) - 1} reached"
    if record.resumed_from:
        budget += f" (continued from step {record.resumed_from}, where an interrupted run of this config stopped)"
    lines.append(budget)
    if record.untrained_ratio is not None:
        lines.append(f"measured before training: {record.untrained_ratio:.2f}x {info.target}")
    lines.extend(calibration_lines(records))
    return escape("\n".join(lines))
