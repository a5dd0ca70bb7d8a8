"""What a study's records say about its rungs and its measurements before training: the rung ->
final accuracy calibration its promoted trials support (the one its promotion rule uses), the
untrained -> trained ratio slack its finished trials support (the one its skip before training
uses), and the lines the run summary, ``show`` and the report print about them and compute."""

from __future__ import annotations

from collections.abc import Sequence

from objectives import MIN_SLACK_PAIRS, Calibration, fit_calibration, fit_untrained_slack
from objectives import metrics as m
from search.study.records import TrialRecord


def final_accuracy(record: TrialRecord) -> float | None:
    """The validation accuracy a finished trial's file measured (None: it did not finish)."""
    if record.state != "complete" or m.VAL_ACC not in record.metrics:
        return None
    return float(record.metrics[m.VAL_ACC])


def rung_pairs(records: Sequence[TrialRecord], steps: int) -> list[tuple[float, float]]:
    """(validation accuracy at the rung at ``steps``, final validation accuracy) of the finished
    trials that passed that rung."""
    return [
        (acc, final)
        for r in records
        if (final := final_accuracy(r)) is not None
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


def untrained_pairs(records: Sequence[TrialRecord], target: str) -> list[tuple[float, float]]:
    """(ratio measured on the untrained structural student, ratio of the trained file) on
    ``target`` of the finished trials that measured both."""
    return [
        (r.untrained_ratio, r.ratios[target])
        for r in records
        if r.state == "complete" and r.untrained_ratio and r.ratios.get(target)
    ]


def untrained_slack(records: Sequence[TrialRecord], target: str) -> float | None:
    """The slack on the untrained ratio the study's finished trials support (see
    objectives.fit_untrained_slack): what its skip before training adds to a measured ratio."""
    return fit_untrained_slack(target, untrained_pairs(records, target))


def slack_line(records: Sequence[TrialRecord], target: str) -> str | None:
    """How the ratio measured before training predicted the trained file's, and the slack the
    skip before training adds to it (None: no trial measured both, every pair agreed exactly, as
    file bytes do, or the target has no bound)."""
    pairs = untrained_pairs(records, target)
    slack = fit_untrained_slack(target, pairs)
    excess = [t / u - 1.0 for u, t in pairs]
    if slack is None or not any(excess):
        return None
    used = (f"allows +{100 * slack:.0f} % (fitted on these trials)" if len(pairs) >= MIN_SLACK_PAIRS
            else f"allows the fixed +{100 * slack:.0f} % (a fit needs {MIN_SLACK_PAIRS} trials)")
    return (
        f"{target} ratio measured before training vs the trained file's: {100 * min(excess):+.1f} % to "
        f"{100 * max(excess):+.1f} % over {len(pairs)} trials; the skip before training {used}"
    )


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
