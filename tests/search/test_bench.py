"""``mcaas-search bench``: the comparison logic on hand-made records (paired intervals, the
common trial count, the bound on validation and test, the cost of a trial, the Markdown
splice) and one small benchmark of the demo end to end, resumed and rewritten."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from objectives import TARGETS, Constraint, PairedDrop
from search.bench import peers
from search.bench.csvs import write_csvs
from search.bench.markdown import markdown, splice
from search.bench.peers import PEERS, run_peers
from search.bench.plan import ASHA_TRIAL_FACTOR, METHOD_LABELS, METHODS, BenchPlan
from search.bench.plots import ratio_ticks, write_efficiency
from search.bench.results import (
    BEGIN,
    END,
    WORKLOAD_GOALS,
    counted_records,
    find_chunks,
    gather,
    markers,
    passes_at,
    passes_text,
    summarise,
    trial_cost,
)
from search.reporting.format import settings_summary
from search.request import SearchRequest
from search.study import TrialRecord
from search.workloads import WorkloadSpec
from spaces import demo_space
from tests.support import RunCli

torch.set_num_threads(1)

BASELINE = {"val_acc": 96.0, "test_acc": 95.0, "bytes": 1000.0, "latency_ms": 1.0}


def record(number: int, state: str = "complete", *, val: float = 95.5, test: float = 94.5, size: float = 2.0,
           latency: float = 1.5, profile: str | None = None, reason: str | None = None, seconds: float = 10.0,
           stages: list[dict[str, Any]] | None = None, saved: float = 0.0, config: dict | None = None,
           n_val: int = 100_000) -> TrialRecord:
    """A hand-made trial; its paired validation counts (only the teacher right on the points it
    lost) on ``n_val`` images: the default is large enough to vouch for any drop below 0.95 pt."""
    feasible_violation = (BASELINE["val_acc"] - 1.0) - val  # <= 0: within 1 pt on validation
    paired = {"n_val": float(n_val), "val_lost": float(round((BASELINE["val_acc"] - val) * n_val / 100)),
              "val_gained": 0.0}
    return TrialRecord(
        number=number, state=state, profile=profile, config=config or {},
        metrics={"val_acc": val, "test_acc": test, **paired} if state == "complete" else {},
        ratios={"size": size, "latency": latency} if state == "complete" else {},
        violations={"accuracy": feasible_violation} if state == "complete" else {},
        stages=stages or [], artifact=None, reason=reason, seconds=seconds, values=None, saved_s=saved,
    )


# ---------------------------------------------------------------------------------------------
# Paired confidence interval


# ---------------------------------------------------------------------------------------------
# Summaries


def test_counted_records_are_the_finished_ones_in_order() -> None:
    rs = [record(3), record(1, "pruned"), record(2, "failed", reason="interrupted (Ctrl-C)"),
          record(0, "failed", reason="StageError: x"), record(4, "running")]
    assert [r.number for r in counted_records(rs)] == [0, 1, 3]


def test_the_headline_is_chosen_on_validation_and_best_on_both_with_the_test_split() -> None:
    rs = [
        record(0, size=5.0),
        record(1, size=40.0, val=95.2, test=93.5),  # within on validation, 1.5 pt lost on test
        record(2, size=30.0, val=94.0),  # 2 pt lost on validation
        record(3, size=20.0, val=95.1, test=94.2),
        record(4, "pruned"),
    ]
    m = summarise("search", "size", "s", rs, BASELINE, required_accuracy=95.0, max_drop=1.0)
    # What a user of the method gets: the trial it recommends, though it broke the bound on test.
    assert m.best is not None and m.best.number == 1 and m.ratio == 40.0
    # The best case, chosen with the test split.
    assert m.best_on_both is not None and m.best_on_both.number == 3 and m.ratio_on_both == 20.0
    assert m.largest is not None and m.largest.number == 1
    # On 2,000 validation images trial 1's 0.8 pt is not vouched for (its interval reaches past
    # 1 pt): the method recommends trial 0 (0.5 pt), the most compressed one whose interval is within.
    small = [dataclasses.replace(r, metrics={**r.metrics, "n_val": 2000.0, "val_lost": float(round((96.0 - r.metrics["val_acc"]) * 20))})
             if r.state == "complete" else r for r in rs]
    assert PairedDrop(2000, 16, 0).interval()[1] > 1.0 >= PairedDrop(2000, 10, 0).interval()[1]
    m = summarise("search", "size", "s", small, BASELINE, required_accuracy=95.0, max_drop=1.0)
    assert m.best is not None and m.best.number == 0
    assert m.trials == 5 and m.wall_s == 50.0 and m.trials_per_hour == pytest.approx(360.0)
    assert m.hypervolume > 0


def test_no_trial_at_the_bound_gives_no_best_and_zero_hypervolume() -> None:
    m = summarise("random", "size", "r", [record(0, val=90.0)], BASELINE, 95.0, 1.0)
    assert m.best is None and m.ratio is None and m.hypervolume == 0.0


def _plan(*, trials: int = 10, **changes: Any) -> BenchPlan:
    request = SearchRequest(WorkloadSpec(), constraint=Constraint(max_drop=1.0), trials=trials)
    base = {"name": "b", "targets": ("size", "latency"), "methods": METHODS,
            "round_size": 5, "request": request, "space": demo_space()}
    return BenchPlan(**{**base, **changes})


def test_methods_are_compared_at_the_trial_count_all_reached() -> None:
    profiles = [record(i, profile=p, size=s) for i, (p, s) in enumerate([("high-accuracy", 3.0), ("balanced", 6.0),
                                                                          ("max-compression", 50.0)])]
    profiles[2] = record(2, profile="max-compression", size=50.0, val=80.0)  # breaks the bound
    search = [*profiles, *(record(i, size=10.0 + i) for i in range(3, 9))]  # 9 done
    random = [record(i, size=4.0 + i) for i in range(6)]  # 6 done
    summary = gather(_plan(targets=("size",)), BASELINE, {"b-size-search": search, "b-size-random": random}, logits_s=2.0)
    (block,) = summary.targets
    assert block.compared == 6
    by = {m.method: m for m in block.methods}
    assert by["profiles"].trials == 3 and by["profiles"].ratio == 6.0  # best feasible profile
    assert by["search"].trials == 6 and by["search"].ratio == 15.0  # trials 0..5 only
    assert by["random"].trials == 6 and by["random"].ratio == 9.0
    assert len(block.histories["search"]) == 6
    assert summary.studies == {"b-size-search": 9, "b-size-random": 6}


def test_plans_name_their_studies_and_rounds() -> None:
    plan = _plan(trials=12, round_size=5)
    assert [s.name for s in plan.studies()] == ["b-size-search", "b-latency-search", "b-size-random", "b-latency-random",
                                                "b-size-asha", "b-latency-asha"]
    assert plan.rounds() == [5, 10, 12]
    assert plan.settings(plan.studies()[2], 5).sampler == "random"
    assert not plan.settings(plan.studies()[2], 5).profiles
    assert not plan.settings(plan.studies()[2], 5).skip_dominated  # random search skips nothing
    # The search is named the full-budget one, whatever the default strategy becomes.
    search = plan.settings(plan.studies()[0], 5)
    assert (search.strategy, search.sampler, search.trials, search.max_samples) == ("full", "tpe", 5, None)
    # The multi-fidelity study: the search's sampler, no profiles, the search's compute as its
    # budget and a trial cap of ASHA_TRIAL_FACTOR times the round's trials.
    asha = plan.settings(plan.studies()[4], 5, compute=1234)
    assert (asha.strategy, asha.sampler, asha.profiles, asha.skip_dominated) == ("asha", "tpe", False, True)
    assert (asha.max_samples, asha.trials) == (1234, ASHA_TRIAL_FACTOR * 5)
    # It needs the search's studies (their compute is its budget), not their rows.
    assert [s.name for s in _plan(targets=("size",), methods=("asha",)).studies()] == ["b-size-search", "b-size-asha"]
    assert [s.name for s in _plan(methods=("random",)).studies()] == ["b-size-random", "b-latency-random"]
    # Random search for a target searches that target's space: the study has the target.
    (latency,) = _plan(targets=("latency",), methods=("random",)).studies()
    assert (latency.name, latency.target) == ("b-latency-random", "latency")


def test_trial_cost_splits_time_by_stage_and_counts_stops_apart() -> None:
    stages = [{"stage": "prune", "seconds": 1.0}, {"stage": "distill", "seconds": 6.0},
              {"stage": "export", "seconds": 1.0}, {"stage": "measure", "seconds": 1.0}]
    rs = [record(0, stages=stages, config={"distill.alpha": 0.5, "distill.epochs": 2.0}),
          record(1, stages=stages, config={"distill.alpha": 0.0, "distill.epochs": 1.0}),
          record(2, "pruned", seconds=4.0, saved=12.0)]
    cost = trial_cost(rs, logits_s=3.0)
    assert cost.complete == 2 and cost.wall_s == 20.0
    assert cost.training_s == 12.0 and cost.outside_share == pytest.approx(0.4)
    assert cost.other_s == pytest.approx(2.0)
    assert (cost.stopped, cost.stopped_wall_s, cost.saved_s) == (1, 4.0, 12.0)
    assert cost.logits_saved_s == 6.0  # 2 epochs with a teacher term x 3 s


def test_summary_csv_gives_each_best_trial_its_paired_interval(tmp_path: Path) -> None:
    search = [record(0, size=5.0), record(1, size=12.0, val=95.4, test=94.4)]
    random = [record(0, size=3.0, val=90.0), record(1, size=4.0, val=90.0)]  # nothing at the bound
    summary = gather(_plan(targets=("size",), methods=("random", "search")), BASELINE,
                     {"b-size-search": search, "b-size-random": random}, logits_s=None)
    paired = PairedDrop(n=1000, lost=20, gained=14)  # 0.6 pt, the stored test drop
    (block,) = summary.targets
    methods = [dataclasses.replace(m, paired=paired) if m.best is not None else m for m in block.methods]
    summary = dataclasses.replace(summary, targets=[dataclasses.replace(block, methods=methods)])
    summary_csv, trials_csv = write_csvs(summary, tmp_path)
    with open(summary_csv) as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    low, high = paired.interval()
    assert rows["search"]["best_trial"] == "1" and float(rows["search"]["best_ratio"]) == 12.0
    assert float(rows["search"]["test_drop_ci_low"]) == pytest.approx(low, abs=1e-4)
    assert float(rows["search"]["test_drop_ci_high"]) == pytest.approx(high, abs=1e-4)
    assert low < float(rows["search"]["test_drop"]) < high
    assert rows["random"]["best_trial"] == rows["random"]["test_drop_ci_low"] == ""
    with open(trials_csv) as handle:
        header = next(csv.reader(handle))
    assert {f"{t}_ratio" for t in TARGETS} <= set(header)  # every target of objectives, none hard-coded


def test_splice_rewrites_only_its_own_benchmark_s_section() -> None:
    a_begin, a_end = markers("a")
    doc = f"# Benchmarks\n\nintro by hand\n\n{a_begin}\nold table\n{a_end}\n\n## Analysis\nkept\n"
    out = splice(doc, "new table\n", "a")
    assert "old table" not in out and "new table" in out
    assert out.startswith("# Benchmarks\n\nintro by hand\n\n") and out.endswith("## Analysis\nkept\n")
    # another benchmark gets a section of its own, appended; a's stays as it was
    b_begin, b_end = markers("b")
    both = splice(out, "b table", "b")
    assert both == f"{out.rstrip()}\n\n{b_begin}\nb table\n{b_end}\n"
    again = splice(both, "newer b", "b")
    assert "b table" not in again and again.count("newer b") == 1 and "new table" in again
    assert splice("", "t", "a").startswith("# Benchmarks\n\n" + a_begin)
    assert splice("notes\n", "t", "a") == f"notes\n\n{a_begin}\nt\n{a_end}\n"


def test_splice_takes_over_the_unnamed_markers_of_an_older_file_only_for_their_benchmark() -> None:
    doc = f"intro\n\n{BEGIN}\n## `a`\nold a\n{END}\n\nby hand\n"
    a_begin, a_end = markers("a")
    assert splice(doc, "## `a`\nnew a", "a") == f"intro\n\n{a_begin}\n## `a`\nnew a\n{a_end}\n\nby hand\n"
    other = splice(doc, "## `b`\nb", "b")
    assert other.startswith(doc.rstrip()) and other.endswith(f"{markers('b')[1]}\n")


# ---------------------------------------------------------------------------------------------
# End to end on the demo


# A loose bound (50 pt): some trial is within it on both splits, so the best-trial columns are
# always filled for some method and the test checks them.
BENCH = ["bench", "--trials", "4", "--round", "2", "--targets", "size", "--name", "tb",
         "--out", "B.md", "--results", "res", "--device", "cpu", "--max-drop", "50"]


@pytest.mark.slow
def test_demo_bench_writes_the_summary_and_resumes(
    search_folder: Callable[[str], Path], run_cli: RunCli
) -> None:
    folder = search_folder('[space]\n"distill.epochs" = { low = 1, high = 2, step = 1 }\nprofile_epochs = 1\n')
    code, _, err = run_cli([*BENCH, "--space", "tiny.toml"])
    assert code == 0, err
    assert "round 2/2: tb-size-random" in err
    text = (folder / "B.md").read_text()
    assert text.count(markers("tb")[0]) == 1 and text.count(markers("tb")[1]) == 1 and BEGIN not in text
    assert "mcaas-search bench --space tiny.toml --name tb --targets size --max-drop 50 --trials 4 --round 2" in text
    assert "| MCaaS fixed profiles | 3 |" in text
    assert "| random search | 4 |" in text and "| default search (TPE) | 4 |" in text
    assert "- random search: `mcaas-search bench --space tiny.toml --name tb --targets size --methods random" in text
    with open(folder / "res" / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], r["trials"]) for r in rows][:3] == [("profiles", "3"), ("random", "4"), ("search", "4")]
    # The multi-fidelity search runs to the search's compute, not to 4 trials; then the peers
    # (nncf if installed).
    assert [r["method"] for r in rows][3:6] == ["asha", "ort-int8", "torch-pruning"]
    with_best = [row for row in rows if row["best_trial"]]
    assert with_best, rows
    for row in with_best:  # a best trial has a paired interval around its test drop
        assert row["best_ratio"]
        assert float(row["test_drop_ci_low"]) <= float(row["test_drop"]) <= float(row["test_drop_ci_high"])
    for row in rows:
        if not row["best_trial"]:
            assert row["best_ratio"] == row["test_drop_ci_low"] == row["test_drop_ci_high"] == ""
    assert (folder / "res" / "bench.html").is_file()

    # Text written around the section by hand survives; a rerun resumes with nothing left to do.
    (folder / "B.md").write_text("# Mine\n\n" + text + "\n## Analysis\nby hand\n")
    code, _, err = run_cli([*BENCH, "--space", "tiny.toml"])
    assert code == 0, err
    again = (folder / "B.md").read_text()
    assert again.startswith("# Mine\n") and again.endswith("## Analysis\nby hand\n")
    assert "| random search | 4 |" in again and "round" in err
    assert "0/4" not in err  # resumed, not restarted

    # The same name with another bound is another benchmark: refused before any work.
    code, _, err = run_cli([*BENCH, "--space", "tiny.toml", "--max-drop", "2"])
    assert code == 2 and "use another --name" in err and err.count("\n") == 1
    # So is the same name over a space file edited since.
    (folder / "tiny.toml").write_text('[space]\n"distill.epochs" = { low = 1, high = 3, step = 1 }\nprofile_epochs = 1\n')
    code, _, err = run_cli([*BENCH, "--space", "tiny.toml"])
    assert code == 2 and err.count("\n") == 1, err
    assert "study 'tb-size-search' searched another space (distill.epochs: stored '1.0 .. 2.0 step 1.0'" in err
    assert "use another --name" in err


def test_a_failing_summary_between_rounds_does_not_stop_the_benchmark(
    search_folder: Callable[[str], Path],
    run_cli: RunCli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = search_folder('[space]\n"distill.epochs" = { low = 1, high = 1, step = 1 }\nprofile_epochs = 1\n')
    calls: list[int] = []

    def broken(*args: Any, **kwargs: Any) -> list[Path]:
        calls.append(1)
        raise TypeError("a bug in the summary")

    monkeypatch.setattr("search.bench.summary.write_summary", broken)
    code, _, err = run_cli(["bench", "--trials", "2", "--round", "1", "--targets", "size", "--methods", "random",
                              "--name", "tf", "--out", "B.md", "--space", "tiny.toml", "--device", "cpu"])
    assert code == 0, err
    assert len(calls) == 2 and "could not write the summary after round 1: TypeError" in err
    assert "round 2/2: tf-size-random" in err  # the second round ran all the same
    assert not (folder / "B.md").exists()


def test_teacher_pass_is_timed_once_when_the_cache_did_not_record_it(
    tiny_data: Any, tiny_cnn: torch.nn.Module, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from types import SimpleNamespace

    from search.trials import context as engine

    workload = SimpleNamespace(teacher=tiny_cnn, data=tiny_data, fingerprint={"model": "tiny"})
    cache = engine.logits_cache_path(workload, tmp_path)  # type: ignore[arg-type]
    cache.write_bytes(b"logits written before the time was recorded")
    passes: list[int] = []
    real = engine.teacher_logits
    monkeypatch.setattr(engine, "teacher_logits", lambda *a, **k: passes.append(1) or real(*a, **k))
    timed = engine.teacher_pass_seconds(workload, tmp_path)  # type: ignore[arg-type]
    assert timed > 0 and passes == [1]
    # Recorded beside the cache: the next summary reads it instead of timing the pass again.
    assert engine.teacher_pass_seconds(workload, tmp_path) == timed  # type: ignore[arg-type]
    assert passes == [1]
    cache.with_suffix(".json").write_text('{"seconds": 12.5}')
    assert engine.teacher_pass_seconds(workload, tmp_path) == 12.5  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Peers, search efficiency and --quick


def test_peers_are_the_pipeline_configs_their_docstring_states() -> None:
    space = demo_space()
    ort = PEERS["ort-int8"].config(space).to_flat()
    assert (ort["prune.ratio"], ort["distill.epochs"], ort["cluster.k"], ort["quantize.mode"]) == (0.0, 0.0, 0, "int8-static")
    tp = PEERS["torch-pruning"].config(space).to_flat()
    assert (tp["prune.ratio"], tp["prune.criterion"], tp["prune.scope"], tp["prune.steps"], tp["prune.round_to"]) == (
        0.5, "l2", "uniform", 1, 1)
    assert tp["distill.alpha"] == 0.0 and tp["distill.epochs"] == space.profile_epochs  # plain cross-entropy
    assert tp["quantize.mode"] == "none" and tp["depth.fraction"] == 0.0
    assert PEERS["nncf"].settings is None and PEERS["nncf"].run is not None
    # What report and show say of the nncf trial, which is no pipeline config.
    assert settings_summary(PEERS["nncf"].described or {}) == "no pruning | no training | nncf int8 (accuracy-aware)"
    assert set(PEERS) <= set(METHODS) and all(name in METHOD_LABELS for name in PEERS)


def test_a_peer_without_its_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PEERS, "nncf", dataclasses.replace(PEERS["nncf"], module="mcaas_search_no_such_module"))
    assert PEERS["nncf"].missing() == "nncf row skipped: pip install 'mcaas-search[nncf]'"
    assert PEERS["ort-int8"].missing() is None
    said: list[str] = []
    run_peers(("nncf",), None, None, None, baseline=None, say=said.append)  # type: ignore[arg-type]
    assert said == ["nncf row skipped: pip install 'mcaas-search[nncf]'"]  # nothing else is touched


def test_each_peer_gets_a_row_on_every_target_from_its_one_trial() -> None:
    peers = [record(0, profile="ort-int8", size=3.0, latency=0.9), record(1, profile="torch-pruning", size=3.5, val=94.0)]
    search = [record(i, size=2.0 + i) for i in range(4)]
    summary = gather(_plan(methods=("search", "ort-int8", "torch-pruning", "nncf")), BASELINE,
                     {"b-size-search": search, "b-latency-search": search, "b-peers": peers}, logits_s=None)
    for block in summary.targets:
        by = {m.method: m for m in block.methods}
        assert set(by) == {"search", "ort-int8", "torch-pruning"}  # nncf did not run: no row
        assert by["ort-int8"].trials == 1 and by["ort-int8"].study == "b-peers"
        assert by["torch-pruning"].best is None  # 2 pt lost on validation
        assert block.points["ort-int8"][0].number == 0
    assert {m.method: m.ratio for m in summary.targets[0].methods}["ort-int8"] == 3.0
    assert {m.method: m.ratio for m in summary.targets[1].methods}["ort-int8"] == 0.9
    assert _plan(methods=("ort-int8",)).studies() == [] and _plan().peer_study().name == "b-peers"


def test_search_efficiency_is_the_count_at_which_the_search_reaches_random_search() -> None:
    assert passes_at([0.0, 0.2, 0.5, 0.9], 0.5) == 3
    assert passes_at([0.0, 0.2], 0.5) is None
    assert passes_at([], 0.0) is None
    # random search: nothing feasible until trial 3, then 10x; the search: 20x from trial 2 on.
    random = [record(0, val=90.0), record(1, val=90.0), record(2, size=10.0), record(3, size=10.0)]
    search = [record(0, val=90.0), record(1, size=20.0), record(2, size=20.0), record(3, size=20.0)]
    summary = gather(_plan(targets=("size",), methods=("random", "search")), BASELINE,
                     {"b-size-search": search, "b-size-random": random}, logits_s=None)
    (block,) = summary.targets
    assert block.search_passes_random == 2 and passes_text(block) == "2"
    never = dataclasses.replace(block, histories={"search": [0.0] * 4, "random": block.histories["random"]})
    assert never.search_passes_random is None and passes_text(never) == "never"


def test_the_summary_csv_and_markdown_give_the_search_efficiency(tmp_path: Path) -> None:
    random = [record(0, size=10.0), record(1, size=10.0)]
    search = [record(0, size=4.0), record(1, size=20.0)]
    summary = gather(_plan(targets=("size",), methods=("random", "search")), BASELINE,
                     {"b-size-search": search, "b-size-random": random}, logits_s=None)
    summary_csv, _ = write_csvs(summary, tmp_path)
    with open(summary_csv) as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert rows["search"]["search_passes_random_at"] == "2" and rows["random"]["search_passes_random_at"] == ""
    text = markdown(summary, command="c", method_command=lambda t, m: m, results=tmp_path / "res", png=None,
                    html=tmp_path / "res" / "bench.html", links_from=tmp_path / "docs")
    assert "reached by the search at trial **2**" in text
    # Links are relative to the Markdown file's folder, wherever the command ran.
    assert "`../res/bench.html`" in text and "`../res/summary.csv`" in text
    page = write_efficiency(summary, tmp_path / "efficiency.html")
    assert "search reaches random search" in page.read_text()


QUICK = ["bench", "--quick", "--name", "q", "--results", "res", "--device", "cpu"]


def test_quick_bench_produces_every_row(
    search_folder: Callable[[str], Path],
    run_cli: RunCli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = search_folder("")
    # Whether or not nncf is installed here, its row is skipped with its line (the test stays fast).
    monkeypatch.setitem(PEERS, "nncf", dataclasses.replace(PEERS["nncf"], module="mcaas_search_no_such_module"))
    code, _, err = run_cli(QUICK)
    assert code == 0, err
    assert "nncf row skipped: pip install 'mcaas-search[nncf]'" in err and "Traceback" not in err
    with open(folder / "res" / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    expected = {(t, m) for t in ("size", "latency") for m in METHODS if m != "nncf"}
    assert {(r["target"], r["method"]) for r in rows} == expected
    assert all(r["trials"] == "1" for r in rows if r["method"] in PEERS)
    assert [r["search_passes_random_at"] != "" for r in rows if r["method"] == "search"] == [True, True]
    text = (folder / "res" / "bench.md").read_text()  # --quick never rewrites BENCHMARKS.md by default
    assert not (folder / "BENCHMARKS.md").exists()
    # Per target: a row at equal trials and one at equal compute (the latency target may add one
    # measured alone).
    assert text.count("At equal compute: **") == 2
    for method in METHODS:
        if method != "nncf":
            assert 4 <= text.count(f"| {METHOD_LABELS[method]} |") <= 5, method
    assert "--quick" in text and (folder / "res" / "efficiency.html").is_file()
    # A rerun finds the peers done: it runs none of them again.
    code, _, err = run_cli(QUICK)
    assert code == 0, err
    assert "peer: " not in err


@pytest.mark.skipif(importlib.util.find_spec("nncf") is None, reason="nncf is not installed (the nncf extra)")
def test_nncf_peer_is_measured_like_a_trial_when_installed(
    search_folder: Callable[[str], Path], run_cli: RunCli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = search_folder("")
    sessions: list[Path] = []

    class CountedRunner(peers.OnnxRunner):
        def __init__(self, path: Path, threads: int = 1) -> None:
            sessions.append(path)
            super().__init__(path, threads)

    monkeypatch.setattr(peers, "OnnxRunner", CountedRunner)
    code, _, err = run_cli([*QUICK, "--methods", "nncf"])
    assert code == 0, err
    with open(folder / "res" / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["target"], r["method"], r["trials"]) for r in rows] == [("size", "nncf", "1"), ("latency", "nncf", "1")]
    # NNCF gets each image's hit with the accuracy, so it validates whole candidates, never one
    # session per validation image (360 on the demo; on Fashion-MNIST that was 6,000 and an hour).
    assert 0 < len(sessions) < 30, len(sessions)
    # Accuracy control keeps NNCF within the bound it is given (1 point) on validation. (Whether
    # its trial is recommended is another matter: on 360 images its interval may reach past 1 pt.)
    with open(folder / "res" / "trials.csv") as handle:
        [trial] = [t for t in csv.DictReader(handle) if t["profile"] == "nncf"]
    assert trial["feasible_val"] == "True" and float(trial["size_ratio"]) > 1.0, trial


def test_a_trial_without_test_accuracy_is_described_by_its_validation_drop() -> None:
    # A search measures test accuracy only within the bound on validation: the most compressed
    # trial at any accuracy often has none, and the summary must not print "nan".
    from search.bench.markdown import _drop_at_any

    measured = record(1, val=95.5, test=94.0)
    assert _drop_at_any(BASELINE, measured) == "+1.00 pt test"
    unmeasured = dataclasses.replace(record(2, val=90.0), metrics={"val_acc": 90.0})
    assert _drop_at_any(BASELINE, unmeasured) == "+6.00 pt validation (test not measured)"


def test_a_goal_is_judged_only_for_the_workload_it_was_set_for(tmp_path: Path) -> None:
    search = [record(0, size=4.0), record(1, size=20.0)]
    texts = {}
    for name, goals in (("reference", WORKLOAD_GOALS["vit_tiny-fashion-mnist"]), ("other", {})):
        summary = gather(_plan(targets=("size",), methods=("search",), goals=goals), BASELINE,
                         {"b-size-search": search}, logits_s=None)
        texts[name] = markdown(summary, command="c", method_command=lambda t, m: m, results=tmp_path / "res",
                               png=None, html=tmp_path / "res" / "bench.html", links_from=tmp_path)
    assert "- Default search, size: 20.0x recommended (chosen on validation); goal >= 18x: **met**." in texts["reference"]
    assert "goal >=" not in texts["other"]  # a user's workload is not judged by the project's goals
    assert set(WORKLOAD_GOALS) == {"resnet18-fashion-mnist", "mobilenet_v2-fashion-mnist", "vit_tiny-fashion-mnist"}


def test_the_multi_fidelity_search_is_judged_by_the_goal_at_the_search_s_compute(tmp_path: Path) -> None:
    # The search: 4 trials of 100 samples, best 8x. The multi-fidelity search: 4 trials of 100,
    # the first three within the bound (up to 12x), the last one 20x but 3 pt down. At equal trials
    # and equal compute alike it recommends 12x: above the goal of 10x, and above the search's
    # best within the bound on validation and test.
    asha = [(100, 10.0 + i, 95.5) for i in range(3)] + [(100, 20.0, 93.0)]
    summary = gather(_plan(targets=("size",), methods=("search", "asha"), goals={"size": 10.0}), BASELINE,
                     _studies([(100, 5.0 + i, 95.5) for i in range(4)], [], asha), logits_s=None)
    text = markdown(summary, command="c", method_command=lambda t, m: m, results=tmp_path, png=None,
                    html=tmp_path / "bench.html", links_from=tmp_path)
    assert "- Default search, size: 8.0x recommended (chosen on validation); goal >= 10x: **missed**." in text
    assert "- Multi-fidelity search, size: 12.0x recommended (chosen on validation); goal >= 10x: **met**." in text
    assert ("- Best within the bound on validation and test at that compute: multi-fidelity search 12.0x vs the "
            "default search's 8.0x; at least it: **met**.") in text
    # Without random search the plot's titles do not speak of it.
    page = write_efficiency(summary, tmp_path / "efficiency.html").read_text()
    assert "size: hypervolume after each trial" in page and "random search" not in page


def test_ratio_axis_ticks_name_every_decade_in_full() -> None:
    """The ratio axes get 1-2-5 ticks spanning the points: plotly's own log ticks label 20 "2"."""
    assert ratio_ticks([1.9, 6.0, 18.2]) == [1, 2, 5, 10, 20]
    assert ratio_ticks([15.6, 345.4]) == [10, 20, 50, 100, 200, 500]
    assert ratio_ticks([0.9, 1.0]) == [0.5, 1]
    assert ratio_ticks([]) == [] and ratio_ticks([0.0]) == []


# ---------------------------------------------------------------------------------------------
# Resuming anywhere, and --timeout

JOURNALED = ["bench", "--trials", "2", "--round", "2", "--targets", "size", "--methods", "random", "--name", "tj",
             "--out", "B.md", "--space", "tiny.toml", "--device", "cpu", "--max-drop", "50"]
ONE_EPOCH = '[space]\n"distill.epochs" = { low = 1, high = 1, step = 1 }\nprofile_epochs = 1\n'


def _trials(journal: Path, name: str) -> list[Any]:
    from search.study import load_study, open_storage

    return load_study(name, open_storage(str(journal), create=False)).get_trials(deepcopy=False)


def test_a_committed_journal_resumes_in_a_fresh_clone_without_running_a_finished_trial_again(
    search_folder: Callable[[str], Path],
    run_cli: RunCli,
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil

    from search.study import StudyInfo, load_study, open_storage

    folder = search_folder(ONE_EPOCH)
    code, _, err = run_cli(JOURNALED)
    assert code == 0, err
    journal = Path("studies/benchmarks/tj/bench.journal")  # the default: beside the results
    before = [(t.number, t.state, t.datetime_start, t.values) for t in _trials(journal, "tj-size-random")]
    assert len(before) == 2

    # A fresh clone holds the journal (and the teacher it was run with), nothing else of the run:
    # the study folder and the teacher file the journal names are gone.
    clone = tmp_path_factory.mktemp("clone")
    (clone / "studies" / "benchmarks" / "tj").mkdir(parents=True)
    shutil.copyfile(journal, clone / journal)
    shutil.copytree(folder / "studies" / ".cache", clone / "studies" / ".cache")
    shutil.copyfile(folder / "tiny.toml", clone / "tiny.toml")
    shutil.rmtree(folder / "studies")
    monkeypatch.chdir(clone)
    code, _, err = run_cli([*JOURNALED, "--trials", "3"])
    assert code == 0, err
    after = _trials(journal, "tj-size-random")
    assert [(t.number, t.state, t.datetime_start, t.values) for t in after[:2]] == before  # none ran again
    assert len(after) == 3 and after[2].state.name in ("COMPLETE", "PRUNED")
    info = StudyInfo.load(load_study("tj-size-random", open_storage(str(journal), create=False)))
    assert Path(info.artifacts_dir) == (clone / "studies" / "tj-size-random").resolve()
    assert Path(info.baseline_onnx).is_file() and str(clone) in info.baseline_onnx
    assert (clone / "studies" / "tj-size-random" / "trials" / "2").is_dir()  # the new trial's files
    assert (clone / "B.md").is_file(), err
    text = (clone / "B.md").read_text()
    assert "| random search | 3 |" in text
    # Both runs within minutes of each other: one run of the three trials, as the section says.
    assert re.search(r"\*\*Runs\*\* \(a pause of 20 min .*\): \d{4}-\d\d-\d\d \d\d:\d\d-\d\d:\d\d \(3 trials, \d+ min\)\.", text), text


def test_the_runs_a_benchmark_was_made_in_are_told_apart_by_pauses() -> None:
    import datetime

    at = lambda h, m: datetime.datetime(2026, 12, 8, h, m)  # noqa: E731
    spans = [
        (at(9, 0), at(9, 30)),  # a second sitting, listed first: order is by start
        (at(6, 0), at(6, 10)),
        (at(6, 5), at(7, 50)),  # overlaps the first (--jobs 2): the run ends with the later end
        (at(8, 5), None),  # started 15 min after the last end and never ended: same run
        (at(22, 0), at(23, 59) + datetime.timedelta(minutes=2)),  # past midnight
    ]
    chunks = find_chunks(spans)
    assert [(c.start, c.end, c.trials) for c in chunks] == [
        (at(6, 0), at(8, 5), 3), (at(9, 0), at(9, 30), 1), (at(22, 0), datetime.datetime(2026, 12, 9, 0, 1), 1)
    ]
    assert chunks[0].describe() == "2026-12-08 06:00-08:05 (3 trials, 125 min)"
    assert chunks[2].describe() == "2026-12-08 22:00-2026-12-09 00:01 (1 trial, 121 min)"
    assert find_chunks([]) == []


def test_timeout_ends_the_bench_between_trials_and_writes_the_section(
    search_folder: Callable[[str], Path],
    run_cli: RunCli,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from search.backends import local

    folder = search_folder(ONE_EPOCH)
    # The clock jumps past the deadline while the first trial runs: what a long trial does.
    real_time, real_record, late = time.time, local.run_and_record, []

    def record_then_late(*args: Any, **kwargs: Any) -> Any:
        out = real_record(*args, **kwargs)
        late.append(1)
        return out

    monkeypatch.setattr(local, "run_and_record", record_then_late)
    monkeypatch.setattr(time, "time", lambda: real_time() + (7200.0 if late else 0.0))
    code, _, err = run_cli([*JOURNALED, "--trials", "3", "--timeout", "1h"])
    assert code == 0, err
    assert "--timeout reached" in err and "Traceback" not in err
    [trial] = _trials(Path("studies/benchmarks/tj/bench.journal"), "tj-size-random")
    assert trial.state.name in ("COMPLETE", "PRUNED")  # finished, not cut off (interrupted is FAIL)
    text = (folder / "B.md").read_text()
    assert markers("tj")[0] in text and "| random search | 1 |" in text


# ---------------------------------------------------------------------------------------------
# Equal compute: training samples seen


def _trained(study: Any, *specs: tuple[int, float, float]) -> list[TrialRecord]:
    """Hand-made complete trials, one per (samples seen, size ratio, validation accuracy), as
    ``study`` records them: their distill stage records the samples."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from search.study import trial_records

    for samples, size, val in specs:
        study.add_trial(create_trial(
            state=TrialState.COMPLETE, values=[val, size], params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)},
            user_attrs=TrialRecord(
                metrics={"val_acc": val, "test_acc": val - 1.0, "n_val": 1e5, "val_gained": 0.0,
                         "val_lost": round((BASELINE["val_acc"] - val) * 1e3)},  # vouched for
                ratios={"size": size, "latency": 1.0},
                violations={"accuracy": BASELINE["val_acc"] - 1.0 - val},
                stages=[{"stage": "distill", "seconds": 5.0, "metrics": {"samples_seen": samples}}],
            ).to_attrs(),
        ))
    assert isinstance(study, optuna.Study)
    return trial_records(study)


def _studies(search: list[tuple[int, float, float]], random: list[tuple[int, float, float]],
             asha: list[tuple[int, float, float]] | None = None) -> dict[str, list[TrialRecord]]:
    import optuna

    new = lambda: optuna.create_study(directions=["maximize", "maximize"])  # noqa: E731
    studies = {"b-size-search": _trained(new(), *search), "b-size-random": _trained(new(), *random)}
    return {**studies, "b-size-asha": _trained(new(), *asha)} if asha is not None else studies


def test_methods_are_also_compared_at_the_compute_the_default_search_spent() -> None:
    # The search: 4 trials of 100 samples (400 in all). Random search: 10 cheaper trials of 50,
    # its best ones last: at equal trials it has spent half as much, at equal compute 8 trials.
    search = [(100, 5.0 + i, 95.5) for i in range(4)]
    random = [(50, 2.0 + i, 95.5) for i in range(10)]
    peer = dataclasses.replace(record(0, size=3.0, profile="ort-int8"), number=0)
    studies = {**_studies(search, random), "b-peers": [peer]}
    summary = gather(_plan(targets=("size",), methods=("random", "search", "ort-int8")), BASELINE, studies, logits_s=None)
    (block,) = summary.targets
    by = {m.method: m for m in block.methods}
    assert block.compared == 4 and (by["search"].samples_seen, by["random"].samples_seen) == (400, 200)
    assert (block.budget, block.budget_trials) == (400, 4)
    at = {m.method: m for m in block.at_compute}
    assert (at["random"].trials, at["random"].samples_seen, at["random"].ratio) == (8, 400, 9.0)
    assert (at["search"].trials, at["search"].ratio) == (4, 8.0)
    assert at["ort-int8"].trials == 1 and at["ort-int8"].samples_seen == 0  # a fixed config, as it ran
    assert at["random"].hypervolume > by["random"].hypervolume
    assert [seen for seen, _ in block.compute_histories["random"]] == [50 * i for i in range(1, 11)]
    assert block.compute_histories["search"][-1] == (400, at["search"].hypervolume)
    assert summary.notes == []


def test_the_table_gives_samples_seen_and_the_equal_compute_rows(tmp_path: Path) -> None:
    # Random search stopped at 3 of its trials: 150 of the search's 400 samples.
    summary = gather(_plan(targets=("size",), methods=("random", "search")), BASELINE,
                     _studies([(100, 5.0 + i, 95.5) for i in range(4)], [(50, 2.0 + i, 95.5) for i in range(3)]),
                     logits_s=None)
    text = markdown(summary, command="c", method_command=lambda t, m: m, results=tmp_path, png=None,
                    html=tmp_path / "bench.html", links_from=tmp_path)
    assert "| trials / h | samples seen |" in text and "| 400 |" in text
    assert "At equal compute: **400 training samples**, what the default search's 4 trials saw" in text
    assert "| random search | 3 | 150 (all it has: 38% of it) | **4.0x** |" in text
    assert "| default search (TPE) | 4 | 400 | **8.0x** |" in text
    summary_csv, trials_csv = write_csvs(summary, tmp_path)
    with open(summary_csv) as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert (rows["random"]["samples_seen"], rows["random"]["at_compute_trials"], rows["random"]["compute_samples"]) == ("150", "3", "400")
    with open(trials_csv) as handle:
        assert {row["samples_seen"] for row in csv.DictReader(handle)} == {"100", "50"}
    page = write_efficiency(summary, tmp_path / "efficiency.html").read_text()
    assert "hypervolume against compute" in page and "training samples seen" in page


def test_the_multi_fidelity_search_is_compared_at_the_search_s_compute(tmp_path: Path) -> None:
    # The search and random search: 4 trials of 100 samples each (400). The multi-fidelity search:
    # 11 trials of 40, ratio 2x to 12x; it ran past 400 samples by its last trial, which is not
    # compared. It reaches the search's 8x after 7 trials: 280 samples, 70 % of the search's.
    summary = gather(_plan(targets=("size",), methods=("random", "search", "asha")), BASELINE,
                     _studies([(100, 5.0 + i, 95.5) for i in range(4)], [(100, 2.0 + i, 95.5) for i in range(4)],
                              [(40, 2.0 + i, 95.5) for i in range(11)]), logits_s=None)
    (block,) = summary.targets
    by, at = {m.method: m for m in block.methods}, {m.method: m for m in block.at_compute}
    assert [m.method for m in block.methods] == ["random", "search", "asha"]
    # At equal trials: its first 4 (its budget is compute, it does not set the count compared).
    assert (block.compared, by["asha"].trials, by["asha"].samples_seen, by["asha"].study) == (4, 4, 160, "b-size-asha")
    # At equal compute: its 10 trials within the search's 400 samples; the headline is still
    # the trial it recommends on validation (the most compressed feasible one: 11x).
    assert (at["asha"].trials, at["asha"].samples_seen, at["asha"].ratio) == (10, 400, 11.0)
    assert at["asha"].hypervolume > at["search"].hypervolume > at["random"].hypervolume
    assert block.asha_reaches_search == 280 and block.spent["asha"] == 440
    assert [seen for seen, _ in block.compute_histories["asha"]] == [40 * i for i in range(1, 12)]
    assert [r.number for r in block.points["asha"]] == list(range(10))

    text = markdown(summary, command="c", method_command=lambda t, m: m, results=tmp_path, png=None,
                    html=tmp_path / "bench.html", links_from=tmp_path)
    assert "| multi-fidelity search (ASHA) | 4 | none | - |" not in text  # it has a recommended trial
    assert "| multi-fidelity search (ASHA) | 4 | **5.0x** | 3 |" in text and "| 160 |" in text
    assert "| multi-fidelity search (ASHA) | 10 | 400 | **11.0x** | 9 |" in text
    assert "above both: **met**" in text
    assert ("reached by the multi-fidelity search after **280 samples, 70% of that compute**; goal <= 33%: "
            "**missed**") in text
    summary_csv, trials_csv = write_csvs(summary, tmp_path)
    with open(summary_csv) as handle:
        rows = {row["method"]: row for row in csv.DictReader(handle)}
    assert (rows["asha"]["samples_seen"], rows["asha"]["at_compute_trials"], rows["asha"]["at_compute_samples_seen"]) == (
        "160", "10", "400")
    assert (rows["asha"]["asha_reaches_search_at"], rows["asha"]["asha_reaches_search_share"]) == ("280", "0.7")
    assert rows["search"]["asha_reaches_search_at"] == ""
    with open(trials_csv) as handle:
        assert sum(row["study"] == "b-size-asha" for row in csv.DictReader(handle)) == 10
    page = write_efficiency(summary, tmp_path / "efficiency.html").read_text()
    assert "multi-fidelity search (ASHA)" in page and "ASHA reaches its level at 70% of it" in page


def test_trials_from_before_the_figure_are_counted_as_no_compute_and_said_so() -> None:
    old = record(0, stages=[{"stage": "distill", "seconds": 5.0, "metrics": {"epochs": 2.0}}])
    summary = gather(_plan(targets=("size",), methods=("search",)), BASELINE, {"b-size-search": [old]}, logits_s=None)
    (block,) = summary.targets
    assert block.budget == 0 and block.at_compute == []  # nothing to compare at
    assert any("1 trained trial predates the samples-seen figure" in note for note in summary.notes)


# ---------------------------------------------------------------------------------------------
# Milliseconds measured alone


def test_the_latency_table_gives_each_best_trial_and_the_teacher_measured_alone(
    tiny_data: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from search.bench import alone
    from search.bench.alone import add_alone
    from stages.export import export_onnx
    from tests.tiny_models import make_tiny_cnn, make_tiny_resnet

    teacher = export_onnx(make_tiny_resnet(), tiny_data.example_input(), tmp_path / "teacher.onnx")
    student = export_onnx(make_tiny_cnn(), tiny_data.example_input(), tmp_path / "student.onnx")
    best = dataclasses.replace(record(0, latency=4.0), artifact=str(student))
    summary = gather(_plan(targets=("latency",), methods=("search",)), BASELINE, {"b-latency-search": [best]},
                     logits_s=None)
    workload = SimpleNamespace(data=tiny_data)
    measured = add_alone(summary, workload, teacher, tmp_path / "res")  # type: ignore[arg-type]
    (m,) = measured.targets[0].methods
    assert m.alone is not None and measured.teacher_alone is not None
    (ms, threads), (teacher_ms, _) = m.alone, measured.teacher_alone
    assert ms > 0 and teacher_ms > 0 and threads >= 1
    text = markdown(measured, command="c", method_command=lambda t, mt: mt, results=tmp_path, png=None,
                    html=tmp_path / "bench.html", links_from=tmp_path)
    assert f"The teacher: **{teacher_ms:.3f} ms**" in text
    assert f"| default search (TPE) | 0 | 4.0x | {ms:.3f} ms on {threads} thread(s) | {teacher_ms / ms:.1f}x |" in text
    # Cached by file: the next summary measures nothing again.
    monkeypatch.setattr(alone, "alone_latency", lambda *a, **k: pytest.fail("measured again"))
    assert add_alone(summary, workload, teacher, tmp_path / "res").teacher_alone == measured.teacher_alone  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# The multi-fidelity search's compute budget, run for real with trials that only record samples

ASHA_BENCH = ["bench", "--trials", "4", "--round", "2", "--targets", "size", "--methods", "asha", "--name", "ta",
              "--out", "B.md", "--space", "tiny.toml", "--device", "cpu"]


def _sampled_trials(monkeypatch: pytest.MonkeyPatch, samples: Callable[[str, int], int]) -> list[tuple[str, int]]:
    """Trials that train nothing and record ``samples(study, number)`` training samples seen
    (stopped at once, as a rung stop is recorded); returns the (study, trial) each run, in order.
    The summary is not written (the summary tests cover it)."""
    from optuna.trial import TrialState

    from search.backends import local

    ran: list[tuple[str, int]] = []

    def sampled(trial: Any, setup: Any, make_config: Any, *, profile: str | None) -> tuple[str, None]:
        study = setup.study.study_name
        ran.append((study, trial.number))
        seen = {"stage": "distill", "seconds": 0.0, "metrics": {"samples_seen": float(samples(study, trial.number))}}
        TrialRecord(stages=[seen], reason="stopped at a rung").save(trial)
        setup.study.tell(trial, state=TrialState.PRUNED)
        return "pruned", None

    monkeypatch.setattr(local, "run_and_record", sampled)
    monkeypatch.setattr("search.bench.summary.write_summary", lambda *a, **k: [])
    return ran


def test_the_multi_fidelity_study_runs_to_the_search_s_compute_each_round_and_resumes(
    search_folder: Callable[[str], Path], run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    search_folder(ONE_EPOCH)
    # The search's trials see 100 samples each, the multi-fidelity search's 30.
    ran = _sampled_trials(monkeypatch, lambda study, number: 100 if study.endswith("-search") else 30)
    code, _, err = run_cli(ASHA_BENCH)
    assert code == 0, err
    # Round 1: the search's 2 trials saw 200 samples; the multi-fidelity study stops at the first
    # trial that brings it to 200 (7 x 30 = 210). Round 2: 400, at its 14th trial (420). Each
    # round runs the search first.
    assert ran == [*(("ta-size-search", n) for n in (0, 1)), *(("ta-size-asha", n) for n in range(7)),
                   *(("ta-size-search", n) for n in (2, 3)), *(("ta-size-asha", n) for n in range(7, 14))]
    assert "ta-size-asha (multi-fidelity search (ASHA)) to 400 training samples, the default search's 4 trials'" in err
    journal = Path("studies/benchmarks/ta/bench.journal")
    assert len(_trials(journal, "ta-size-asha")) == 14
    # A rerun finds every round done: no trial runs again.
    ran.clear()
    code, _, err = run_cli(ASHA_BENCH)
    assert code == 0, err
    assert ran == [] and len(_trials(journal, "ta-size-asha")) == 14
    # A larger budget resumes from the journal: the search's next trials, then the
    # multi-fidelity study's from its 15th on, up to the search's 600 samples (20 x 30).
    code, _, err = run_cli([*ASHA_BENCH, "--trials", "6"])
    assert code == 0, err
    assert ran == [("ta-size-search", 4), ("ta-size-search", 5), *(("ta-size-asha", n) for n in range(14, 20))]


def test_the_multi_fidelity_budget_waits_for_the_search_to_finish_its_round(tmp_path: Path) -> None:
    import optuna

    from search.bench.plan import search_compute
    from search.study import open_storage

    plan = _plan(targets=("size",), methods=("asha",), request=SearchRequest(
        WorkloadSpec(), constraint=Constraint(max_drop=1.0), storage=str(tmp_path / "bench.journal")))
    assert search_compute(plan, "size", 1) is None  # no journal yet
    storage = open_storage(plan.storage, create=True)
    search = optuna.create_study(study_name="b-size-search", storage=storage, directions=["maximize", "maximize"])
    _trained(search, (100, 2.0, 95.5), (50, 3.0, 95.5))
    search.ask()  # a third trial still running: not finished, not counted
    assert (search_compute(plan, "size", 1), search_compute(plan, "size", 2)) == (100, 150)
    assert search_compute(plan, "size", 3) is None


def test_the_multi_fidelity_study_stops_at_its_trial_cap_when_its_trials_cost_nothing(
    search_folder: Callable[[str], Path], run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    search_folder(ONE_EPOCH)
    # Every config skipped before training (0 samples): only the cap, 5 x the round's trials, ends it.
    ran = _sampled_trials(monkeypatch, lambda study, number: 100 if study.endswith("-search") else 0)
    code, _, err = run_cli([*ASHA_BENCH, "--trials", "2"])
    assert code == 0, err
    assert [n for study, n in ran if study == "ta-size-asha"] == list(range(ASHA_TRIAL_FACTOR * 2))
