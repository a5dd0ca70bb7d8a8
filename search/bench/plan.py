"""``mcaas-search bench``: the default search against the three MCaaS fixed profiles, random
search, the multi-fidelity search and peers on one workload, with one trial budget, for one or
more targets.

The studies are ordinary studies in the storage (``report``, ``show`` and ``export`` work on them):

- ``NAME-TARGET-search`` per target: the default search (TPE, the three profiles queued first).
  The profiles row of the benchmark is those three trials.
- ``NAME-peers``: the peer methods (``search.bench.peers``), one trial each, run once before the
  rounds; it serves every target.
- ``NAME-TARGET-random`` per target: random search over the same space as that target's search
  (a space is fitted to its target: a latency study leaves out number formats slower than fp32
  here and weight clustering), no profiles; it skips no config as dominated but stops
  distillation that cannot reach the accuracy bound, as the search does.
- ``NAME-TARGET-asha`` per target: the multi-fidelity search (``--strategy asha``) over the same
  fitted space with the same sampler as that target's search, no profiles. Its budget is compute,
  not trials: in each round it runs until its trials have seen as many training samples as the
  search's trials of that round (``search_compute``), checked between trials, so it stops at the
  first trial that brings it there; at most ``ASHA_TRIAL_FACTOR`` times the round's trial count
  (``BenchPlan.asha_trial_factor``).

They run in rounds (every study to ``round_size`` trials, then every study to twice that, ...;
in each round the search before the multi-fidelity search, whose budget it sets), so an
interrupted or time-limited benchmark leaves every method with about the same number of trials,
or compute, and the summary compares them at the count all of them reached. A rerun resumes.
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
from search.request import MAX_TRIALS, SearchRequest
from search.study import STUDIES_DIR, StudyInfo, TrialRecord, load_study, open_storage, trial_records
from search.trials.context import make_context, measure_baseline_into
from search.workloads import Workload
from spaces import SearchSpace
from stages.files import write_atomic

METHODS = ("profiles", "random", "search", "asha", *PEERS)
# Method -> what the benchmark calls it.
METHOD_LABELS = {
    "profiles": "MCaaS fixed profiles",
    "random": "random search",
    "search": "default search (TPE)",
    "asha": "multi-fidelity search (ASHA)",
    **{name: peer.label for name, peer in PEERS.items()},
}
BASELINE_FILE = "baseline.json"
# The multi-fidelity study's trial cap in a round: this many times the round's trial count. Its
# trials cost less than the search's (most stop at a rung; a config skipped before training costs
# no compute at all), so its compute budget ends it first; the cap ends a study whose trials cost
# nearly nothing, which would otherwise start trials for ever.
ASHA_TRIAL_FACTOR = 5


@dataclasses.dataclass(frozen=True)
class BenchStudy:
    """One study of the benchmark: ``method`` is "search", "random", "asha" or "peers";
    ``target`` is the study's own target."""

    name: str
    method: str
    target: str

    @property
    def sampler(self) -> str:
        return "tpe" if self.method in ("search", "asha") else "random"

    @property
    def strategy(self) -> str:
        """Named, not left to the default, so the search row stays the full-budget search."""
        return "asha" if self.method == "asha" else "full"


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
    # The multi-fidelity study's trial cap in a round: this many times the round's trial count.
    asha_trial_factor: int = ASHA_TRIAL_FACTOR

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
        # The multi-fidelity search's budget is the search's compute: it needs the search.
        if {"search", "profiles", "asha"} & set(self.methods):
            out += [BenchStudy(self.study_name(t, "search"), "search", t) for t in self.targets]
        for method in ("random", "asha"):
            if method in self.methods:
                out += [BenchStudy(self.study_name(t, method), method, t) for t in self.targets]
        return out

    def study_name(self, target: str, method: str) -> str:
        """The study of ``method`` ("search", "random" or "asha") for ``target``."""
        return f"{self.name}-{target}-{method}"

    def rounds(self) -> list[int]:
        """The trial count each study is brought to, round after round."""
        return [*range(self.round_size, self.trials, self.round_size), self.trials]

    def settings(self, study: BenchStudy, upto: int, *, compute: int | None = None) -> SearchSettings:
        """How ``study`` runs in the round of ``upto`` trials: the request's search, with the
        study's sampler and strategy; only the default search runs the profiles first; the
        searches skip dominated configs. The multi-fidelity study runs until its trials have seen
        ``compute`` training samples, at most ``asha_trial_factor * upto`` trials."""
        asha = study.method == "asha"
        request = dataclasses.replace(
            self.request,
            trials=min(self.asha_trial_factor * upto, MAX_TRIALS) if asha else upto,
            sampler=study.sampler,
            strategy=study.strategy,
            profiles=study.method == "search",
            early_stop=study.method != "peers",
            skip_dominated=study.method in ("search", "asha"),
        )
        settings = request.settings(study.name, self.space, self.threads)
        return dataclasses.replace(settings, max_samples=compute) if asha else settings


def counted_records(records: Sequence[TrialRecord]) -> list[TrialRecord]:
    """Trials that count towards a budget, in order: finished, and not interrupted."""
    done = [
        r
        for r in records
        if r.state in ("complete", "pruned")
        or (r.state == "failed" and not r.interrupted)
    ]
    return sorted(done, key=lambda r: r.number)


def search_compute(plan: BenchPlan, target: str, upto: int) -> int | None:
    """The training samples the default search's first ``upto`` trials on ``target`` saw: the
    multi-fidelity study's budget in the round of ``upto`` trials. None while the search has
    not finished that many (the multi-fidelity study waits for it)."""
    try:
        study = load_study(plan.study_name(target, "search"), open_storage(plan.storage, create=False))
    except UserError:  # no journal or no search study yet
        return None
    done = counted_records(trial_records(study))
    if len(done) < upto:
        return None
    return sum(r.samples_seen for r in done[:upto])


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
    starting trials (and rounds) at ``deadline``. Ctrl-C propagates after the running trial is recorded as
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
            compute = None
            goal = f"to {upto} trials"
            if bench_study.method == "asha":
                compute = search_compute(plan, bench_study.target, upto)
                if compute is None:
                    console.print(f"round {index}/{len(rounds)}: {bench_study.name} waits for the default search to finish {upto} trials")
                    continue
                goal = f"to {compute:,} training samples, the default search's {upto} trials'"
            settings = plan.settings(bench_study, upto, compute=compute)

            def watch(study: object, info: StudyInfo, *, goal: str = goal, total: int = settings.trials, s: BenchStudy = bench_study) -> LiveProgress:
                console.print(f"round {index}/{len(rounds)}: [bold]{s.name}[/] ({METHOD_LABELS[s.method]}) {goal}", soft_wrap=True)
                return LiveProgress(study, info, total=total, jobs=1, console=console)  # type: ignore[arg-type]

            result = run_study(
                settings,
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
