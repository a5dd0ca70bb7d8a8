"""Trials per hour on one machine, on two processes sharing PostgreSQL, and on a Ray cluster:
``python -m search.bench.scaling --trials 12 --postgres URL --ray-address HOST:PORT [workload flags]``.

Each way runs a new study of ``--trials`` trials on the same workload and space, from its own
empty working folder (the workload's teacher cache is copied in, so no way pays for the teacher's
outputs), and is timed from start to the last process's end:

- ``one process``: ``mcaas-search`` with a journal file, all the machine's threads;
- ``two processes, PostgreSQL``: two ``mcaas-search`` processes in separate folders sharing one
  study in the database at ``--postgres`` (each with half the threads);
- ``Ray cluster``: ``mcaas-search --backend ray --address ...`` with ``--cpus-per-trial``.

A way whose option is not given is skipped. The study names carry the time of the run, so a rerun
never resumes an earlier one. Every other flag is passed to ``mcaas-search`` as it is (the
workload: ``--model``, ``--weights``, ``--dataset``, ...; ``--space``; ``--target``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from search import checkout_pythonpath
from search.study.storage import STUDIES_DIR

CACHE = STUDIES_DIR / ".cache"


def _command(study: str, trials: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "search.cli", "--study", study, "--trials", str(trials), "--no-early-stop", *extra]


def _folder(root: Path, name: str) -> Path:
    """An empty working folder holding a copy of this folder's teacher cache."""
    folder = root / name
    folder.mkdir()
    if CACHE.is_dir():
        shutil.copytree(CACHE, folder / CACHE)
    return folder


def _run_all(commands: list[tuple[list[str], Path]]) -> float:
    """Start every command in its folder at once; the seconds until the last one ended."""
    env = dict(os.environ, PYTHONPATH=checkout_pythonpath())
    start = time.perf_counter()
    procs = [
        subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=open(folder / "stderr.txt", "wb"))
        for command, folder in commands
    ]
    codes = [p.wait() for p in procs]
    seconds = time.perf_counter() - start
    for code, (_, folder) in zip(codes, commands):
        if code != 0:
            lines = (folder / "stderr.txt").read_text().strip().splitlines()
            raise SystemExit(f"scaling: a search failed in {folder}: {lines[-1] if lines else code}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.bench.scaling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=12, help="trials per way (default: 12)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads of this machine to use")
    parser.add_argument("--postgres", default=None, help="a PostgreSQL URL the two processes share")
    parser.add_argument("--ray-address", default=None, help="a Ray cluster to run the third way on")
    parser.add_argument("--cpus-per-trial", default="1", help="Ray's CPUs per trial (default: 1)")
    args, extra = parser.parse_known_args(argv)
    # The searches run in other folders: files named relative to this one are passed absolute.
    extra = [str(Path(a).resolve()) if not a.startswith("-") and Path(a).exists() else a for a in extra]
    if args.trials < 1 or args.threads < 1:
        parser.error("--trials and --threads must be >= 1")
    if not CACHE.is_dir():
        print(f"note: no {CACHE} here, so each way computes the teacher's outputs itself; run this where "
              "a search on the same workload has run", file=sys.stderr)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="scaling-") as tmp:
        root = Path(tmp)
        print(f"one process, {args.threads} threads ...", flush=True)
        folder = _folder(root, "one")
        command = _command(f"scaling-one-{stamp}", args.trials, [*extra, "--threads", str(args.threads)])
        results.append(("one process", _run_all([(command, folder)])))
        if args.postgres:
            print("two processes sharing PostgreSQL ...", flush=True)
            half = str(max(1, args.threads // 2))
            study = f"scaling-pg-{stamp}"
            runs = [(_command(study, args.trials, [*extra, "--storage", args.postgres, "--threads", half]),
                     _folder(root, f"pg{i}")) for i in (1, 2)]
            results.append(("two processes, PostgreSQL", _run_all(runs)))
        if args.ray_address:
            print(f"Ray cluster at {args.ray_address} ...", flush=True)
            command = _command(f"scaling-ray-{stamp}", args.trials,
                               [*extra, "--backend", "ray", "--address", args.ray_address,
                                "--cpus-per-trial", args.cpus_per_trial, "--threads", args.cpus_per_trial])
            results.append(("Ray cluster", _run_all([(command, _folder(root, "ray"))])))
    base = results[0][1]
    print(f"\n{'way':<28} {'seconds':>8} {'trials/hour':>12} {'vs one':>7}")
    for name, seconds in results:
        print(f"{name:<28} {seconds:>8.0f} {args.trials * 3600 / seconds:>12.0f} {base / seconds:>6.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
