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
