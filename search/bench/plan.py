"""``mcaas-search bench``: the default search against the three MCaaS fixed profiles and random
search on one workload, with one trial budget, for one or more targets.

The studies are ordinary studies in the storage (``report``, ``show`` and ``export`` work on them):

- ``NAME-TARGET-search`` per target: the default search (TPE, the three profiles queued first).
  The profiles row of the benchmark is those three trials.
- ``NAME-peers``: the peer methods (``search.bench.peers``), one trial each, run once before the
  rounds; it serves every target.
- ``NAME-TARGET-random`` per target: random search over the same space as that target's search
  (a space is fitted to its target: a latency study leaves out number formats slower than fp32
  here and weight clustering), no profiles; it skips no config as dominated but stops
  distillation that cannot reach the accuracy bound, as the search does.

They run in rounds (every study to ``round_size`` trials, then every study to twice that, ...),
so an interrupted or time-limited benchmark leaves every method with about the same number of
trials, and the summary compares them at the count all of them reached. A rerun resumes.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from rich.console import Console

from objectives import Constraint
from search.backends import SearchSettings, run_study
from search.backends.local import OptunaBackend
from search.backends.running import resumed_space
from search.bench.peers import PEERS, PEERS_STUDY_TARGET, run_peers
from search.errors import UserError
from search.reporting.progress import LiveProgress
from search.request import SearchRequest
from search.study import STUDIES_DIR, StudyInfo, load_study, open_storage
from search.trials.context import make_context, measure_baseline_into
from search.workloads import Workload
from spaces import SearchSpace
from stages.files import write_atomic

METHODS = ("profiles", "random", "search", *PEERS)
# Method -> what the benchmark calls it.
METHOD_LABELS = {
    "profiles": "MCaaS fixed profiles",
    "random": "random search",
    "search": "default search (TPE)",
    **{name: peer.label for name, peer in PEERS.items()},
}
BASELINE_FILE = "baseline.json"


@dataclasses.dataclass(frozen=True)
class BenchStudy:
    """One study of the benchmark: ``method`` is "search" or "random"; ``target`` is the
    study's own target (random search is scored on every target)."""

    name: str
    method: str
    target: str

    @property
    def sampler(self) -> str:
        return "tpe" if self.method == "search" else "random"


@dataclasses.dataclass(frozen=True)
class BenchPlan:
    """What one benchmark runs: its name, targets, methods and rounds; ``request`` is the search
    every study of it runs (workload, bound, trial budget, storage), each study with its own
    sampler and early stops (``settings``)."""

    name: str
    targets: tuple[str, ...]
    methods: tuple[str, ...]
    round_size: int
    request: SearchRequest
    space: SearchSpace
    threads: int = 1
    # target -> the ratio at the bound the default search should reach (``WORKLOAD_GOALS``)
    goals: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @property
    def trials(self) -> int:
        return self.request.trials

    @property
    def constraint(self) -> Constraint:
        return self.request.constraint

    @property
    def seed(self) -> int:
        return self.request.spec.seed

    @property
    def storage(self) -> str | None:
        return self.request.storage

    def __post_init__(self) -> None:
        if not self.targets:
            raise UserError("bench needs at least one target")
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown or not self.methods:
            raise UserError(f"unknown bench methods {unknown}; choose from {', '.join(METHODS)}")

    @property
    def folder(self) -> Path:
        """Where the benchmark keeps its shared baseline (the studies keep their own folders)."""
        return STUDIES_DIR / self.name

    @property
    def peers(self) -> tuple[str, ...]:
        """The chosen peer methods, in the order of ``PEERS``."""
        return tuple(name for name in PEERS if name in self.methods)

    def peer_study(self) -> BenchStudy:
        """The study holding the peers' trials (one per peer; it serves every target)."""
        return BenchStudy(f"{self.name}-peers", "peers", PEERS_STUDY_TARGET)

    def studies(self) -> list[BenchStudy]:
        """The studies the chosen methods need (the profiles live in the search studies); the
        peers' study, run once and not in rounds, is ``peer_study``."""
        out = []
        if "search" in self.methods or "profiles" in self.methods:
            out += [BenchStudy(self.study_name(t, "search"), "search", t) for t in self.targets]
        if "random" in self.methods:
            out += [BenchStudy(self.study_name(t, "random"), "random", t) for t in self.targets]
        return out

    def study_name(self, target: str, method: str) -> str:
        """The study of ``method`` ("search" or "random") for ``target``."""
        return f"{self.name}-{target}-{method}"

    def rounds(self) -> list[int]:
        """The trial count each study is brought to, round after round."""
        return [*range(self.round_size, self.trials, self.round_size), self.trials]

    def settings(self, study: BenchStudy, upto: int) -> SearchSettings:
        """How ``study`` runs up to ``upto`` trials: the request's search, with the study's
        sampler; only the default search runs the profiles first and skips dominated configs."""
        request = dataclasses.replace(
            self.request,
            trials=upto,
            sampler=study.sampler,
            profiles=study.method == "search",
            early_stop=study.method != "peers",
            skip_dominated=study.method == "search",
        )
        return request.settings(study.name, self.space, self.threads)


def shared_baseline(plan: BenchPlan, workload: Workload, console: Console) -> tuple[Path, dict[str, float]]:
    """The teacher's fp32 export and metrics, measured once for every study of the benchmark
    (so all ratios share one reference). A rerun reads them back: the metrics from the
    benchmark's studies (a journal is all a fresh clone has), else from the record beside the
    first measurement; the file from either, exported again where neither has it."""
    infos = [info for _, info in stored_infos(plan)]
    record = plan.folder / BASELINE_FILE
    saved = json.loads(record.read_text()) if record.is_file() else None
    if saved is not None and saved.get("workload") != workload.fingerprint:
        saved = None
    metrics = infos[0].baseline if infos else saved["metrics"] if saved is not None else None
    files = [Path(info.baseline_onnx) for info in infos] + ([Path(saved["onnx"])] if saved is not None else [])
    path = next((p for p in files if p.is_file()), None)
    if metrics is None or path is None:
        ctx = make_context(workload, plan.folder / "trials", threads=plan.threads, seed=plan.seed)
        with console.status("measuring the teacher's exported fp32 artifact (the baseline)"):
            ctx, measured = measure_baseline_into(ctx, plan.folder / "baseline")
        assert ctx.baseline_onnx is not None
        # The studies' reference stays the one their ratios were scored against.
        path, metrics = ctx.baseline_onnx.resolve(), metrics or measured
        payload = {"workload": workload.fingerprint, "onnx": str(path), "metrics": metrics}
        write_atomic(record, json.dumps(payload, indent=2, sort_keys=True, default=str))
    return path, {k: float(v) for k, v in metrics.items()}


def has_run(plan: BenchPlan) -> bool:
    """Whether the benchmark has begun: its measured baseline, or a study in its storage (a
    journal that does not exist is not created)."""
    if (plan.folder / BASELINE_FILE).is_file():
        return True
    try:
        return bool(stored_infos(plan, create=False))
    except UserError:  # no journal yet
        return False


def stored_infos(plan: BenchPlan, *, create: bool = True) -> list[tuple[BenchStudy, StudyInfo]]:
    """The benchmark's studies that exist in its storage, with their stored records."""
    storage = open_storage(plan.storage, create=create)
    found = []
    for study in [*plan.studies(), *([plan.peer_study()] if plan.peers else [])]:
        try:
            found.append((study, StudyInfo.load(load_study(study.name, storage))))
        except UserError:
            continue
    return found


def check_existing(plan: BenchPlan, workload: Workload) -> None:
    """Refuse, before any work, to continue a benchmark's studies under other settings or over
    another space (a space file edited since)."""
    for study, stored in stored_infos(plan):
        why = stored.mismatch(workload.fingerprint, study.target, plan.constraint)
        if why:
            raise UserError(
                f"bench study {study.name!r} was run for other settings ({why}); "
                "use another --name, or the same settings to resume it"
            )
        if study.method != "peers":
            resumed_space(study.name, plan.space, stored, option="--name")


def run_bench(
    plan: BenchPlan,
    workload: Workload,
    console: Console,
    *,
    deadline: float | None = None,
    after_round: Callable[[int], None] | None = None,
) -> bool:
    """Run every study round by round up to ``plan.trials``; True when all reached it.

    ``after_round(upto)`` is called after each round (the summary is rewritten there). Stops
    starting rounds at ``deadline``. Ctrl-C propagates after the running trial is recorded as
    interrupted (a rerun replaces it).
    """
    check_existing(plan, workload)
    base = shared_baseline(plan, workload, console)
    if plan.peers:
        peers = plan.peer_study()
        run_peers(plan.peers, plan.settings(peers, len(PEERS)), workload, plan.constraint, baseline=base,
                  say=lambda line: console.print(line, markup=False, highlight=False))
    studies = plan.studies()
    rounds = plan.rounds()
    for index, upto in enumerate(rounds, 1):
        for bench_study in studies:
            if deadline is not None and time.time() >= deadline:
                console.print("bench: --timeout reached; rerun the same command to go on")
                return False

            def watch(study: object, info: StudyInfo, *, upto: int = upto, s: BenchStudy = bench_study) -> LiveProgress:
                console.print(
                    f"round {index}/{len(rounds)}: [bold]{s.name}[/] "
                    f"({METHOD_LABELS[s.method]}) to {upto} trials"
                )
                return LiveProgress(study, info, total=upto, jobs=1, console=console)  # type: ignore[arg-type]

            result = run_study(
                plan.settings(bench_study, upto),
                workload,
                bench_study.target,
                plan.constraint,
                OptunaBackend(),
                baseline=base,
                deadline=deadline,
                watch=watch,
            )
            if result.interrupted:
                raise KeyboardInterrupt
        if after_round is not None:
            after_round(upto)
    return True


def bench_command(argv: Sequence[str]) -> str:
    """The command line that reproduces a benchmark (``argv`` as given after the program)."""
    return "mcaas-search " + shlex.join(argv)
