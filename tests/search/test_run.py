"""The search command end to end on the demo workload: profiles, persistence and resume,
refusing a mismatched study, interrupted and failing trials, --jobs 2, early stopping."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from objectives import Constraint, EarlyStop, Point, untrained_ratio_bound
from search.study import TrialRecord, open_storage, trial_record, trial_records
from search.trials.trial import Scoring, TrialStopped, run_trial
from spaces import PROFILES
from stages.config import PipelineConfig
from tests.support import RunCli

# Small budgets: the point is the search machinery, not the compression.
TINY_SPACE = """
"distill.epochs" = 3
"prune.steps" = 1
"quantize.mode" = ["none", "int8-static"]
drop = ["cluster.k"]
profile_epochs = 3
"""


@pytest.fixture
def demo_dir(search_folder: Callable[[str], Path]) -> Path:
    """A working folder holding the cached demo teacher and a tiny space file."""
    return search_folder(TINY_SPACE)


def _study(name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(None, create=False))


def _search(run_cli: RunCli, *extra: str) -> tuple[int, str, str]:
    return run_cli(["--space", "tiny.toml", "--study", "s", *extra])


@pytest.mark.slow
def test_search_runs_profiles_first_and_prints_the_front(demo_dir: Path, run_cli: RunCli) -> None:
    # The point rule: whether the default (confident) rule can vouch for a trial of a 4-trial
    # tiny search depends on a few validation images; its own tests are in test_exporting.
    code, out, err = _search(run_cli, "--trials", "4", "--select", "point")
    assert code == 0, err
    trials = _study("s").trials
    assert len(trials) == 4
    assert [trial_record(t).profile for t in trials[:3]] == list(PROFILES)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete, [trial_record(t).reason for t in trials]
    for t in complete:
        assert Path(trial_record(t).artifact).is_file()
        assert trial_record(t).metrics["bytes"] > 0
        assert set(t.constraints) == {"accuracy_drop"}
        assert {r["stage"] for r in trial_record(t).stages} >= {"export", "measure"}
    assert "report:" in out and (demo_dir / "studies" / "s" / "report.html").is_file()
    assert "export" in out


@pytest.mark.slow
def test_rerun_resumes_without_repeating_or_losing_trials(demo_dir: Path, run_cli: RunCli) -> None:
    assert _search(run_cli, "--trials", "3")[0] == 0
    # The named configs not run yet wait in the queue for the next run.
    first = {t.number: trial_record(t).config for t in _study("s").trials if t.state != TrialState.WAITING}
    assert _search(run_cli, "--trials", "5")[0] == 0
    trials = _study("s").trials
    assert [t.number for t in trials] == [0, 1, 2, 3, 4]
    assert {t.number: trial_record(t).config for t in trials[:3]} == first
    profiles = [r.profile for r in map(trial_record, trials) if r.profile]
    # Each exactly once, in order: the MCaaS profiles, then quantization alone in each mode the
    # space can choose (int8-static: TINY_SPACE has no other).
    assert profiles == [*PROFILES, "int8-static only"]
    # A third run with the same total has nothing left to do.
    assert _search(run_cli, "--trials", "5")[0] == 0
    assert len(_study("s").trials) == 5


@pytest.mark.slow
def test_rerun_with_other_settings_is_refused(demo_dir: Path, run_cli: RunCli) -> None:
    assert _search(run_cli, "--trials", "1", "--no-profiles")[0] == 0
    code, _, err = _search(run_cli, "--trials", "2", "--target", "latency")
    assert code == 2
    assert "was run for other settings" in err and "target" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, _, err = _search(run_cli, "--trials", "2", "--max-drop", "2")
    assert code == 2 and "constraint" in err
    assert len(_study("s").trials) == 1  # nothing was run or lost


@pytest.mark.slow
def test_interrupted_trial_is_marked_failed_and_replaced(demo_dir: Path, run_cli: RunCli) -> None:
    assert _search(run_cli, "--trials", "1", "--no-profiles")[0] == 0
    study = _study("s")
    ghost = study.ask()  # a trial whose worker was killed: RUNNING forever, pid gone
    TrialRecord(worker=f"{__import__('socket').gethostname()}:999999999").save(ghost)
    assert _search(run_cli, "--trials", "2", "--no-profiles")[0] == 0
    trials = _study("s").trials
    assert trials[ghost.number].state == TrialState.FAIL
    assert trial_record(trials[ghost.number]).reason.startswith("interrupted")
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 2  # the interrupted trial does not count towards --trials


@pytest.mark.slow
def test_failing_trial_is_recorded_and_the_study_goes_on(
    demo_dir: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stages.distill import Distill

    calls = {"n": 0}
    original = Distill.run

    def flaky(self: Distill, model: object, ctx: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected failure")
        return original(self, model, ctx)

    monkeypatch.setattr(Distill, "run", flaky)
    code, _, err = _search(run_cli, "--trials", "2", "--no-profiles")
    assert code == 0, err
    records = trial_records(_study("s"))
    assert records[0].state == "failed" and "injected failure" in (records[0].reason or "")
    assert records[1].state in ("complete", "pruned")


@pytest.mark.slow
def test_two_jobs_run_trials_in_two_processes(demo_dir: Path, run_cli: RunCli) -> None:
    code, _, err = _search(run_cli, "--trials", "4", "--jobs", "2", "--no-profiles")
    assert code == 0, err
    trials = _study("s").trials
    assert len(trials) == 4 and all(t.state != TrialState.RUNNING for t in trials)
    workers = {trial_record(t).worker for t in trials}
    assert len(workers) == 2


class _View:
    def __init__(self, front: list[Point], slack: float | None = None) -> None:
        self.front, self.slack = front, slack

    def feasible_front(self) -> list[Point]:
        return self.front

    def median_trial_seconds(self) -> float:
        return 10.0

    def untrained_slack(self) -> float | None:
        return self.slack


def _scoring(baseline: dict[str, float], **kw: object) -> Scoring:
    return Scoring(target="size", constraint=Constraint(max_drop=0.0), baseline=baseline, **kw)  # type: ignore[arg-type]


def test_hopeless_trial_stops_during_distillation(tiny_context, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    baseline = {"val_acc": 100.0, "test_acc": 100.0, "bytes": 1e6, "params": 1e5}
    config = PipelineConfig.from_flat({"prune.ratio": 0.5, "distill.epochs": 1.0})
    stop = EarlyStop(grace=0.25, slack_points=0.0)
    with pytest.raises(TrialStopped, match="cannot plausibly reach") as info:
        run_trial(config, tiny_context, _scoring(baseline, early_stop=stop), _View([]))
    assert info.value.saved_s > 0
    assert not (tiny_context.workdir / "model.onnx").exists()  # stopped before export
    # What it trained before the stop is its compute: a quarter of 1 epoch (8 steps of 32).
    [distill] = info.value.stages
    assert distill["stage"] == "distill" and distill["seconds"] > 0
    assert distill["metrics"]["samples_seen"] == 2 * 32


def test_dominated_config_is_skipped_before_training(tiny_context) -> None:  # type: ignore[no-untyped-def]
    baseline = {"val_acc": 90.0, "test_acc": 90.0, "bytes": 1e6, "params": 1e5}
    config = PipelineConfig.from_flat({"prune.ratio": 0.3, "distill.epochs": 1.0})
    front = [Point(0, accuracy=100.0, ratio=1e6)]
    with pytest.raises(TrialStopped, match="skipped before training"):
        run_trial(config, tiny_context, _scoring(baseline), _View(front))
    # A profile (stop_early=False) runs to the end however it compares.
    outcome = run_trial(config, tiny_context, _scoring(baseline), _View(front), stop_early=False)
    assert outcome.values[1] > 0


def test_a_latency_config_is_skipped_on_its_measured_untrained_ratio(tiny_context) -> None:  # type: ignore[no-untyped-def]
    # Latency has no estimate from params or MACs: only the untrained student, exported and timed
    # in ONNX Runtime before any training, can show that a feasible trial beats it.
    baseline = {"val_acc": 90.0, "test_acc": 90.0, "bytes": 1e6, "params": 1e5, "latency_ms": 1.0}
    config = PipelineConfig.from_flat({"prune.ratio": 0.3, "distill.epochs": 1.0})
    scoring = Scoring(target="latency", constraint=Constraint(max_drop=0.0), baseline=baseline, early_stop=None)
    with pytest.raises(TrialStopped, match="skipped before training: at most .* latency") as info:
        run_trial(config, tiny_context, scoring, _View([Point(4, accuracy=100.0, ratio=1e9)]))
    assert info.value.record is not None and info.value.record.skipped_by == 4
    measured = info.value.record.untrained_ratio
    assert measured is not None and f"measured {measured:.2f}x untrained" in str(info.value)
    assert f"at most {measured * 1.25:.2f}x latency" in str(info.value)  # the fixed 25 % slack
    assert not (tiny_context.workdir / "model.onnx").exists()  # nothing trained or exported
    # The slack the study's finished trials support replaces the fixed one.
    with pytest.raises(TrialStopped, match="skipped before training") as fitted:
        run_trial(config, tiny_context, scoring, _View([Point(4, accuracy=100.0, ratio=1e9)], slack=0.04))
    measured = fitted.value.record.untrained_ratio  # type: ignore[union-attr]
    assert f"at most {measured * 1.04:.2f}x latency" in str(fitted.value)


@pytest.mark.slow
@pytest.mark.parametrize("flat", [
    {"quantize.mode": "none"},
    {"quantize.mode": "int8-dynamic"},
    {"quantize.mode": "int8-static", "cluster.k": 16},
])
def test_the_untrained_size_bounds_the_trained_size(tiny_context, flat: dict[str, object]) -> None:  # type: ignore[no-untyped-def]
    # The skip rule's claim, checked on real files: the trained file is no smaller than the
    # untrained student's (to within the size slack), whatever training and clustering do. (It
    # came out 1.6-14 % larger here: the measured ratio is an upper bound, not an equality.)
    baseline = {"val_acc": 90.0, "test_acc": 90.0, "bytes": 1e6, "params": 1e5}
    config = PipelineConfig.from_flat({"prune.ratio": 0.3, "distill.epochs": 1.0, **flat})
    front = [Point(0, accuracy=0.0, ratio=1e-3)]  # a front to compare with, beating nothing
    outcome = run_trial(config, tiny_context, _scoring(baseline, early_stop=None), _View(front))
    measured = outcome.record.untrained_ratio
    assert measured is not None
    bound = untrained_ratio_bound("size", measured)
    assert bound is not None and outcome.values[1] <= bound


def test_a_split_too_small_for_the_bound_says_so_in_one_line_before_trial_0(
    demo_dir: Path, run_cli: RunCli, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --val-fraction 0.1 of digits' 1,437 training images: 144, whose interval at zero drop
    # reaches 1.34 pt. The search itself is replaced by a stand-in that only notes it started.
    from search.commands import run as run_command
    from search.errors import UserError

    def trial_0(*_args: object, **_kwargs: object) -> None:
        raise UserError("trial 0 would start here")

    monkeypatch.setattr(run_command, "run_study", trial_0)
    code, _, err = _search(run_cli, "--val-fraction", "0.1", "--max-drop", "1")
    assert code == 2 and err.rstrip().endswith("trial 0 would start here"), err
    [line] = [line for line in err.splitlines() if "cannot decide" in line]
    assert line == (
        "warning: the validation split (144 images) cannot decide a 1.00-point bound: a trial that "
        "agrees with the teacher on every image is vouched for only within 1.34 pt, so no trial can be "
        "recommended; use --val-fraction 0.136 (194 images), more data, or --max-drop 1.35"
    )
    # A bound the split can decide: no warning.
    code, _, err = _search(run_cli, "--val-fraction", "0.1", "--max-drop", "1.5")
    assert code == 2 and "cannot decide" not in err, err


@pytest.mark.slow
def test_search_json_lets_a_script_export_the_recommended_trial(demo_dir: Path, run_cli: RunCli) -> None:
    code, out, err = _search(run_cli, "--trials", "5", "--max-drop", "5", "--json")
    assert code == 0, err
    result = json.loads(out)  # JSON alone on stdout; the progress went to stderr
    assert result["study"] == "s" and result["target"] == "size" and result["interrupted"] is False
    assert sum(result["trials"].values()) == 5
    pick = result["recommended"]
    assert pick["feasible"] and pick["number"] in [t["number"] for t in result["front"]]
    assert Path(result["report"]).is_file()
    # "search, then export the recommended trial", with the command the JSON gives.
    argv = shlex.split(result["export"])
    assert argv[:2] == ["mcaas-search", "export"] and f"--trial {pick['number']}" in result["export"]
    code, out, err = run_cli(argv[1:])
    assert code == 0, err
    assert (demo_dir / f"s-t{pick['number']}.onnx").is_file()
