"""The worker process of one job: ``python -m search.service.worker JOB_FOLDER``.

It runs the job's study with the library's own path (``load_workload`` then ``run_study``, as
``mcaas-search run`` does), in the server's working directory and study storage, so the CLI's
``report``, ``show``, ``export`` and ``list`` read what it ran. It holds the job's lock while it
lives and writes ``result.json`` when it ends. A worker started for a job whose earlier worker
died resumes the study: trials that worker left running are failed as interrupted and run again.
Ctrl-C (the server's cancel) ends it after marking the running trial interrupted.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import signal
import sys
import time
import traceback
from pathlib import Path

import torch

from search.backends import run_study
from search.errors import USER_ERRORS, first_line
from search.service.jobs import CANCEL, LOCK, REQUEST, RESULT, write_result
from search.service.requests import SPACE_FILE, JobRequest
from search.trials.context import trial_threads
from search.workloads import load_workload, pick_device


def run_job(folder: Path) -> int:
    """Run the job in ``folder`` to its end; returns the exit code (0 done, 1 failed, 130 cancelled)."""
    request = JobRequest.from_dict(json.loads((folder / REQUEST).read_text())).search
    if (folder / SPACE_FILE).is_file():
        request = dataclasses.replace(request, space_file=folder / SPACE_FILE)
    started = time.time()
    print(f"worker {request.study}: starting ({request.trials} trials)", flush=True)
    try:
        space = request.space()
        workload = load_workload(request.spec, device=pick_device(request.device))
        # The job's share of the cores, but no more threads than the CLI would give this model.
        threads = min(request.threads or 1, trial_threads(workload, 1))
        torch.set_num_threads(threads)
        settings = request.settings(request.study_name(workload), space, threads)
        result = run_study(settings, workload, request.target, request.constraint, request.make_backend())
    except KeyboardInterrupt:
        result = None
    except USER_ERRORS as exc:
        write_result(folder, "failed", first_line(exc))
        print(f"worker {request.study}: failed: {first_line(exc)}", flush=True)
        return 1
    except Exception as exc:  # the job fails with its reason; the traceback goes to worker.log
        traceback.print_exc()
        write_result(folder, "failed", first_line(exc, typed=True))
        return 1
    if result is None or result.interrupted:
        if (folder / CANCEL).exists():
            write_result(folder, "cancelled", "cancelled by a client", seconds=time.time() - started)
            print(f"worker {request.study}: cancelled", flush=True)
            return 130
        # Interrupted by someone else (a shutdown): no result, so the next server start resumes it.
        print(f"worker {request.study}: interrupted; the job stays queued", flush=True)
        return 130
    write_result(folder, "done", None, seconds=time.time() - started)
    print(f"worker {request.study}: done in {result.seconds:.1f} s", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m search.service.worker JOB_FOLDER", file=sys.stderr)
        return 2
    folder = Path(args[0])
    # Ctrl-C ends the run cleanly, also when the server was started with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with open(folder / LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until this process ends, however it ends
        if (folder / RESULT).exists():  # another worker finished it meanwhile
            return 0
        return run_job(folder)


if __name__ == "__main__":
    raise SystemExit(main())
