"""The report's plotly figures (``search.reporting.figures``), drawn from gathered records."""

from __future__ import annotations

import optuna
import pytest
import torch

from search.reporting import figures, gather, reference
from tests.search.study_fixtures import HandMadeStudy, load_hand_made

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def loaded(hand: HandMadeStudy) -> tuple[optuna.Study, list]:
    return load_hand_made(hand)


def test_pareto_figure_draws_every_kind_of_trial(hand: HandMadeStudy, loaded: tuple[optuna.Study, list]) -> None:
    refs = [reference.ReferencePoint("NNCF int8", 4.0, 0.0)]
    fig = figures.draw_pareto(gather.gather_pareto(hand.info, loaded[1], study_name="hand", references=refs))
    traces = {t.name: t for t in fig.data}
    assert set(traces) == {
        "feasible trials", "infeasible trials", "Pareto front (feasible)",
        "MCaaS profile: balanced", "MCaaS profile: high-accuracy", "MCaaS profile: max-compression",
        "recommended: trial 3", "published results",
    }
    assert list(traces["Pareto front (feasible)"].x) == pytest.approx([3.9, 8.0, 12.0])
    symbols = {traces[f"MCaaS profile: {p}"].marker.symbol for p in ("balanced", "high-accuracy", "max-compression")}
    assert len(symbols) == 3
    assert traces["MCaaS profile: max-compression"].marker.color == (figures.INFEASIBLE_COLOUR,)
    assert list(traces["infeasible trials"].x) == pytest.approx([15.0])
    assert fig.layout.xaxis.type == "log"
    assert any(shape.y0 == 1.0 for shape in fig.layout.shapes)  # the max-drop line
    assert "1 pruned, 1 failed" in fig.layout.title.subtitle.text


def test_each_trial_marker_carries_its_number(hand: HandMadeStudy, loaded: tuple[optuna.Study, list]) -> None:
    """The service's page opens the trial a click lands on, from the marker's customdata."""
    data = gather.gather_pareto(hand.info, loaded[1], study_name="hand")
    fig = figures.draw_pareto(data)
    by_number = {p.number: p for p in data.points}
    for trace in fig.data:
        if trace.customdata is None:
            assert trace.name == "Pareto front (feasible)"  # a line, not trials
            continue
        for x, y, number in zip(trace.x, trace.y, trace.customdata):
            assert (x, y) == pytest.approx((by_number[number].ratio, by_number[number].shown_drop))
    marked = {n for trace in fig.data if trace.customdata is not None for n in trace.customdata}
    assert marked == set(by_number)


def test_a_far_off_trial_does_not_flatten_the_front(hand: HandMadeStudy) -> None:
    """One trial that lost 69 points used to stretch the drop axis so the front was a flat line."""
    from objectives import metrics
    from search.study import TrialRecord

    def trial(number: int, drop: float, size: float) -> TrialRecord:
        broke = drop - 1.0
        return TrialRecord(number, "complete", None, {}, {metrics.VAL_ACC: 96.0 - drop}, {"size": size},
                           {"accuracy_drop": broke}, [], None, None, 1.0, None)

    records = [trial(0, 0.2, 3.0), trial(1, 0.6, 8.0), trial(2, 0.9, 12.0), trial(3, 69.0, 80.0), trial(4, 1.5, 20.0)]
    data = gather.gather_pareto(hand.info, records, study_name="far")
    by_number = {p.number: p for p in data.points}
    low, high = data.drop_axis.low, data.drop_axis.high
    assert low < 0.0 and data.allowed_drop < high < 10.0  # the bound and the front are readable
    assert by_number[3].off_axis and by_number[3].shown_drop == pytest.approx(data.drop_axis.ceiling)
    assert by_number[3].drop == pytest.approx(69.0) and "true drop 69.00 pt" in by_number[3].hover
    assert not any(p.off_axis for n, p in by_number.items() if n != 3)
    assert by_number[4].shown_drop == pytest.approx(1.5)

    fig = figures.draw_pareto(data)
    assert tuple(fig.layout.yaxis.range) == pytest.approx((low, high))
    traces = {t.name: t for t in fig.data}
    edge = next(t for name, t in traces.items() if name.startswith("beyond the axis"))
    assert list(edge.y) == pytest.approx([data.drop_axis.ceiling]) and edge.marker.symbol == "arrow-bar-up"
    assert "true drop 69.00 pt" in edge.hovertext[0]
    assert list(traces["infeasible trials"].y) == pytest.approx([1.5])  # the outlier only once, at the edge
    assert all(y <= high for t in fig.data for y in (t.y or ()))
