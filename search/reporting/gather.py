"""The report's numbers as plain records, one ``gather_*`` per figure (no plotly here).

As in Optuna's ``visualization`` package, each figure has a function that turns the study into a
plain record and another (in ``figures``) that draws it, so the numbers can be tested without
reading plotly objects. Records become points through ``search.study.scoring``, the adapter the
tables, ``export --best``, the progress line and the bench use too.
"""

from __future__ import annotations

import dataclasses
import html
import warnings
from collections.abc import Sequence

import optuna

from objectives import Point, format_violations, hypervolume, metrics
from search.errors import first_line
from search.reporting.format import (
    format_bytes,
    passed_over_note,
    settings_summary,
    state_counts,
)
from search.reporting.reference import ReferencePoint
from search.study import StudyInfo, TrialRecord
from search.study.scoring import (
    accuracy_drop,
    closest_records,
    front_records,
    held_on_test,
    objectives_of,
    recommended_record,
    unvouched_note,
)

# The drop axis shows losses up to this many times the bound, plus one point (as the bench's
# plots do); a trial beyond is drawn at that edge.
DROP_AXIS_FACTOR = 5.0


@dataclasses.dataclass(frozen=True)
class DropAxis:
    """The accuracy-drop axis of the Pareto plot: the range shown, and the ceiling above which a
    trial is drawn at the edge instead of at its true drop."""

    low: float
    high: float
    ceiling: float


def drop_axis(drops: Sequence[float], allowed_drop: float) -> DropAxis:
    """The range that keeps the bound readable: 0 (the teacher), the bound and every drop up to
    ``DROP_AXIS_FACTOR x bound + 1`` points. One far-off trial (69 points lost) would otherwise
    stretch the axis until the whole front is a flat line at the bottom."""
    ceiling = DROP_AXIS_FACTOR * max(allowed_drop, 0.0) + 1.0
    top = max([allowed_drop, 0.0, *(min(d, ceiling) for d in drops)])
    low = min([0.0, *drops])
    pad = max(0.05 * (top - low), 0.1)
    return DropAxis(low - pad, top + pad, ceiling)


@dataclasses.dataclass(frozen=True)
class PlotPoint:
    """One completed trial on the Pareto plot; ``shown_drop`` is where it is drawn (its drop, or
    the axis ceiling when ``off_axis``)."""

    number: int
    ratio: float
    drop: float
    feasible: bool
    profile: str | None
    hover: str
    shown_drop: float
    off_axis: bool


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
    drop_axis: DropAxis


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
        test = f", test {m[metrics.TEST_ACC]:.2f} %" if metrics.TEST_ACC in m else ""
        lines.append(f"val acc {acc:.2f} % (drop {drop:.2f} pt){test}")
    ratios = ", ".join(f"{k} {v:.2f}x" for k, v in record.ratios.items())
    if ratios:
        lines.append(f"ratios: {ratios}")
    size = f"size {format_bytes(m.get(metrics.BYTES))}"
    if metrics.LATENCY_MS in m:
        size += f", latency {m[metrics.LATENCY_MS]:.3g} ms"
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
    """The Pareto plot's record: every scored trial (ratio, drop, hover text), the front, the
    pick, the counts and the drop axis (trials beyond its ceiling drawn at the edge)."""
    allowed = info.constraint.allowed_drop(info.teacher_acc)
    scored = [(r, o) for r in records if (o := objectives_of(info, r)) is not None]
    drops = [info.teacher_acc - o[0] for _, o in scored]
    axis = drop_axis(drops + [ref.drop for ref in references], allowed)
    plot_points = []
    for (record, (_, ratio)), drop in zip(scored, drops):
        off_axis = drop > axis.ceiling
        hover = trial_hover(info, record)
        if off_axis:
            hover += f"<br>true drop {drop:.2f} pt: drawn at the axis edge ({axis.ceiling:g} pt)"
        plot_points.append(
            PlotPoint(
                number=record.number,
                ratio=ratio,
                drop=drop,
                feasible=record.feasible,
                profile=record.profile,
                hover=hover,
                shown_drop=min(drop, axis.ceiling),
                off_axis=off_axis,
            )
        )
    pick = recommended_record(info, records)
    return ParetoData(
        study_name=study_name,
        target=info.target,
        constraint=info.constraint.describe(),
        allowed_drop=allowed,
        points=plot_points,
        front=[r.number for r in front_records(info, records)],
        recommended=None if pick is None else pick.number,
        counts=state_counts(records),
        references=list(references),
        drop_axis=axis,
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
            info.baseline.get(metrics.VAL_ACC),
            info.baseline.get(metrics.BYTES),
            info.baseline.get(metrics.LATENCY_MS),
        )
    ]
    for stage in pick.stages:
        after = stage.get("metrics") or {}
        if not after:  # e.g. the "measure" step: wall time only, no model state
            continue
        steps.append(
            StageStep(
                str(stage.get("stage", "?")),
                stage.get("seconds"),
                after.get(metrics.VAL_ACC),
                after.get(metrics.BYTES),
                after.get(metrics.LATENCY_MS),
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
    # Lines on the recommendation: the point-estimate trial it passed over, what the data vouches
    # for when it recommends none, and how often the bound held on test.
    passed_over: str | None = None
    unvouched: str | None = None
    held_on_test: str | None = None


def gather_report(
    study: optuna.Study,
    info: StudyInfo,
    records: Sequence[TrialRecord],
    *,
    references: Sequence[ReferencePoint] = (),
    export_line: str | None = None,
) -> ReportData:
    """Every record the HTML page shows, gathered once from ``records``."""
    pick = recommended_record(info, records)
    front = front_records(info, records)
    held = held_on_test(info, records)
    return ReportData(
        study_name=study.study_name,
        info=info,
        pareto=gather_pareto(info, records, study_name=study.study_name, references=references),
        stages=gather_stages(info, records),
        importances=gather_importances(study),
        history=gather_history(info, records),
        front=front,
        recommended=pick,
        closest=closest_records(info, records),
        export_line=export_line,
        passed_over=None if pick is None else passed_over_note(info, records, pick),
        unvouched=unvouched_note(info, records) if pick is None and front else None,
        held_on_test=None if held is None else held.describe(info.constraint.allowed_drop(info.teacher_acc)),
    )
