"""What a multi-fidelity study's records say about its rungs: the rung -> final accuracy
calibration its promoted trials support (the one its promotion rule uses), and the lines the
run summary, ``show`` and the report print about rungs and compute."""

from __future__ import annotations

from collections.abc import Sequence

from objectives import Calibration, fit_calibration
from objectives import metrics as m
from search.study.records import TrialRecord


def rung_pairs(records: Sequence[TrialRecord], steps: int) -> list[tuple[float, float]]:
    """(validation accuracy at the rung at ``steps``, final validation accuracy) of the finished
    trials that passed that rung."""
    return [
        (acc, float(r.metrics[m.VAL_ACC]))
        for r in records
        if r.state == "complete" and m.VAL_ACC in r.metrics
        for s, acc in r.rungs
        if s == steps and s != r.budget_steps
    ]


def calibrations(records: Sequence[TrialRecord]) -> list[tuple[int, Calibration]]:
    """Each rung a trial was judged at (steps, below its budget), with the calibration the
    study's finished trials give it now."""
    budgets = [r.budget_steps for r in records if r.budget_steps]
    if not budgets:
        return []
    top = max(budgets)  # type: ignore[type-var]
    judged = sorted({s for r in records for s, _ in r.rungs if s != r.budget_steps})
    return [(s, fit_calibration(rung_pairs(records, s), steps=s, top=top)) for s in judged]


def calibration_lines(records: Sequence[TrialRecord]) -> list[str]:
    """One line per rung: how accuracy there predicted the final accuracy in this study."""
    lines = []
    for k, (steps, cal) in enumerate(calibrations(records)):
        if cal.pairs:
            lines.append(
                f"rung {k} ({steps} steps) accuracy predicted final accuracy with residual sd "
                f"{cal.residual_sd or 0.0:.2f} pt over {cal.pairs} trials (final = {cal.slope:.2f} x "
                f"rung {cal.intercept:+.1f} pt)"
            )
        else:
            n = len(rung_pairs(records, steps))
            lines.append(
                f"rung {k} ({steps} steps): {n} finished trials, too few to fit; judged by the "
                f"default (final accuracy up to {cal.spread:.1f} pt above the rung's)"
            )
    return lines


def rungs_text(record: TrialRecord) -> str:
    """A trial's rungs in one line: ``120 steps 96.94 % -> 360 steps 97.50 %``."""
    return " -> ".join(f"{steps} steps {acc:.2f} %" for steps, acc in record.rungs)


def compute_line(records: Sequence[TrialRecord]) -> str:
    """The study's training compute: samples seen in all, and per trial that trained."""
    trained = [r.samples_seen for r in records if r.samples_seen]
    total = sum(trained)
    mean = total / len(trained) if trained else 0.0
    return f"compute: {total:,.0f} training samples seen ({len(trained)} trials trained, {mean:,.0f} each on average)"


def strategy_line(records: Sequence[TrialRecord]) -> str | None:
    """How the multi-fidelity trials ended (None for a study with none)."""
    multi = [r for r in records if r.rungs]
    if not multi:
        return None
    stopped = [r for r in multi if r.state == "pruned"]
    budgets = sorted({r.budget_steps for r in multi if r.state == "complete" and r.budget_steps})
    return (
        f"successive halving: {len(multi)} trials trained rung by rung, {len(stopped)} stopped at a rung, "
        f"{len(multi) - len(stopped)} trained to their budget"
        + (f" ({', '.join(map(str, budgets))} steps)" if budgets else "")
    )
