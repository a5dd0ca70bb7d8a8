"""The benchmark's summary: per target and method, the trial the method would recommend with
its test drop and a 95 % confidence interval, hypervolume, wall time and trials per hour; the cost
of a trial. Pure numbers from trial records: ``summary`` and its modules write them out.

Every method is compared at the same number of trials: the count all of its studies reached.
The headline (``MethodResult.best``) is chosen on validation alone, by the default selection rule
(``objectives.DEFAULT_SELECTION``), as the search recommends a trial to its user: its test drop is
what a user of the method gets. Beside it, ``best_on_both`` is the largest ratio of a trial within
the bound on validation and on test: chosen with the test split, the best case, not a result.
Every method is also compared at the same compute: the training samples the default search's
trials saw (on the full trial budget, or what it has done), since trials do not all cost the same.
The multi-fidelity search, whose budget is that compute, is shown at equal trials on its first
trials (as many as the others have, or all it has) and at equal compute on its trials within it.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Iterable, Mapping, Sequence

from objectives import DEFAULT_SELECTION, PairedDrop, hypervolume, metrics, selection
from search.bench.plan import BenchPlan, counted_records
from search.study import TrialRecord
from search.study.scoring import drop_upper_bounds, scored_points, scored_records
from spaces import is_mcaas_profile

# A pause this long between the benchmark's trials separates two runs of it: a benchmark longer
# than a sitting runs in chunks (``--timeout``), each resumed from the journal, maybe elsewhere.
CHUNK_GAP = datetime.timedelta(minutes=20)

# The one unnamed pair of markers that files written by older versions hold (``splice`` replaces
# it when it holds the benchmark being written); ``markers`` gives each benchmark its own pair.
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def markers(name: str) -> tuple[str, str]:
    """The comments around benchmark ``name``'s generated section (one pair per benchmark, so a
    file holds a section for each workload and a rerun rewrites only its own)."""
    return f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"


# Published results of the seed systems (other models, other data): shown for scale only.
PUBLISHED = (
    ("MCaaS thesis", "ResNet-18 / CIFAR-10", 2.7, 2.4, 3.0),
    ("EasyCompress", "ResNet-50 / CIFAR-10", 5.0, 1.9, 1.0),
)


@dataclasses.dataclass(frozen=True)
class MethodResult:
    """One method's result on one target, over its first ``trials`` trials."""

    method: str
    target: str
    study: str
    trials: int
    wall_s: float
    best: TrialRecord | None  # the trial the method recommends, chosen on validation alone
    hypervolume: float
    largest: TrialRecord | None  # the most compressed complete trial, at any accuracy
    paired: PairedDrop | None = None  # ``best``'s test drop, paired against the teacher
    # The largest ratio within the bound on validation and on test (chosen with the test split).
    best_on_both: TrialRecord | None = None
    samples_seen: int = 0  # training samples its trials saw: its compute
    alone: tuple[float, int] | None = None  # ``best``'s (ms, threads) timed alone (``alone``)

    @property
    def ratio(self) -> float | None:
        return None if self.best is None else self.best.ratio(self.target)

    @property
    def ratio_on_both(self) -> float | None:
        return None if self.best_on_both is None else self.best_on_both.ratio(self.target)

    @property
    def trials_per_hour(self) -> float:
        return self.trials / self.wall_s * 3600 if self.wall_s > 0 else math.nan


def test_drop(baseline: Mapping[str, float], record: TrialRecord) -> float:
    """Test accuracy ``record`` lost against the teacher, in points (NaN when not measured)."""
    return float(baseline[metrics.TEST_ACC]) - float(record.metrics.get(metrics.TEST_ACC, math.nan))


def val_drop(baseline: Mapping[str, float], record: TrialRecord | None) -> float | None:
    """Validation accuracy ``record`` lost against the teacher, in points (None without a trial)."""
    if record is None:
        return None
    return float(baseline[metrics.VAL_ACC]) - float(record.metrics[metrics.VAL_ACC])


def feasible_at_bound(record: TrialRecord, baseline: Mapping[str, float], max_drop: float) -> bool:
    """Feasible on validation (the study's constraint) and within ``max_drop`` on test."""
    return record.feasible and test_drop(baseline, record) <= max_drop + 1e-9


def summarise(
    method: str,
    target: str,
    study: str,
    records: Sequence[TrialRecord],
    baseline: Mapping[str, float],
    required_accuracy: float,
    max_drop: float,
) -> MethodResult:
    """``method``'s result on ``target`` from ``records`` (already cut to the compared trials)."""
    complete = scored_records(target, records)
    at_bound = [r for r in complete if feasible_at_bound(r, baseline, max_drop)]
    on_both = max(at_bound, key=lambda r: (r.ratio(target), -r.number), default=None)
    largest = max(complete, key=lambda r: (r.ratio(target), -r.number), default=None)
    points = scored_points(target, complete)
    pick = selection(DEFAULT_SELECTION).pick(points, drop_upper_bounds(complete), max_drop)
    return MethodResult(
        method=method,
        target=target,
        study=study,
        trials=len(records),
        wall_s=sum(r.seconds or 0.0 for r in records),
        samples_seen=sum(r.samples_seen for r in records),
        best=None if pick is None else next(r for r in complete if r.number == pick.id),
        hypervolume=hypervolume(points, ref_accuracy=required_accuracy),
        largest=largest,
        best_on_both=on_both,
    )


def history(
    target: str, records: Sequence[TrialRecord], required_accuracy: float
) -> list[float]:
    """Hypervolume after each of ``records`` (in order)."""
    return [
        hypervolume(scored_points(target, records[: i + 1]), ref_accuracy=required_accuracy)
        for i in range(len(records))
    ]


def within_compute(records: Sequence[TrialRecord], budget: int) -> list[TrialRecord]:
    """The first of ``records`` (in order) whose training samples add up to at most ``budget``."""
    out, spent = [], 0
    for r in records:
        spent += r.samples_seen
        if spent > budget:
            break
        out.append(r)
    return out


def compute_history(
    target: str, records: Sequence[TrialRecord], required_accuracy: float
) -> list[tuple[int, float]]:
    """(training samples seen so far, hypervolume) after each of ``records`` (in order)."""
    spent = [sum(r.samples_seen for r in records[: i + 1]) for i in range(len(records))]
    return list(zip(spent, history(target, records, required_accuracy), strict=True))


def without_compute(records: Sequence[TrialRecord]) -> int:
    """How many of ``records`` trained without recording the samples they saw (a journal written
    before the figure existed): their compute counts as 0."""
    return sum(
        1
        for r in records
        for s in r.stages
        if s.get("stage") == "distill" and metrics.SAMPLES_SEEN not in (s.get("metrics") or {})
    )


def passes_at(volumes: Sequence[float], reference: float) -> int | None:
    """The 1-based trial count at which ``volumes`` (hypervolume after each trial) first reaches
    ``reference``; None when it never does."""
    return next((i for i, v in enumerate(volumes, 1) if v >= reference - 1e-12), None)


# ---------------------------------------------------------------------------------------------
# Cost of a trial


@dataclasses.dataclass(frozen=True)
class TrialCost:
    """Where the time of the benchmark's trials went. Shares are over the completed trials
    (a stopped trial records no stages: it is counted, with the time its stop saved, apart)."""

    complete: int
    wall_s: float  # wall time of the completed trials, summed
    stage_s: dict[str, float]  # seconds per pipeline stage over the completed trials
    stopped: int
    stopped_wall_s: float
    saved_s: float  # training the early stops and skips saved (their own estimates)
    logits_s: float | None  # one pass of the teacher over the training split
    logits_saved_s: float | None  # teacher passes the cache saved: one per distillation epoch

    @property
    def training_s(self) -> float:
        """The distillation stage (QAT included): where the model trains."""
        return self.stage_s.get("distill", 0.0)

    @property
    def other_s(self) -> float:
        """Trial time outside every stage: accuracy passes between stages, bookkeeping."""
        return max(self.wall_s - sum(self.stage_s.values()), 0.0)

    @property
    def outside_share(self) -> float:
        return 1.0 - self.training_s / self.wall_s if self.wall_s > 0 else math.nan


def trial_cost(records: Sequence[TrialRecord], logits_s: float | None) -> TrialCost:
    """Cost over ``records`` (the compared trials of every study); ``logits_s`` is the time of
    one teacher pass over the training split."""
    complete = [r for r in records if r.state == "complete" and r.stages]
    stage_s: dict[str, float] = {}
    epochs = 0.0
    for r in complete:
        for stage in r.stages:
            name = str(stage.get("stage"))
            stage_s[name] = stage_s.get(name, 0.0) + float(stage.get("seconds") or 0.0)
        if float(r.config.get("distill.alpha", 0.0)) > 0:
            epochs += float(r.config.get("distill.epochs", 0.0))
    stopped = [r for r in records if r.state == "pruned"]
    return TrialCost(
        complete=len(complete),
        wall_s=sum(r.seconds or 0.0 for r in complete),
        stage_s=stage_s,
        stopped=len(stopped),
        stopped_wall_s=sum(r.seconds or 0.0 for r in stopped),
        saved_s=sum(r.saved_s for r in stopped),
        logits_s=logits_s,
        logits_saved_s=None if logits_s is None else logits_s * epochs,
    )


# ---------------------------------------------------------------------------------------------
# Gather from the studies, then write Markdown, CSV and plots

# What the project's issues ask of the search on its benchmark workloads (workload name -> target
# -> ratio recommended at the bound; the benchmarks issue, round three); bench says met or missed
# for these, and for no other workload.
WORKLOAD_GOALS: dict[str, dict[str, float]] = {
    "resnet18-fashion-mnist": {"size": 300.0, "latency": 15.0},
    "mobilenet_v2-fashion-mnist": {"size": 20.0, "latency": 3.0},
    "vit_tiny-fashion-mnist": {"size": 18.0, "latency": 4.0},
}
PROFILE_FACTOR = 3.0  # the default search should beat the best feasible profile by this much
# The multi-fidelity search should reach the default search's hypervolume within this share of
# the default search's compute (the multi-fidelity search issue's "at most a third").
ASHA_SHARE = 1 / 3


@dataclasses.dataclass(frozen=True)
class TargetResults:
    target: str
    compared: int  # trials every method is compared at (profiles: their three)
    methods: list[MethodResult]
    histories: dict[str, list[float]]  # method -> hypervolume after each compared trial
    points: dict[str, list[TrialRecord]]  # method -> compared complete trials
    # The compute every method is also compared at: the training samples the default search's
    # trials saw (``budget_trials`` of them); 0 when it did not run or recorded none.
    budget: int = 0
    budget_trials: int = 0
    at_compute: list[MethodResult] = dataclasses.field(default_factory=list)
    # method -> what all of its trials had spent, to say which stopped short of ``budget``
    spent: dict[str, int] = dataclasses.field(default_factory=dict)
    # method -> (samples seen so far, hypervolume) after each of its trials
    compute_histories: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)

    def short_share(self, method: str) -> float | None:
        """The share of ``budget`` that all of ``method``'s trials saw, when that is less (None:
        it reached the budget, or there is none)."""
        spent = self.spent.get(method, 0)
        return spent / self.budget if self.budget and spent < self.budget else None

    @property
    def asha_reaches_search(self) -> int | None:
        """The training samples after which the multi-fidelity search's hypervolume first reaches
        the default search's at its budget (None: it never does, or one of them did not run)."""
        asha, reference = self.compute_histories.get("asha"), self.search_volume
        if not asha or reference is None:
            return None
        return next((seen for seen, volume in asha if volume >= reference - 1e-12), None)

    @property
    def search_volume(self) -> float | None:
        """The default search's hypervolume at its compute: what the multi-fidelity search is to
        reach (None: the search did not run, or found no feasible front, nothing to reach)."""
        search = next((m for m in self.at_compute if m.method == "search"), None)
        return search.hypervolume if search is not None and search.hypervolume > 0 else None

    @property
    def search_passes_random(self) -> int | None:
        """The trial count at which the search's hypervolume first reaches random search's final
        one (None: it never does, or one of them did not run); see ``passes_at``."""
        search, random = self.histories.get("search"), self.histories.get("random")
        if not search or not random:
            return None
        return passes_at(search, random[-1])


def passes_text(block: TargetResults) -> str:
    """When the search reached random search's final hypervolume: a trial count, or "never"."""
    at = block.search_passes_random
    return "never" if at is None else str(at)


def reaches_share(block: TargetResults) -> float | None:
    """``asha_reaches_search`` as a share of the default search's compute (None: never, or
    nothing to reach)."""
    at = block.asha_reaches_search
    return None if at is None or not block.budget else at / block.budget


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One run of a benchmark, from its first trial's start to its last trial's end (Optuna's
    times: the clock of the machine that ran it)."""

    start: datetime.datetime
    end: datetime.datetime
    trials: int

    def describe(self) -> str:
        end = f"{self.end:%H:%M}" if self.end.date() == self.start.date() else f"{self.end:%Y-%m-%d %H:%M}"
        minutes = (self.end - self.start).total_seconds() / 60
        trials = f"{self.trials} trial" + ("s" if self.trials != 1 else "")
        return f"{self.start:%Y-%m-%d %H:%M}-{end} ({trials}, {minutes:.0f} min)"


def find_chunks(
    spans: Iterable[tuple[datetime.datetime, datetime.datetime | None]], gap: datetime.timedelta = CHUNK_GAP
) -> list[Chunk]:
    """The runs the benchmark's trials were made in, from each trial's (start, end) (end None:
    the trial never ended, its start counts): in start order, a trial that starts more than
    ``gap`` after every earlier trial ended begins a new run."""
    out: list[Chunk] = []
    for start, end in sorted(spans, key=lambda span: span[0]):
        end = max(start, end or start)
        if out and start <= out[-1].end + gap:
            last = out[-1]
            out[-1] = Chunk(last.start, max(last.end, end), last.trials + 1)
        else:
            out.append(Chunk(start, end, 1))
    return out


@dataclasses.dataclass(frozen=True)
class BenchSummary:
    plan: BenchPlan
    baseline: dict[str, float]
    targets: list[TargetResults]
    cost: TrialCost
    studies: dict[str, int]  # study -> trials done (all, not only the compared ones)
    notes: list[str]
    teacher_alone: tuple[float, int] | None = None  # the teacher's (ms, threads) timed alone
    chunks: list[Chunk] = dataclasses.field(default_factory=list)  # the runs the trials were made in


def gather(plan: BenchPlan, baseline: Mapping[str, float], records: Mapping[str, list[TrialRecord]], logits_s: float | None) -> BenchSummary:
    """The summary from each bench study's trial records (keyed by study name)."""
    required = float(baseline[metrics.VAL_ACC]) - plan.constraint.max_drop
    done = {name: counted_records(rs) for name, rs in records.items()}
    compared_all: dict[str, list[TrialRecord]] = {}
    targets = []
    for target in plan.targets:
        search_name, random_name = plan.study_name(target, "search"), plan.study_name(target, "random")
        runs = {m: done[s] for m, s in (("search", search_name), ("random", random_name)) if s in done and m in plan.methods}
        n = min((len(v) for v in runs.values()), default=0)
        results, histories, points = [], {}, {}
        ran: dict[str, tuple[str, list[TrialRecord]]] = {}  # method -> its study and all its trials
        if search_name in done and "profiles" in plan.methods:
            profiles = [r for r in done[search_name] if is_mcaas_profile(r.profile)]
            results.append(summarise("profiles", target, search_name, profiles, baseline, required, plan.constraint.max_drop))
            points["profiles"] = [r for r in profiles if r.state == "complete"]
            ran["profiles"] = (search_name, profiles)
        for method, study in (("random", random_name), ("search", search_name)):
            if method not in runs:
                continue
            cut = runs[method][:n]
            compared_all[study] = cut
            results.append(summarise(method, target, study, cut, baseline, required, plan.constraint.max_drop))
            histories[method] = history(target, cut, required)
            points[method] = [r for r in cut if r.state == "complete"]
            ran[method] = (study, runs[method][: plan.trials])
        asha_name = plan.study_name(target, "asha")
        if "asha" in plan.methods and done.get(asha_name):
            # Its budget is compute, not trials: it does not set the count the others are cut to.
            cut = done[asha_name][:n]
            compared_all[asha_name] = cut
            results.append(summarise("asha", target, asha_name, cut, baseline, required, plan.constraint.max_drop))
            histories["asha"] = history(target, cut, required)
            ran["asha"] = (asha_name, done[asha_name])
        peers_name = plan.peer_study().name
        for peer in plan.peers:
            trials = [r for r in done.get(peers_name, []) if r.profile == peer]
            if trials:  # a peer that could not run here (a missing extra) has no row
                results.append(summarise(peer, target, peers_name, trials, baseline, required, plan.constraint.max_drop))
                points[peer] = [r for r in trials if r.state == "complete"]
                ran[peer] = (peers_name, trials)
        budget_trials = ran["search"][1] if "search" in ran else []
        budget = sum(r.samples_seen for r in budget_trials)
        at_compute = [
            summarise(method, target, study, within_compute(trials, budget), baseline, required, plan.constraint.max_drop)
            for method, (study, trials) in ran.items()
        ] if budget else []
        if "asha" in ran:  # its trials in the plots and trials.csv: those it is compared on
            asha = within_compute(ran["asha"][1], budget) if budget else compared_all[asha_name]
            points["asha"] = [r for r in asha if r.state == "complete"]
        targets.append(TargetResults(
            target, n, results, histories, points,
            budget=budget,
            budget_trials=len(budget_trials),
            at_compute=at_compute,
            spent={method: sum(r.samples_seen for r in trials) for method, (_, trials) in ran.items()},
            compute_histories={method: compute_history(target, trials, required) for method, (_, trials) in ran.items()},
        ))
    cost = trial_cost([r for rs in compared_all.values() for r in rs], logits_s)
    notes = []
    unrecorded = without_compute([r for rs in done.values() for r in rs])
    if unrecorded:
        notes.append(
            f"{unrecorded} trained trial{'s' if unrecorded != 1 else ''} predate{'s' if unrecorded == 1 else ''} the "
            "samples-seen figure (journals written before it was recorded) and count as no compute: the "
            "equal-compute comparison undercounts them"
        )
    return BenchSummary(plan, dict(baseline), targets, cost, {k: len(v) for k, v in done.items()}, notes)
