"""The Ray Tune backend: the same study format as the Optuna backend, on a local Ray.

Fast tests check the pieces that decide the record (params and distributions replayed from a
Ray config, profiles, storage paths) and the unreachable-address error; one slow test runs a real
four-trial search (the three profiles and one sampled) on a 2-CPU local Ray through the CLI and
reads the study back.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import InMemoryStorage
from optuna.trial import TrialState
from ray.tune.search import Searcher

from objectives import Constraint
from search.backends import SearchSettings
from search.backends import ray_tune as ray_driver
from search.errors import UserError
from search.study import StudyInfo, TrialRecord, open_storage, profiles_to_run, trial_record, trial_records
from search.workloads import WorkloadSpec
from spaces import (
    PROFILES,
    QUANT_ONLY,
    Choice,
    FloatRange,
    IntRange,
    SearchSpace,
    SpaceError,
    default_space,
    profile_params,
)
from tests.support import RunCli


def _optuna_record(space: SearchSpace, seed: int) -> optuna.trial.FrozenTrial:
    """What the Optuna backend records: ``space.suggest`` on a real Optuna trial."""
    study = optuna.create_study(
        directions=["maximize", "maximize"], sampler=optuna.samplers.RandomSampler(seed=seed)
    )
    trial = study.ask()
    space.suggest(trial)
    study.tell(trial, [1.0, 1.0])
    return study.trials[0]


@pytest.mark.parametrize("seed", range(8))
def test_distributions_match_what_an_optuna_trial_records(seed: int) -> None:
    space = default_space()  # conditional dimensions: which params exist depends on the values
    recorded = _optuna_record(space, seed)

    distributions = ray_driver.distributions_for(space, recorded.params)

    assert distributions == recorded.distributions
    assert list(distributions) == list(recorded.distributions)


def test_recording_trial_answers_from_params_and_builds_optuna_distributions() -> None:
    space = SearchSpace(
        {
            "prune.ratio": FloatRange(0.0, 0.9, step=0.1),
            "prune.method": Choice(("structured",)),
            "prune.steps": IntRange(1, 4),
            "quantize.mode": Choice(("none", "fp16")),
        }
    )
    params = {"prune.ratio": 0.5, "prune.method": "structured", "prune.steps": 3, "quantize.mode": "fp16"}
    recorder = ray_driver.RecordingTrial(params)

    config = space.suggest(recorder)

    assert config.prune.ratio == 0.5 and config.prune.steps == 3 and config.quantize.mode == "fp16"
    assert recorder.distributions["prune.ratio"] == FloatDistribution(0.0, 0.9, step=0.1)
    assert recorder.distributions["quantize.mode"] == CategoricalDistribution(("none", "fp16"))
    # The recorded trial is valid for Optuna: create_trial checks params against distributions.
    optuna.trial.create_trial(params=params, distributions=recorder.distributions, values=[1.0, 2.0])


def test_distributions_refuse_params_of_another_space() -> None:
    space = SearchSpace({"prune.ratio": FloatRange(0.0, 0.9)})
    with pytest.raises(SpaceError, match="prune.ratio"):
        ray_driver.distributions_for(space, {"quantize.mode": "fp16"})
    with pytest.raises(SpaceError, match="quantize.mode"):
        ray_driver.distributions_for(space, {"prune.ratio": 0.0, "quantize.mode": "fp16"})


def test_define_by_run_names_profile_trials_only() -> None:
    space = default_space()
    study = optuna.create_study(directions=["maximize", "maximize"])
    study.enqueue_trial(profile_params("balanced", space), user_attrs=TrialRecord(profile="balanced").to_attrs())
    search_space = ray_driver.DefineByRun(space)

    assert search_space(study.ask()) == {"profile": "balanced"}
    assert search_space(study.ask()) is None


def test_study_search_tells_outcomes_and_stops_starting_trials_at_the_deadline(tmp_path: Path) -> None:
    storage = InMemoryStorage()
    search = ray_driver.StudySearch(
        space=ray_driver.DefineByRun(SearchSpace({"prune.ratio": FloatRange(0.0, 0.9)})),
        metric=list(ray_driver.METRICS),
        mode=["max", "max"],
        sampler=optuna.samplers.RandomSampler(seed=0),
        storage=storage,
        study_name="s",
        deadline=time.time() + 3600,
    )
    for trial_id, result in (
        ("a", {"outcome": "pruned"}),
        ("b", {"outcome": "failed"}),
        ("c", {"outcome": "complete", "val_acc": 90.0, "ratio": 3.0}),
    ):
        assert set(search.suggest(trial_id)) == {"prune.ratio"}
        search.on_trial_complete(trial_id, result)
    trials = optuna.load_study(study_name="s", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.FAIL, TrialState.COMPLETE]
    assert trials[2].values == [90.0, 3.0]

    search.deadline = time.time() - 1
    assert search.suggest("d") == Searcher.FINISHED
    search.save(str(tmp_path / "searcher.pkl"))  # Tune checkpoints the searcher with plain pickle


def test_a_trial_must_fit_on_one_node(monkeypatch: pytest.MonkeyPatch) -> None:
    nodes = [
        {"Alive": True, "Resources": {"CPU": 8.0}},
        {"Alive": True, "Resources": {"CPU": 2.0, "GPU": 1.0}},
        {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}},
    ]
    import ray

    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    ray_driver.check_fits(8, 0)
    ray_driver.check_fits(2, 1)
    with pytest.raises(UserError, match="largest Ray node has 2 CPUs and 1 GPUs"):
        ray_driver.check_fits(4, 1)


def _study_with(tmp_path: Path, states: dict[str, TrialState]) -> tuple[SearchSettings, optuna.Study]:
    """A study holding one trial per profile name in ``states`` (no training)."""
    storage = str(tmp_path / "s.journal")
    space = SearchSpace({"prune.ratio": FloatRange(0.0, 0.9)})
    settings = SearchSettings(study="s", storage=storage, trials=4, space=space)
    study = optuna.create_study(
        study_name="s", storage=open_storage(storage, create=True), directions=["maximize", "maximize"]
    )
    StudyInfo(
        workload={"model": "demo"},
        target="size",
        constraint=Constraint(max_drop=1.0),
        baseline={"val_acc": 90.0, "test_acc": 90.0},
        baseline_onnx=str(tmp_path / "baseline.onnx"),
        artifacts_dir=str(tmp_path / "artifacts"),
    ).save(study)
    dist = {"prune.ratio": FloatDistribution(0.0, 0.9)}
    for name, state in states.items():
        if state == TrialState.WAITING:
            study.enqueue_trial({"prune.ratio": 0.3}, user_attrs=TrialRecord(profile=name).to_attrs())
            continue
        reason = "interrupted (Ctrl-C)" if state == TrialState.FAIL else None
        attrs = TrialRecord(profile=name, reason=reason).to_attrs()
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                params={"prune.ratio": 0.3},
                distributions=dist,
                values=[90.0, 2.0] if state == TrialState.COMPLETE else None,
                user_attrs=attrs,
            )
        )
    return settings, study


def test_profiles_only_queued_or_interrupted_run_again(tmp_path: Path) -> None:
    names = list(PROFILES)
    settings, study = _study_with(
        tmp_path, {names[0]: TrialState.COMPLETE, names[1]: TrialState.WAITING, names[2]: TrialState.FAIL}
    )
    assert profiles_to_run(study, settings.space, queued_count=False)[:2] == [names[1], names[2]]


def test_searcher_study_learns_from_finished_trials_and_queues_profiles(tmp_path: Path) -> None:
    settings, study = _study_with(
        tmp_path, {"balanced": TrialState.COMPLETE, "high-accuracy": TrialState.WAITING}
    )

    storage = ray_driver.searcher_storage(study, settings.space, ["high-accuracy"])

    searcher = optuna.load_study(study_name=ray_driver.SEARCHER_STUDY, storage=storage)
    finished = searcher.get_trials(states=(TrialState.COMPLETE,))
    waiting = searcher.get_trials(states=(TrialState.WAITING,))
    assert [t.values for t in finished] == [[90.0, 2.0]]
    assert [trial_record(t).profile for t in waiting] == ["high-accuracy"]


def test_searcher_skips_trials_whose_dimensions_clash_with_the_space() -> None:
    space = SearchSpace({"prune.ratio": FloatRange(0.0, 0.9), "quantize.mode": Choice(("none", "fp16"))})

    def trial(distributions: dict, params: dict) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(params=params, distributions=distributions, values=[1.0, 1.0])

    same = trial({"prune.ratio": FloatDistribution(0.0, 0.9)}, {"prune.ratio": 0.5})
    narrower = trial({"prune.ratio": FloatDistribution(0.2, 0.5)}, {"prune.ratio": 0.3})
    other_choices = trial(
        {"quantize.mode": CategoricalDistribution(("none", "int8-static"))}, {"quantize.mode": "none"}
    )
    other_kind = trial({"prune.ratio": CategoricalDistribution((0.0, 0.5))}, {"prune.ratio": 0.5})
    unknown = trial({"distill.lr": FloatDistribution(0.001, 0.1)}, {"distill.lr": 0.01})

    assert ray_driver.fits_space(same, space) and ray_driver.fits_space(narrower, space)
    assert not any(ray_driver.fits_space(t, space) for t in (other_choices, other_kind, unknown))


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert ray_driver.absolute_storage(None) == str(tmp_path / "studies" / "mcaas.journal")
    assert ray_driver.absolute_storage("sqlite:///x.db") == f"sqlite:///{tmp_path / 'x.db'}"
    assert ray_driver.absolute_storage("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert ray_driver.absolute_storage("postgresql://h/db") == "postgresql://h/db"
    spec = ray_driver.absolute_spec(
        WorkloadSpec(model="nets.py:make", weights=Path("w.pt"), dataset="cifar10", data_root=Path("d"))
    )
    assert spec.model == f"{tmp_path / 'nets.py'}:make"
    assert spec.weights == tmp_path / "w.pt" and spec.data_root == tmp_path / "d"
    assert ray_driver.absolute_spec(WorkloadSpec(model="resnet18")).model == "resnet18"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_address_is_one_line_user_error(tmp_path: Path) -> None:
    settings, _ = _study_with(tmp_path, {})
    address = f"127.0.0.1:{_closed_port()}"

    with pytest.raises(UserError) as caught:
        ray_driver.run(
            settings, WorkloadSpec(), address=address, cpus_per_trial=1, gpus_per_trial=0, deadline=None
        )

    message = str(caught.value)
    assert address in message and "\n" not in message
    with pytest.raises(UserError, match="expected host:port"):
        ray_driver.check_reachable("127.0.0.1:port")


# ---------------------------------------------------------------------------------------------
# A real search on a local Ray


TINY_SPACE = """
[space]
"prune.ratio" = { low = 0.1, high = 0.6 }
"prune.method" = "structured"
"prune.scope" = "uniform"
"prune.criterion" = "l1"
"distill.epochs" = 1.0
"quantize.mode" = ["none", "int8-dynamic"]
drop = ["prune.steps", "prune.round_to", "distill.temperature", "distill.alpha", "distill.lr", "cluster.k"]
profile_epochs = 1.0
"""


@pytest.mark.slow
def test_ray_search_writes_the_study_format(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    local_ray: None,
    run_cli: RunCli,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.toml").write_text(TINY_SPACE)
    argv = ["--backend", "ray", "--jobs", "2", "--study", "t", "--space", "tiny.toml"]
    argv += ["--device", "cpu", "--max-drop", "10", "--no-early-stop"]

    code, out, err = run_cli([*argv, "--trials", "4"])

    assert code == 0, err
    assert "t: 4 trials" in out and "report:" in out
    storage = open_storage(None, create=False)
    study = optuna.load_study(study_name="t", storage=storage)
    trials = study.get_trials()
    records = trial_records(study)
    # The profiles queued (WAITING) by create_or_resume became the profile trials: none is left.
    assert len(trials) == 4
    assert {r.state for r in records} <= {"complete", "pruned", "failed"}
    # The MCaaS profiles, then quantization alone (4 trials: one of those).
    named = [r.profile for r in records if r.profile]
    assert sorted(p for p in named if p in PROFILES) == sorted(PROFILES)
    assert len(named) == 4 and [p for p in named if p not in PROFILES][0] in QUANT_ONLY
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert complete, [r.reason for r in records]
    for t in complete:
        record = next(r for r in records if r.number == t.number)
        assert record.config and record.metrics["val_acc"] == t.values[0]
        assert set(t.constraints) == set(record.violations)  # Optuna sees our constraints
        assert Path(record.artifact).is_file() and Path(record.artifact).is_absolute()
        assert record.ray_trial and t.params and set(t.params) == set(t.distributions)
        assert record.seconds and record.seconds > 0
    # Optuna's front of a constrained study holds feasible trials only, and is empty only when
    # no trial is feasible: so Optuna read the constraints the Ray workers stored.
    feasible = {r.number for r in records if r.feasible}
    best = {t.number for t in study.best_trials}
    assert best <= feasible and bool(best) == bool(feasible)

    # Resuming with --address joins that cluster; an unreachable one is one line, exit 2.
    import ray

    ray.shutdown()
    code, _, err = run_cli([*argv, "--trials", "5", "--address", f"127.0.0.1:{_closed_port()}"])
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("mcaas-search: error: cannot reach the Ray cluster at '127.0.0.1:")
    assert len(study.get_trials()) == 4

