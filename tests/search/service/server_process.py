"""The real ``mcaas-search serve`` process for the end-to-end tests: started on a free loopback
port (``--port 0``, the port read from what it prints), talked to over HTTP with httpx, in a
folder holding the cached demo teacher, with a space small enough that a demo job takes
seconds."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.support import wait_until

REPO = Path(__file__).resolve().parents[3]
START_LIMIT_S = 60
JOB_LIMIT_S = 240  # generous: the machine is shared; a 4-trial demo job takes about 20 s


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH")) if p)
    return out


@dataclasses.dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    token: str
    folder: Path

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=60)

    def kill(self) -> None:
        """kill -9, as a crash would."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def start_server(folder: Path, *extra: str, log: str = "serve") -> Server:
    """``mcaas-search serve --port 0`` in ``folder``; returns once it answers."""
    out = folder / f"{log}.out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "serve", "--port", "0", *extra],
        cwd=folder,
        env=env(),
        stdout=open(out, "wb"),
        stderr=open(folder / f"{log}.err", "wb"),
    )

    def answering() -> Server | None:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited {proc.returncode}: {(folder / f'{log}.err').read_text()[-2000:]}")
        match = re.search(r"serving on (http://127\.0\.0\.1:\d+)/", out.read_text())
        if not match:
            return None
        token = (folder / "studies" / "server" / "token").read_text().strip()
        server = Server(proc, match.group(1), token, folder)
        with server.client() as client:
            return server if client.get("/api/health").status_code == 200 else None

    try:
        return wait_until(answering, START_LIMIT_S, "serve did not start in time", interval_s=0.2)
    except AssertionError:
        proc.kill()
        raise


def wait_for(client: httpx.Client, study: str, ready: Any, limit: float = JOB_LIMIT_S) -> dict[str, Any]:
    """Poll ``GET /api/studies/{study}`` until ``ready(status)``; fail at once if the job fails or
    is cancelled unless that is what ``ready`` waits for."""
    last: dict[str, Any] = {}

    def reached() -> dict[str, Any] | None:
        response = client.get(f"/api/studies/{study}")
        assert response.status_code == 200, response.text
        status = response.json()
        last.update(status)
        if ready(status):
            return status
        assert status["state"] not in ("failed", "cancelled"), status
        return None

    return wait_until(
        reached, limit, lambda: f"study {study} did not get there: {json.dumps(last)[:2000]}", interval_s=0.3
    )


def events(client: httpx.Client, study: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """The Server-Sent Events of a study, parsed, until the stream ends."""
    with client.stream("GET", f"/api/studies/{study}/events", timeout=JOB_LIMIT_S) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: ") and event:
                yield event, json.loads(line[len("data: "):])
                event = None
