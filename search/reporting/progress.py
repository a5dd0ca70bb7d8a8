"""Live progress of a search, read from the study storage (so it works for any number of
workers and either backend): trials done / running / pruned / failed, recommended, ETA."""

from __future__ import annotations

import dataclasses
import statistics
import threading
from collections.abc import Callable

import optuna
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from search.study import StudyInfo, trial_records
from search.study.scoring import accuracy_drop, objectives_of, recommended_record


@dataclasses.dataclass(frozen=True)
class Snapshot:
    done: int
    running: int
    pruned: int
    failed: int
    best_ratio: float | None
    best_drop: float | None
    eta_s: float | None

    def describe(self, target: str) -> str:
        parts = [f"{self.running} running", f"{self.pruned} pruned", f"{self.failed} failed"]
        if self.best_ratio is not None and self.best_drop is not None:
            parts.append(f"recommended: {self.best_ratio:.1f}x {target}, drop {self.best_drop:.2f} pt")
        else:
            parts.append("none recommended yet")
        if self.eta_s is not None:
            parts.append(f"ETA {_duration(self.eta_s)}")
        return " · ".join(parts)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def snapshot(study: optuna.Study, info: StudyInfo, total: int, jobs: int) -> Snapshot:
    records = trial_records(study)
    finished = [r for r in records if r.state in ("complete", "pruned", "failed")]
    best = recommended_record(info, records)
    scored = objectives_of(info, best) if best is not None else None
    durations = [r.seconds for r in finished if r.seconds]
    remaining = max(total - len(finished), 0)
    eta = None
    if durations and remaining:
        eta = statistics.mean(durations) * remaining / max(jobs, 1)
    return Snapshot(
        done=len(finished),
        running=sum(r.state == "running" for r in records),
        pruned=sum(r.state == "pruned" for r in records),
        failed=sum(r.state == "failed" for r in records),
        best_ratio=scored[1] if scored else None,
        best_drop=accuracy_drop(info, best) if best else None,
        eta_s=eta,
    )


class LiveProgress:
    """A progress bar refreshed from the storage every ``interval`` seconds in a thread."""

    def __init__(
        self,
        study: optuna.Study,
        info: StudyInfo,
        *,
        total: int,
        jobs: int,
        console: Console,
        interval: float = 2.0,
    ) -> None:
        self._snap: Callable[[], Snapshot] = lambda: snapshot(study, info, total, jobs)
        self._target = info.target
        self._interval = interval
        self._stop = threading.Event()
        self._progress = Progress(
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("trials · {task.description}"),
            console=console,
            transient=False,
        )
        self._task = self._progress.add_task("starting", total=total)
        self._console, self._total, self._last_done = console, total, -1
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _refresh(self) -> None:
        snap = self._snap()
        if self._console.is_terminal:
            self._progress.update(self._task, completed=snap.done, description=snap.describe(self._target))
        elif snap.done != self._last_done:  # a log file: one line per finished trial
            self._console.print(f"{snap.done}/{self._total} trials · {snap.describe(self._target)}")
        self._last_done = snap.done

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._refresh()
            except Exception:  # a storage hiccup must not kill the display; next poll retries
                continue

    def __enter__(self) -> LiveProgress:
        if self._console.is_terminal:
            self._progress.start()
        self._refresh()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:
            self._refresh()
        finally:
            self._progress.stop()
