"""Jobs: a study the server runs, requested over the API (checked in ``requests``), run by a
worker process; this module keeps them on disk and schedules their workers.

Everything about a job is a file in ``<server folder>/jobs/<study>/``, so a server killed with
kill -9 finds its jobs again on restart:

- ``request.json``: what was asked (written once, when the job is accepted);
- ``worker.lock``: held (``flock``) by the worker process for its whole life; the kernel drops it
  when the worker dies, so "is a worker running this job" needs no pid bookkeeping;
- ``worker.json`` / ``worker.log``: the last worker's pid, start count, and output;
- ``cancel``: the client asked to stop it;
- ``result.json``: how it ended (``done``, ``failed``, ``cancelled``), written by the worker.

A job with no result and no live worker is queued: the scheduler starts a worker for it, which
resumes its study (``run_study``: interrupted trials are failed as interrupted and run again).
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from search.service.config import ServerConfig
from search.service.errors import ApiError
from search.service.requests import SPACE_FILE, JobRequest
from stages.files import write_atomic

REQUEST, RESULT, WORKER, LOCK, CANCEL, LOG = (
    "request.json", "result.json", "worker.json", "worker.lock", "cancel", "worker.log",
)
FINAL = ("done", "failed", "cancelled")
# A job whose worker died this many times without writing a result is failed, not restarted.
MAX_STARTS = 3


# ---------------------------------------------------------------------------------------------
# Jobs on disk


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def worker_alive(folder: Path) -> bool:
    """Whether a worker holds the job's lock (the kernel drops it when the worker dies)."""
    path = folder / LOCK
    if not path.exists():
        return False
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


class Jobs:
    """The jobs of one server folder, and the scheduler thread that starts their workers."""

    def __init__(self, config: ServerConfig, *, poll_s: float = 0.5) -> None:
        self.config = config
        self._poll_s = poll_s
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._signalled: dict[str, float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading --------------------------------------------------------------------------

    def folder(self, name: str) -> Path:
        return self.config.jobs_dir / name

    def names(self) -> list[str]:
        """Job names in the order they were requested."""
        if not self.config.jobs_dir.is_dir():
            return []
        jobs = []
        for folder in self.config.jobs_dir.iterdir():
            request = _read_json(folder / REQUEST)
            if request is not None:
                jobs.append((request.get("created", ""), folder.name))
        return [name for _, name in sorted(jobs)]

    def request(self, name: str) -> JobRequest | None:
        data = _read_json(self.folder(name) / REQUEST)
        return JobRequest.from_dict(data) if data is not None else None

    def state(self, name: str) -> dict[str, Any]:
        """``{"state": queued | running | done | failed | cancelled, ...}`` of job ``name``."""
        folder = self.folder(name)
        result = _read_json(folder / RESULT)
        if result is not None:
            return result
        child = self._children.get(name)
        if (child is not None and child.poll() is None) or worker_alive(folder):
            return {"state": "running", **(_read_json(folder / WORKER) or {})}
        return {"state": "queued", "starts": (_read_json(folder / WORKER) or {}).get("starts", 0)}

    # -- writing --------------------------------------------------------------------------

    def create(self, request: JobRequest) -> None:
        """Accept a job: its folder is claimed atomically (mkdir), its request written last."""
        self.config.jobs_dir.mkdir(parents=True, exist_ok=True)
        folder = self.folder(request.study)
        try:
            folder.mkdir()
        except FileExistsError:
            raise ApiError(409, "study", f"a study named {request.study!r} already exists; pick another name") from None
        if request.space is not None:
            write_atomic(folder / SPACE_FILE, request.space)
        write_atomic(folder / REQUEST, json.dumps(request.to_dict(), indent=2) + "\n")
        self._wake.set()

    def cancel(self, name: str) -> dict[str, Any]:
        """Ask job ``name`` to stop: a running worker gets Ctrl-C (the trial it runs is failed as
        interrupted), a queued job never starts. A finished job is left as it is."""
        state = self.state(name)
        if state["state"] in FINAL:
            return state
        (self.folder(name) / CANCEL).touch()
        self._wake.set()
        self.tick()
        return self.state(name)

    # -- the scheduler --------------------------------------------------------------------

    def start(self) -> None:
        """Start the scheduler thread (it also picks up the jobs a killed server left)."""
        self.config.jobs_dir.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, name="mcaas-jobs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop scheduling. Running workers go on: a job outlives the server."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # a full disk must not end scheduling; the next tick retries
                print(f"mcaas-search serve: scheduler: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._wake.wait(self._poll_s)
            self._wake.clear()

    def tick(self) -> None:
        """One pass: reap finished workers, deliver cancellations, start queued jobs."""
        with self._lock:
            for name, child in list(self._children.items()):
                if child.poll() is not None:
                    del self._children[name]
            running = 0
            for name in self.names():
                folder = self.folder(name)
                state = self.state(name)["state"]
                cancelled = (folder / CANCEL).exists()
                if state == "running":
                    running += 1
                    if cancelled:
                        self._interrupt(name, folder)
                elif state == "queued" and cancelled:
                    write_result(folder, "cancelled", "cancelled before it started")
            for name in self.names():
                if running >= self.config.workers:
                    break
                if self.state(name)["state"] == "queued":
                    self._launch(name)
                    running += 1

    def _interrupt(self, name: str, folder: Path) -> None:
        """Ctrl-C to the worker's process group; kill -9 if it has not stopped 60 s later."""
        pid = (_read_json(folder / WORKER) or {}).get("pid")
        if not isinstance(pid, int):
            return
        first = self._signalled.get(name)
        if first is not None and time.monotonic() - first < 60:
            return
        sig = signal.SIGINT if first is None else signal.SIGKILL
        self._signalled[name] = time.monotonic()
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        if sig == signal.SIGKILL:
            write_result(folder, "cancelled", "stopped with kill -9: it did not stop 60 s after Ctrl-C")

    def _launch(self, name: str) -> None:
        folder = self.folder(name)
        previous = _read_json(folder / WORKER) or {}
        starts = int(previous.get("starts", 0))
        if starts >= MAX_STARTS:
            write_result(folder, "failed", f"its worker died {starts} times without finishing; see worker.log")
            return
        log = open(folder / LOG, "ab")
        try:
            child = subprocess.Popen(
                [sys.executable, "-m", "search.service.worker", str(folder.resolve())],
                cwd=self.config.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: Ctrl-C to the server spares it
            )
        finally:
            log.close()
        self._children[name] = child
        self._signalled.pop(name, None)
        write_atomic(
            folder / WORKER,
            json.dumps({"pid": child.pid, "starts": starts + 1, "started": _now()}) + "\n",
        )


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def write_result(folder: Path, state: str, error: str | None = None, **extra: Any) -> None:
    write_atomic(folder / RESULT, json.dumps({"state": state, "error": error, "finished": _now(), **extra}) + "\n")


__all__ = ["FINAL", "Jobs", "worker_alive", "write_result"]
