"""The backend contract: the registry, and ``run_study`` driving any ``Backend`` (a fake one
here: no training, no Ray)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import ClassVar

import optuna
import pytest

from objectives import Constraint
from search.backends import BACKENDS, SearchSettings, make_backend, run_study
from search.backends.local import OptunaBackend
from search.errors import UserError
from search.study import StudyInfo, open_storage
from search.workloads import Workload, WorkloadSpec
from spaces import FloatRange, SearchSpace, default_space
from stages import EXPORT_FORMATS
from tests.tiny_models import make_tiny_cnn, tiny_task_data

BASELINE = {"val_acc": 90.0, "test_acc": 89.0, "bytes": 1e6, "latency_ms": 1.0, "params": 1e5, "macs": 1e6}


def test_backends_are_named_in_one_registry_and_built_with_their_own_options() -> None:
    assert set(BACKENDS) == {"optuna", "ray"}
    options = {"address": None, "cpus_per_trial": 2.0, "gpus_per_trial": 0.0}
    assert isinstance(make_backend("optuna", options), OptunaBackend)  # takes none of them
    ray = make_backend("ray", options)
    assert (ray.name, ray.cpus_per_trial) == ("ray", 2.0)  # type: ignore[attr-defined]
    with pytest.raises(UserError, match="unknown backend 'dask'; choose one of optuna, ray"):
        make_backend("dask")
    with pytest.raises(UserError, match="--cpus-per-trial must be > 0"):
        make_backend("ray", {"cpus_per_trial": 0.0})


def test_a_compute_budget_is_refused_by_ray_before_it_starts() -> None:
    """Ray Tune starts its trials up front, so a budget in samples (the benchmark's, checked by
    the Optuna workers between trials) is refused there rather than ignored."""
    from search.backends.ray_tune import driver

    settings = SearchSettings(study="s", storage=None, trials=4, space=default_space(), max_samples=100)
    with pytest.raises(UserError, match="a compute budget .* optuna backend only"):
        driver.run(settings, WorkloadSpec(), address=None, cpus_per_trial=1.0, gpus_per_trial=0.0, deadline=None)
    with pytest.raises(UserError, match="max_samples must be >= 0"):
        dataclasses.replace(settings, max_samples=-1)


@dataclasses.dataclass
class FakeBackend:
    """Records what it was asked to run; ``fail_with`` raises from inside the run."""

    name: ClassVar[str] = "fake"
    calls: list[tuple[str, float | None]] = dataclasses.field(default_factory=list)
    fail_with: type[BaseException] | None = None

    def run(self, settings: SearchSettings, workload: Workload, *, deadline: float | None) -> None:
        self.calls.append((settings.study, deadline))
        if self.fail_with is not None:
            raise self.fail_with


@pytest.fixture
def workload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workload:
    monkeypatch.chdir(tmp_path)
    return Workload(WorkloadSpec(), make_tiny_cnn(), tiny_task_data(), "tiny", {"model": "tiny"})


def _run(workload: Workload, backend: FakeBackend, **kw: object) -> object:
    settings = SearchSettings(study="s", storage=None, trials=3, space=SearchSpace(), profiles=False)
    settings = dataclasses.replace(settings, **kw)  # type: ignore[arg-type]
    onnx = Path("teacher.onnx")
    if not onnx.exists():
        EXPORT_FORMATS["onnx"].writer(workload.teacher, workload.example_input, onnx)
    return run_study(settings, workload, "size", Constraint(max_drop=1.0), backend, baseline=(onnx, BASELINE))


def test_run_study_creates_the_study_then_hands_it_to_the_backend(workload: Workload) -> None:
    backend = FakeBackend()
    result = _run(workload, backend, timeout_s=60.0)
    assert not result.interrupted  # type: ignore[attr-defined]
    [(name, deadline)] = backend.calls
    assert name == "s" and deadline is not None and 50 < deadline - time.time() <= 60
    study = optuna.load_study(study_name="s", storage=open_storage(None, create=False))
    info = StudyInfo.load(study)
    assert info == result.info  # type: ignore[attr-defined]
    assert (info.target, info.baseline, info.constraint) == ("size", BASELINE, Constraint(max_drop=1.0))


def test_a_new_study_stores_the_teachers_analysis_and_searches_the_space_fitted_to_it(workload: Workload) -> None:
    backend = FakeBackend()
    seen: list[SearchSettings] = []
    backend.run = lambda settings, workload, deadline: seen.append(settings)  # type: ignore[method-assign]
    result = _run(workload, backend, space=default_space())
    analysis = result.info.analysis  # type: ignore[attr-defined]
    assert analysis["structural"] and analysis["blocks"] == []  # the tiny CNN has no residual block
    assert analysis["train_size"] == len(workload.data.train) and analysis["operators"] > 0
    # No removable block: the backend is handed a space without the depth dimension.
    [settings] = seen
    assert "depth.fraction" in default_space() and "depth.fraction" not in settings.space
    assert ["depth.fraction", "0.0 .. 1.0"] not in result.info.space  # type: ignore[attr-defined]


def test_ctrl_c_in_the_backend_ends_the_run_as_interrupted(workload: Workload) -> None:
    result = _run(workload, FakeBackend(fail_with=KeyboardInterrupt))
    assert result.interrupted  # type: ignore[attr-defined]


def test_a_study_run_for_another_goal_is_refused_before_the_backend_runs(workload: Workload) -> None:
    _run(workload, FakeBackend())
    backend = FakeBackend()
    settings = SearchSettings(study="s", storage=None, trials=3, space=SearchSpace(), profiles=False)
    with pytest.raises(UserError, match="study 's' was run for other settings .*target"):
        run_study(settings, workload, "latency", Constraint(max_drop=1.0), backend)
    assert backend.calls == []


def test_a_study_resumes_with_the_space_it_searched_and_refuses_another(
    workload: Workload, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The fitted space must not hang on this machine's speed: on a loaded machine the measured
    # epoch once cut the range and added distill.size_boost, a second difference in the message.
    monkeypatch.setattr("spaces._fit.MAX_TRIAL_TRAINING_S", 1e9)
    _run(workload, FakeBackend(), space=default_space())
    again = FakeBackend()
    _run(workload, again, space=default_space())
    assert again.calls == [("s", None)]
    # The same study with a space file that widened the distillation range since.
    wider = SearchSpace({**default_space().dimensions, "distill.epochs": FloatRange(0.5, 10.0, log=True)})
    refused = FakeBackend()
    with pytest.raises(UserError, match=r"study 's' searched another space \(distill\.epochs: stored .*, given '0\.5 \.\. 10\.0 log'\)"):
        _run(workload, refused, space=wider)
    assert refused.calls == []


def test_a_setting_added_to_the_defaults_since_stays_unsearched_in_an_older_study(workload: Workload) -> None:
    _run(workload, FakeBackend(), space=default_space())
    study = optuna.load_study(study_name="s", storage=open_storage(None, create=False))
    # As if distill.temperature had joined the default space after this study was created.
    rows = [row for row in study.user_attrs["space"] if row[0] != "distill.temperature"]
    study.set_user_attr("space", rows)
    seen: list[SearchSettings] = []
    backend = FakeBackend()
    backend.run = lambda settings, workload, deadline: seen.append(settings)  # type: ignore[method-assign]
    _run(workload, backend, space=default_space())
    [settings] = seen
    assert "distill.temperature" not in settings.space and "distill.alpha" in settings.space
    # A space file that sets it, though, asks for a space the study did not search.
    hot = SearchSpace({**default_space().dimensions, "distill.temperature": FloatRange(2.0, 8.0)})
    with pytest.raises(UserError, match="distill.temperature: stored 'not searched', given '2.0 .. 8.0 "):
        _run(workload, FakeBackend(), space=hot)


def test_a_setting_a_fitting_rule_adds_since_stays_unset_in_an_older_study(
    workload: Workload, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A teacher epoch slower than a trial may train: the fitted space holds distill.size_boost.
    monkeypatch.setattr("spaces._fit.MAX_TRIAL_TRAINING_S", 1e-6)
    seen: list[SearchSettings] = []
    backend = FakeBackend()
    backend.run = lambda settings, workload, deadline: seen.append(settings)  # type: ignore[method-assign]
    _run(workload, backend, space=default_space())
    assert "distill.size_boost" in seen[0].space
    # As if the study had been created before that rule: resumed without it, not refused.
    study = optuna.load_study(study_name="s", storage=open_storage(None, create=False))
    study.set_user_attr("space", [row for row in study.user_attrs["space"] if row[0] != "distill.size_boost"])
    _run(workload, backend, space=default_space())
    assert "distill.size_boost" not in seen[1].space and "distill.epochs" in seen[1].space
