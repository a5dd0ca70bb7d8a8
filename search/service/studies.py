"""What the API says about studies, read from the study storage the CLI uses (so a study the CLI
ran is listed and shown too) joined with the server's job records; and the files it serves for
a study: a trial's verified ONNX file and sidecar, the HTML report."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from search.errors import UserError
from search.exporting import SIDECAR_SUFFIX, export_trial, fetch_files, select_trial
from search.reporting.as_json import finite, trial_json
from search.reporting.figures import draw_pareto
from search.reporting.format import settings_summary, state_counts
from search.reporting.gather import gather_pareto
from search.reporting.page import REPORT_HTML, write_report
from search.reporting.progress import snapshot
from search.request import STUDY_NAME
from search.service.config import ServerConfig
from search.service.errors import ApiError
from search.service.jobs import FINAL, Jobs
from search.study import StudyInfo, TrialRecord, open_storage, trial_records
from search.study.scoring import accuracy_drop, front_records, recommended_record
from search.workloads import Analysis

MODEL_FILE = "model.onnx"


def _check_study_name(name: str) -> None:
    """Study names become folder names (exports, reports): a plain name or a 400."""
    if not STUDY_NAME.match(name):
        raise ApiError(400, "study", f"{name!r} is no study name: letters, digits, '_', '-' and '.' only")


class Studies:
    """The server's view of the storage: one storage object kept open (a journal is then read
    incrementally, not replayed for every request), the jobs, and the export cache."""

    def __init__(self, config: ServerConfig, jobs: Jobs) -> None:
        self.config, self.jobs = config, jobs
        self._storage: BaseStorage | None = None
        self._storage_lock = threading.Lock()
        self._export_locks: dict[tuple[str, int], threading.Lock] = {}

    def storage(self) -> BaseStorage | None:
        """The storage, or None while it does not exist yet (no study was ever run)."""
        with self._storage_lock:
            if self._storage is None:
                try:
                    self._storage = open_storage(self.config.storage_url, create=False)
                except UserError:
                    return None
            return self._storage

    def names(self) -> list[str]:
        """Studies in the storage, then jobs whose study does not exist yet (queued)."""
        storage = self.storage()
        stored = (
            [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
            if storage is not None
            else []
        )
        return stored + [name for name in self.jobs.names() if name not in stored]

    def _study(self, name: str) -> tuple[optuna.Study, StudyInfo] | None:
        storage = self.storage()
        if storage is None:
            return None
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            return None
        try:
            return study, StudyInfo.load(study)
        except UserError:  # created, but its baseline is not saved yet (or not mcaas-search's)
            return None

    def _require(self, name: str) -> tuple[optuna.Study, StudyInfo]:
        _check_study_name(name)
        found = self._study(name)
        if found is None:
            if self.jobs.request(name) is not None:
                raise ApiError(409, "study", f"study {name!r} has not started yet: its teacher is being measured")
            raise ApiError(404, "study", f"no study {name!r}; GET /api/studies lists them")
        return found

    def status(self, name: str) -> dict[str, Any]:
        """State, trials by state, best feasible so far and ETA of study ``name``."""
        _check_study_name(name)
        request = self.jobs.request(name)
        found = self._study(name)
        if request is None and found is None:
            raise ApiError(404, "study", f"no study {name!r}; GET /api/studies lists them")
        job = self.jobs.state(name) if request is not None else None
        out: dict[str, Any] = {"id": name, "job": job, "request": None}
        if request is not None:
            out["request"] = {
                k: getattr(request, k)
                for k in ("model", "dataset", "target", "max_drop", "trials", "timeout_s", "seed", "created")
            }
        if found is None:
            out.update(state=job["state"] if job else "queued", trials={"total": request.trials if request else 0})
            return out
        study, info = found
        records = trial_records(study)
        total = request.trials if request is not None else len(records)
        snap = snapshot(study, info, total=total, jobs=1)
        counts = state_counts(records)
        if job is not None:
            state = job["state"]
        else:  # a study the CLI ran: running while it has running trials
            state = "running" if counts["running"] else "done"
        best = recommended_record(info, records)
        out.update(
            state=state,
            target=info.target,
            constraint=info.constraint.describe(),
            teacher=info.baseline,
            workload=info.workload,
            trials={"total": total, "finished": snap.done, **counts},
            best=None if best is None else {
                "trial": best.number,
                "ratio": best.ratio(info.target),
                "drop": accuracy_drop(info, best),
                "settings": settings_summary(best.config),
            },
            eta_s=None if state in FINAL else snap.eta_s,
            analysis=Analysis.from_dict(info.analysis).rows() if info.analysis else None,
        )
        return finite(out)

    def trials(self, name: str) -> list[dict[str, Any]]:
        study, info = self._require(name)
        return [finite(self._trial(info, r)) for r in trial_records(study)]

    def trial(self, name: str, number: int) -> dict[str, Any]:
        study, info = self._require(name)
        for record in trial_records(study):
            if record.number == number:
                return finite(self._trial(info, record))
        raise ApiError(404, "trial", f"study {name!r} has no trial {number}")

    @staticmethod
    def _trial(info: StudyInfo, r: TrialRecord) -> dict[str, Any]:
        data = trial_json(info, r)
        data.pop("artifact")  # a server path: clients download through the API
        return data

    def front(self, name: str) -> dict[str, Any]:
        """The feasible Pareto front, the recommended trial, and the report's Pareto figure
        (plotly JSON: each trial's marker carries its number as ``customdata``)."""
        study, info = self._require(name)
        records = trial_records(study)
        pick = recommended_record(info, records)
        figure = draw_pareto(gather_pareto(info, records, study_name=name))
        return finite({
            "target": info.target,
            "recommended": None if pick is None else pick.number,
            "front": [self._trial(info, r) for r in front_records(info, records)],
            "figure": json.loads(figure.to_json()),
        })

    def export(self, name: str, number: int) -> tuple[Path, Path]:
        """``(model.onnx, its sidecar)`` of trial ``number``, exported and verified as ``mcaas-search
        export`` does (re-measured in ONNX Runtime) the first time, then served from the cache."""
        study, info = self._require(name)
        out = self.config.exports_dir / name / str(number) / MODEL_FILE
        sidecar = out.with_name(out.name + SIDECAR_SUFFIX)
        with self._export_locks.setdefault((name, number), threading.Lock()):
            if out.is_file() and sidecar.is_file():
                return out, sidecar
            try:
                selection = select_trial(info, trial_records(study), study_name=name, trial=number, best=False)
                selection = fetch_files(study, selection)
            except UserError as exc:
                status = 404 if "has no trial" in str(exc) else 409
                raise ApiError(status, "trial", str(exc)) from None
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                export_trial(info, selection, study_name=name, out=out)
            except UserError as exc:
                raise ApiError(409, "trial", str(exc)) from None
        return out, sidecar

    def report(self, name: str) -> Path:
        """The study's HTML report, written afresh (plotly.js embedded: it works offline)."""
        study, info = self._require(name)
        folder = self.config.folder / "reports" / name
        write_report(study, info, out_dir=folder, storage=self.config.storage)
        return folder / REPORT_HTML
