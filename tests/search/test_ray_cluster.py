"""The Ray backend on a real cluster, started the way the README tells a user to: a head node and a
second node, each a separate `ray start --block` process with one CPU, token authentication on
(``RAY_AUTH_MODE=token`` and a token file of this test's own), on this machine.

A four-trial search through the CLI joins it with ``--address`` and the token file Ray reads
(``RAY_AUTH_TOKEN_PATH``), and its trials run on both nodes; a missing or wrong token is a
one-line error with exit code 2. The nodes are stopped by their own processes, never by
`ray stop` (which stops every Ray on the machine), and nothing of theirs may be left.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest

from search.study import open_storage, trial_record
from tests.search.study_fixtures import TINY_SPACE
from tests.support import RunCli, WaitTimeout, wait_until

pytestmark = pytest.mark.slow

RAY = Path(sys.executable).with_name("ray")  # the `ray` command of this environment
START_S = 90  # generous: the machine is shared; a node starts in seconds
STOP_S = 30
KILLED_S = 10  # for processes killed with kill -9 to be gone
READY = "Ray runtime started."  # what `ray start` prints once its node is up

# Prints the ids of the cluster's live nodes once there are N (argv: address, N, timeout).
WAIT_FOR_NODES = """
import json, sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False)
deadline = time.monotonic() + float(sys.argv[3])
while True:
    nodes = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    if len(nodes) >= int(sys.argv[2]) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print(json.dumps(nodes))
"""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The running cluster: its GCS address, its token's file and its nodes' Ray ids."""

    address: str
    token_file: Path
    node_ids: frozenset[str]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _session_pids(session: int) -> list[int]:
    """The live (not zombie) processes of session ``session``: a node's `ray start --block` leads
    a session of its own, and the node's processes (GCS, raylet, agents, workers) stay in it."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses.
            fields = stat.read_text().rpartition(")")[2].split()
            if fields[0] != "Z" and int(fields[3]) == session:
                pids.append(int(stat.parent.name))
    return pids


def _start_node(folder: Path, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """`ray start --block ARGS` with one CPU in a session of its own, its temporary folder and log
    under ``folder``; returns once the node is up."""
    log = folder / f"{name}.log"
    process = subprocess.Popen(
        [str(RAY), "start", "--block", *args, "--num-cpus", "1",
         "--node-ip-address", "127.0.0.1", "--dashboard-agent-listen-port", str(_free_port()),
         "--temp-dir", str(folder / name), "--disable-usage-stats"],
        env=env,
        stdout=open(log, "wb"),  # the child holds it; closed with the process
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def started() -> bool:
        assert process.poll() is None, f"the {name} node exited:\n{log.read_text(errors='replace')[-3000:]}"
        return READY in log.read_text(errors="replace")

    try:
        wait_until(started, START_S, lambda: f"the {name} node did not start:\n{log.read_text(errors='replace')[-3000:]}",
                   interval_s=0.5)
    except AssertionError:
        _stop_node(process)
        raise
    return process


def _stop_node(process: subprocess.Popen[bytes]) -> list[int]:
    """Stop the node ``process`` leads (SIGTERM to `ray start --block` stops its processes; any
    left in its session after STOP_S are killed); returns the pids still alive after that."""
    session = process.pid
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    with contextlib.suppress(WaitTimeout):  # those still there are killed
        wait_until(lambda: process.poll() is not None and not _session_pids(session), STOP_S,
                   "the node did not stop", interval_s=0.2)
    for pid in _session_pids(session):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    with contextlib.suppress(WaitTimeout):  # the caller reports any left
        wait_until(lambda: not _session_pids(session), KILLED_S, "killed node processes are still there")
    return _session_pids(session)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head node and a second node with one CPU each and token authentication on, stopped
    (and checked to be gone) after the module's tests."""
    # Short: Ray's unix socket paths under the temporary folder must stay within 107 characters.
    folder = Path(tempfile.mkdtemp(dir="/tmp", prefix="rc"))
    token_file = folder / "token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    port = _free_port()
    address = f"127.0.0.1:{port}"
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        head = ["--head", "--port", str(port), "--include-dashboard=false"]
        nodes.append(_start_node(folder, "head", head, env))
        nodes.append(_start_node(folder, "node", ["--address", address], env))
        waited = subprocess.run(
            [sys.executable, "-c", WAIT_FOR_NODES, address, "2", str(START_S)],
            env=env, capture_output=True, text=True, timeout=START_S + 60,
        )
        assert waited.returncode == 0, waited.stderr[-3000:]
        node_ids = frozenset(json.loads(waited.stdout.strip().splitlines()[-1]))
        assert len(node_ids) == 2, node_ids
        yield Cluster(address=address, token_file=token_file, node_ids=node_ids)
    finally:
        left = {process.pid: _stop_node(process) for process in reversed(nodes)}
        shutil.rmtree(folder, ignore_errors=True)
        assert not any(left.values()), f"Ray processes left running: {left}"


@pytest.fixture
def ray_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No Ray address or authentication settings from the caller's environment."""
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _argv(cluster: Cluster, trials: int) -> list[str]:
    return ["--backend", "ray", "--address", cluster.address, "--cpus-per-trial", "1", "--jobs", "2",
            "--study", "c", "--space", "tiny.toml", "--device", "cpu", "--trials", str(trials)]


def test_a_search_joins_the_cluster_with_its_token_and_runs_on_both_nodes(
    cluster: Cluster,
    ray_env: pytest.MonkeyPatch,
    search_folder: Callable[[str], Path],
    run_cli: RunCli,
) -> None:
    search_folder(TINY_SPACE)
    # Only the token file, as a user would set it: the run itself turns token mode on.
    ray_env.setenv("RAY_AUTH_TOKEN_PATH", str(cluster.token_file))

    code, out, err = run_cli(_argv(cluster, 4))

    assert code == 0, err
    assert "c: 4 trials" in out
    study = optuna.load_study(study_name="c", storage=open_storage(None, create=False))
    trials = [trial_record(t) for t in study.get_trials()]
    assert len(trials) == 4
    # Two trials at a time and one CPU per node: they ran on both nodes, each in a worker
    # process (host:pid) of the node it names.
    assert {t.ray_node for t in trials} == cluster.node_ids
    workers = {node: {t.worker for t in trials if t.ray_node == node}
               for node in cluster.node_ids}
    first, second = workers.values()
    assert first and second and not first & second, workers


@pytest.mark.parametrize("token", ["missing", "wrong"])
def test_a_missing_or_wrong_token_is_a_one_line_error(
    token: str,
    cluster: Cluster,
    ray_env: pytest.MonkeyPatch,
    search_folder: Callable[[str], Path],
    run_cli: RunCli,
) -> None:
    folder = search_folder(TINY_SPACE)
    if token == "missing":
        ray_env.setenv("HOME", str(folder))  # no ~/.ray/auth_token either
        expected = "it requires its token and none was found; write it"
    else:
        ray_env.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
        expected = "it refused the token in RAY_AUTH_TOKEN; set RAY_AUTH_TOKEN to the cluster's token"

    started = time.monotonic()
    code, _, err = run_cli(_argv(cluster, 1))

    assert code == 2 and "Traceback" not in err
    line = err.splitlines()[-1]
    assert line.startswith(f"mcaas-search: error: cannot join the Ray cluster at '{cluster.address}': ")
    assert expected in line and "ray get-auth-token" in line
    assert time.monotonic() - started < 60  # refused at once, not after Ray's retries
