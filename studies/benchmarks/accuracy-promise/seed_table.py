"""The per-seed table of BENCHMARKS.md's accuracy-promise sections, read from the studies.

For each ``STUDY=LOG`` argument (``LOG`` is the search's stderr), it asks the CLI for the study
as JSON under both rules (``show --study STUDY --select point|confident --json``) and prints one
Markdown row: the teacher's validation / test accuracy, each rule's pick (trial, size ratio,
validation drop with its paired 95 % interval, test drop) and whether a ``warning:`` line came
before trial 0 in ``LOG``. ``--csv PATH`` also writes the rows as CSV. Run it from the folder
holding ``studies/``, with the project on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from objectives import PairedDrop

RULES = ("point", "confident")
BOUND = 1.0  # --max-drop of the runs, in points


def study_as_json(study: str, select: str) -> dict[str, Any]:
    """``mcaas-search show --study STUDY --select SELECT --json``, parsed."""
    done = subprocess.run(
        [sys.executable, "-m", "search.cli", "show", "--study", study, "--select", select, "--json"],
        capture_output=True, text=True, check=True,
    )
    return json.loads(done.stdout)


def warned_before_trial_0(log: Path) -> str:
    """The ``warning:`` message the search printed before its first progress line, or ''
    (the console wraps long lines: a message runs until the next message or progress line)."""
    message: list[str] = []
    for line in log.read_text().splitlines():
        if re.match(r"\d+/\d+ trials", line):
            break
        if line.startswith("warning:"):
            message = [line]
        elif message and not line.startswith("study "):
            message.append(line)
        elif message:
            break
    return " ".join(message)


def pick_cells(study: dict[str, Any]) -> dict[str, Any]:
    """One rule's pick: trial, size ratio, validation drop with its interval, test drop."""
    pick = study["recommended"]
    if pick is None:
        return {"trial": None, "ratio": None, "val_drop": None, "low": None, "high": None, "test_drop": None}
    m = pick["metrics"]
    paired = PairedDrop(int(m["n_val"]), int(m["val_lost"]), int(m["val_gained"]))
    low, high = paired.interval()
    return {
        "trial": pick["number"], "ratio": pick["ratios"]["size"], "val_drop": paired.drop,
        "low": low, "high": high, "test_drop": study["teacher"]["test_acc"] - m["test_acc"],
    }


def row(study: str, log: Path) -> dict[str, Any]:
    """Everything the table says about one study."""
    by_rule = {rule: study_as_json(study, rule) for rule in RULES}
    teacher = by_rule["point"]["teacher"]
    out: dict[str, Any] = {"study": study, "teacher_val": teacher["val_acc"], "teacher_test": teacher["test_acc"],
                           "n_val": int(teacher.get("n_val", 0)), "warning": warned_before_trial_0(log)}
    for rule in RULES:
        out.update({f"{rule}_{k}": v for k, v in pick_cells(by_rule[rule]).items()})
    return out


def markdown(r: dict[str, Any]) -> str:
    """``r`` as a row of the BENCHMARKS.md table."""
    def pick(rule: str) -> list[str]:
        if r[f"{rule}_trial"] is None:
            return ["none", "", ""]
        return [f"{r[f'{rule}_trial']}, {r[f'{rule}_ratio']:.2f}x",
                f"{r[f'{rule}_val_drop']:.2f} [{r[f'{rule}_low']:.2f}, {r[f'{rule}_high']:.2f}]",
                f"{r[f'{rule}_test_drop']:.2f}"]
    cells = [r["study"], f"{r['teacher_val']:.2f} / {r['teacher_test']:.2f}", str(r["n_val"]),
             *pick("point"), *pick("confident"), "yes" if r["warning"] else "no"]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", nargs="+", metavar="STUDY=LOG")
    parser.add_argument("--csv", type=Path)
    args = parser.parse_args()
    rows = [row(s, Path(log)) for s, log in (a.split("=", 1) for a in args.studies)]
    print("| study | teacher val / test % | val images | `point`: trial, size ratio | val drop [95 % interval] "
          "| test drop | `confident`: trial, size ratio | val drop [95 % interval] | test drop | warning before trial 0 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        print(markdown(r))
    for rule in RULES:
        held = sum(r[f"{rule}_test_drop"] is not None and r[f"{rule}_test_drop"] <= BOUND for r in rows)
        picked = sum(r[f"{rule}_trial"] is not None for r in rows)
        print(f"\n`{rule}`: {picked} of {len(rows)} runs recommend a trial; {held} of them held {BOUND:g} pt on test")
    for r in rows:
        if r["warning"]:
            print(f"\n{r['study']}: {r['warning']}")
    if args.csv:
        with args.csv.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
