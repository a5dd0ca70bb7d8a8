"""The real ``mcaas-search serve`` process over HTTP: a demo job end to end (its events, its
front, its verified ONNX file run in ONNX Runtime, the CLI reading what it ran), status requests
answered while a job trains (p50 / p99 printed), cancel, and kill -9 of the server and of the
worker: the job completes with the right trial count, and a queued job starts after the restart."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import httpx
import onnxruntime as ort
import optuna
import pytest

from search.service.jobs import worker_alive
from search.study import counted, open_storage, trial_record
from search.workloads import load_dataset
from tests.search.service.server_process import (
    JOB_LIMIT_S,
    Server,
    events,
    start_server,
    wait_for,
)
from tests.search.study_fixtures import TINY_SPACE
from tests.support import RunCli, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def folder(search_folder: Callable[[str], Path]) -> Iterator[Path]:
    """The working folder (cwd) with the cached demo teacher; worker processes a test leaves
    running are killed at the end."""
    path = search_folder(TINY_SPACE)
    yield path
    for worker in (path / "studies" / "server" / "jobs").glob("*/worker.json"):
        pid = json.loads(worker.read_text())["pid"]
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def server(folder: Path) -> Iterator[Server]:
    started = start_server(folder)
    yield started
    started.stop()


def _job(server: Server, trials: int, **extra: object) -> str:
    with server.client() as client:
        response = client.post(
            "/api/studies", json={"model": "demo", "trials": trials, "max_drop": 5, "space": TINY_SPACE, **extra}
        )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _onnx_accuracy(path: Path) -> float:
    test = load_dataset("digits").test
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    logits = session.run(None, {name: test.x.numpy()})[0]
    return float((np.argmax(logits, axis=1) == test.y.numpy()).mean() * 100)


def test_a_demo_job_end_to_end_over_http(server: Server, folder: Path, run_cli: RunCli) -> None:
    with server.client() as client:
        checkpoint = (folder / "studies" / ".cache" / "demo-digits.pt").read_bytes()
        form = {"model": "demo", "dataset": "digits"}
        upload = client.post("/api/models", files={"file": ("teacher.pt", checkpoint)}, data=form)
        assert upload.status_code == 201, upload.text
        model_id = upload.json()["id"]
        assert upload.json()["inspect"]["state"] == "running"  # in its own process
    name = _job(server, 4)
    with server.client() as client:
        seen = list(events(client, name))
        kinds = [kind for kind, _ in seen]
        assert kinds[-1] == "end" and seen[-1][1] == {"state": "done"}, seen[-3:]
        finished = [data["trials"].get("finished", 0) for kind, data in seen if kind == "status"]
        assert finished == sorted(finished) and finished[-1] == 4 and len(set(finished)) > 1

        status = client.get(f"/api/studies/{name}").json()
        assert status["state"] == "done" and status["job"]["state"] == "done"
        assert status["trials"]["finished"] == 4 and status["analysis"]
        trials = client.get(f"/api/studies/{name}/trials").json()
        assert [t["number"] for t in trials] == [0, 1, 2, 3]
        front = client.get(f"/api/studies/{name}/front").json()
        pick = front["recommended"]
        assert pick is not None and pick in [t["number"] for t in front["front"]]
        numbers = {n for trace in front["figure"]["data"] for n in trace.get("customdata", [])}
        assert pick in numbers

        onnx = client.get(f"/api/studies/{name}/trials/{pick}/model.onnx")
        assert onnx.status_code == 200
        path = folder / "downloaded.onnx"
        path.write_bytes(onnx.content)
        sidecar = client.get(f"/api/studies/{name}/trials/{pick}/sidecar.json").json()
        assert sidecar["trial"] == pick and sidecar["bytes"] == len(onnx.content)
        assert _onnx_accuracy(path) == pytest.approx(sidecar["verification"]["test_acc_measured"], abs=1e-6)
        report = client.get(f"/api/studies/{name}/report")
        assert report.status_code == 200 and "Plotly.newPlot" in report.text

        # What `inspect` says about the upload, from its own process.
        def inspected() -> dict[str, object] | None:
            inspect = client.get(f"/api/models/{model_id}").json()["inspect"]
            return None if inspect["state"] == "running" else inspect

        inspect = wait_until(inspected, 120, "inspect did not finish", interval_s=0.5)
        assert inspect["state"] == "done", inspect
        assert inspect["analysis"]["params"] == 24058 and inspect["teacher"]["val_acc"] > 90
        assert ("parameters / MACs", "24,058 / 615,050") in [tuple(row) for row in inspect["rows"]]

    # The CLI reads what the server ran, from the same storage.
    code, out, err = run_cli(["list"])
    assert code == 0 and name in out, err
    code, out, err = run_cli(["export", "--study", name, "--best", "--out", str(folder / "cli.onnx")])
    assert code == 0, err
    assert (folder / "cli.onnx").read_bytes() == onnx.content


def test_status_is_answered_while_a_job_trains_and_cancel_stops_it(server: Server, folder: Path) -> None:
    name = _job(server, 40)
    with server.client() as client:
        wait_for(client, name, lambda s: s["state"] == "running" and s["trials"].get("running", 0) >= 1)

    def one_client(_: int) -> list[tuple[int, float]]:
        """One client on its own connection, sending 25 status requests one after another."""
        answers = []
        with server.client() as c:
            for _ in range(25):
                start = time.perf_counter()
                code = c.get(f"/api/studies/{name}").status_code
                answers.append((code, time.perf_counter() - start))
        return answers

    def burst() -> list[tuple[int, float]]:
        with concurrent.futures.ThreadPoolExecutor(20) as pool:  # 20 clients at once: 500 requests
            return [a for answers in pool.map(one_client, range(20)) for a in answers]

    with server.client() as client:
        started = time.perf_counter()
        answers = burst()
        seconds = time.perf_counter() - started
        still = client.get(f"/api/studies/{name}").json()
    latencies = sorted(t for _, t in answers)
    p50, p99 = statistics.median(latencies), latencies[int(0.99 * len(latencies)) - 1]
    print(f"\nload: 500 status requests from 20 clients in {seconds:.2f} s while a job trained: "
          f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms")
    assert [code for code, _ in answers] == [200] * 500
    assert still["state"] == "running"  # the requests really overlapped training
    # No request waited for a trial (a demo trial trains for seconds).
    assert p50 < 1.0

    # The cancel lands inside a trial: the worker is held stopped while one is seen running, so
    # that trial cannot end between the look and the Ctrl-C the cancel sends.
    pid = _worker_pid(folder, name)
    with server.client() as client:
        [held] = wait_until(lambda: _stopped_in_a_trial(client, name, pid), JOB_LIMIT_S, "no trial was seen running")
        try:
            response = client.post(f"/api/studies/{name}/cancel")
        finally:
            os.killpg(pid, signal.SIGCONT)
        assert response.status_code == 200
        status = wait_for(client, name, lambda s: s["state"] == "cancelled", limit=90)
        assert status["trials"]["finished"] < 40
        trials = {t["number"]: t for t in client.get(f"/api/studies/{name}/trials").json()}
        # The trial Ctrl-C stopped is recorded as interrupted, as the CLI records it; it has no model.
        assert trials[held]["state"] == "failed" and trials[held]["reason"].startswith("interrupted"), trials[held]
        assert all(t["state"] != "running" for t in trials.values())
        assert client.get(f"/api/studies/{name}/trials/{held}/model.onnx").status_code == 409


def _worker_pid(folder: Path, name: str) -> int:
    """The pid (and process group) of job ``name``'s worker."""
    return int(json.loads((folder / "studies" / "server" / "jobs" / name / "worker.json").read_text())["pid"])


def _stopped_in_a_trial(client: httpx.Client, name: str, pid: int) -> list[int]:
    """Stop the worker's process group; if a trial of ``name`` is running, leave it stopped and
    return that trial's number (one job runs one trial at a time), else let it go on."""
    os.killpg(pid, signal.SIGSTOP)
    running = [t["number"] for t in client.get(f"/api/studies/{name}/trials").json() if t["state"] == "running"]
    if not running:
        os.killpg(pid, signal.SIGCONT)
    return running


def _study(folder: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(str(folder / "studies" / "mcaas.journal"), create=False))


def test_kill_9_of_server_and_worker_then_restart_completes_the_jobs(folder: Path) -> None:
    server = start_server(folder)
    first = _job(server, 5)
    queued = _job(server, 2)
    job_folder = folder / "studies" / "server" / "jobs" / first
    with server.client() as client:
        before = wait_for(client, first, lambda s: s["trials"].get("finished", 0) >= 1 and s["trials"].get("running", 0) >= 1)
        assert client.get(f"/api/studies/{queued}").json()["state"] == "queued"
    server.kill()
    # The worker has its own session: the server's death leaves it running. It is held stopped
    # until the new server has looked, or on a loaded machine it can finish the whole job first.
    pid = json.loads((job_folder / "worker.json").read_text())["pid"]
    os.killpg(pid, signal.SIGSTOP)
    assert worker_alive(job_folder)

    server = start_server(folder, log="serve2")
    try:
        with server.client() as client:
            assert client.get(f"/api/studies/{first}").json()["state"] == "running"  # found again
            os.killpg(pid, signal.SIGCONT)
            wait_for(client, first, lambda s: s["trials"].get("running", 0) >= 1
                     and s["trials"]["finished"] >= before["trials"]["finished"])
            os.killpg(pid, signal.SIGKILL)  # now the worker dies mid-trial too
            done = wait_for(client, first, lambda s: s["state"] == "done")
            assert done["job"]["state"] == "done"
            wait_for(client, queued, lambda s: s["state"] == "done")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGCONT)
        server.stop()
    study = _study(folder, first)
    assert counted(study) == 5
    reasons = [(trial_record(t).reason or "") for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert any(r.startswith("interrupted") for r in reasons), reasons
    assert json.loads((job_folder / "worker.json").read_text())["starts"] == 2
    assert counted(_study(folder, queued)) == 2
