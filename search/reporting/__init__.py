"""What mcaas-search shows of a study: the HTML report (gathered records, plotly figures, the
page, trials.csv, a Chromium screenshot), the terminal tables and the live progress line.

The names below are imported on first use, so ``import search.reporting`` stays cheap (plotly,
pandas and rich load only when a report or table is made; ``mcaas-search --help`` stays fast).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module of this package that defines it
_HOME: dict[str, str] = {
    **dict.fromkeys(
        ("describe_counts", "export_command", "format_bytes", "format_number",
         "settings_summary", "state_counts"),
        "format",
    ),
    **dict.fromkeys(("ReferencePoint", "read_reference"), "reference"),
    **dict.fromkeys(
        ("DropAxis", "HistoryData", "ParetoData", "PlotPoint", "ReportData", "StageStep",
         "StagesData", "drop_axis", "gather_history", "gather_importances", "gather_pareto",
         "gather_report", "gather_stages", "trial_hover"),
        "gather",
    ),
    **dict.fromkeys(
        ("FEASIBLE_COLOUR", "INFEASIBLE_COLOUR", "draw_history", "draw_importances",
         "draw_pareto", "draw_stages"),
        "figures",
    ),
    **dict.fromkeys(
        ("REPORT_HTML", "TRIALS_CSV", "trials_frame", "write_html", "write_report",
         "write_trials_csv"),
        "page",
    ),
    **dict.fromkeys(("CHROMIUM_CANDIDATES", "find_chromium", "take_screenshot"), "screenshot"),
    **dict.fromkeys(
        ("StudyRow", "print_failures", "print_front", "print_studies", "print_trial", "study_row"),
        "tables",
    ),
    **dict.fromkeys(("LiveProgress", "Snapshot", "snapshot"), "progress"),
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


def __dir__() -> list[str]:
    return __all__
