"""What ``mcaas-search inspect`` says about an uploaded model: the pre-flight analysis (what
prunes, which blocks can go, operators, latency per thread count, epoch time), run once per
upload in its own process (``mcaas-search inspect --json``), never in the web process. Its
result lands in ``models/<id>/inspect.json``; the analysis is cached per workload, so the first
job over the model reuses it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from typing import Any

from search.service.config import ServerConfig
from search.service.uploads import workload_spec
from search.workloads import Analysis
from stages.files import write_atomic

RESULT, OUTPUT, ERRORS = "inspect.json", "inspect.out", "inspect.err"


class Inspections:
    """Starts one ``inspect`` process per upload and says how it is doing."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def start(self, model_id: str, dataset: str) -> None:
        folder = self.config.models_dir / model_id
        with self._lock:
            if (folder / RESULT).is_file() or model_id in self._running:
                return
            spec = workload_spec(self.config, model_id, dataset)
            command = [sys.executable, "-m", "search.cli", "inspect", "--json", "--model", str(spec.model),
                       "--dataset", str(spec.dataset), "--workdir", str((folder / "inspect").resolve())]
            if spec.weights is not None:
                command += ["--weights", str(spec.weights)]
            if spec.data_root is not None:
                command += ["--data-root", str(spec.data_root)]
            with open(folder / OUTPUT, "wb") as out, open(folder / ERRORS, "wb") as err:
                self._running[model_id] = subprocess.Popen(
                    command, cwd=self.config.workdir, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                    start_new_session=True,
                )

    def state(self, model_id: str) -> dict[str, Any]:
        """``{"state": "running"}``, ``{"state": "done", "analysis": ...}`` or
        ``{"state": "failed", "error": ...}`` (``{"state": "none"}`` if never started)."""
        folder = self.config.models_dir / model_id
        if (folder / RESULT).is_file():
            return _done(json.loads((folder / RESULT).read_text()))
        with self._lock:
            child = self._running.get(model_id)
            if child is not None and child.poll() is None:
                return {"state": "running"}
            self._running.pop(model_id, None)
        if not (folder / OUTPUT).exists():
            return {"state": "none"}
        try:
            result = json.loads((folder / OUTPUT).read_text())
        except ValueError:
            lines = [ln for ln in (folder / ERRORS).read_text(errors="replace").splitlines() if ln.strip()]
            why = lines[-1] if lines else "it ended with no result (stopped with the server?)"
            return {"state": "failed", "error": why}
        write_atomic(folder / RESULT, json.dumps(result) + "\n")
        (folder / OUTPUT).unlink(missing_ok=True)
        return _done(result)


def _done(result: dict[str, Any]) -> dict[str, Any]:
    """The inspect output, with its analysis as the rows ``inspect`` prints."""
    return {"state": "done", **result, "rows": Analysis.from_dict(result["analysis"]).rows()}

