"""The Ray Tune backend: the study's trials scheduled by Ray Tune, locally or on a cluster.

Ray Tune's ``OptunaSearch`` asks the same define-by-run space with the study's sampler; each
trial runs in a Ray worker process and records itself in the study storage the way the Optuna
backend does (the same params, distributions, attributes and constraints, a RUNNING trial while
it runs), so ``report``, ``show``, ``export`` and the live progress work whichever backend ran.

This is the only module that imports ray: its API moves, and it stays behind this one file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
import ray
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
    check_distribution_compatibility,
)
from optuna.storages import BaseStorage, InMemoryStorage
from optuna.trial import FrozenTrial, TrialState
from ray import tune
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search.trials.context import default_threads
from search.errors import UserError, first_line
from search.backends.local import (
    INTERRUPTED,
    SearchSettings,
    WorkerSetup,
    counted,
    run_and_record,
    was_interrupted,
    worker_id,
    worker_setup,
)
from search.study.storage import STUDIES_DIR, StudyInfo, open_storage, storage_url
from search.workloads.models import ModelFile
from search.workloads.workload import Workload, WorkloadSpec, load_workload, pick_device
from spaces import PROFILES, SearchSpace, SpaceError, profile_params
from stages.config import PipelineConfig

METRICS = ("val_acc", "ratio")
OUTCOME = "outcome"
"""Result key a Ray trial reports besides METRICS: complete, pruned or failed."""
PROFILE_KEY = "profile"
"""Key the define-by-run function adds to a Ray trial's config to name the profile it runs."""
RUN_ATTR, RAY_TRIAL_ATTR = "ray_run", "ray_trial"
CONNECT_TIMEOUT_S = 3.0
DEFAULT_GCS_PORT = 6379

# Ray and Tune read these when a run starts: no progress tables (our LiveProgress reads the
# study), no per-trial CSV/JSON/TensorBoard files, and
# Ctrl-C raises KeyboardInterrupt at once instead of Tune's stop-and-checkpoint dance.
QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    # A pruned or failed trial reports its outcome without objective values (see StudySearch).
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
}


class RecordingTrial:
    """Answers ``suggest_*`` from given params and records each one's Optuna distribution.

    Replaying ``space.suggest`` on it gives a Ray trial the params and distributions an Optuna
    trial of the same config records, so both backends write the same study format.
    """

    def __init__(self, params: Mapping[str, Any], user_attrs: Mapping[str, Any] | None = None) -> None:
        self.params = dict(params)
        self.user_attrs: dict[str, Any] = dict(user_attrs or {})
        self.distributions: dict[str, BaseDistribution] = {}

    def _answer(self, name: str, distribution: BaseDistribution) -> Any:
        if name not in self.params:
            raise SpaceError(
                f"the trial has no parameter {name!r}; its params: {', '.join(self.params) or 'none'}."
            )
        self.distributions[name] = distribution
        return self.params[name]

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return self._answer(name, FloatDistribution(low, high, log=log, step=step))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._answer(name, IntDistribution(low, high, log=log, step=step))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._answer(name, CategoricalDistribution(choices))


def distributions_for(space: SearchSpace, params: Mapping[str, Any]) -> dict[str, BaseDistribution]:
    """The distributions ``space.suggest`` asks for ``params``, in ask order.

    Raises SpaceError when ``params`` miss one the space asks or hold one it does not ask.
    """
    recorder = RecordingTrial(params)
    space.suggest(recorder)
    extra = sorted(set(params) - set(recorder.distributions))
    if extra:
        raise SpaceError(f"this space does not ask {', '.join(map(repr, extra))} for this trial.")
    return recorder.distributions


@dataclasses.dataclass(frozen=True)
class DefineByRun:
    """The ``space`` for ``OptunaSearch``: asks the study's space, and names a profile trial in
    the trial's config so the worker records it as that profile."""

    space: SearchSpace

    def __call__(self, trial: Any) -> dict[str, Any] | None:
        self.space.suggest(trial)
        profile = trial.user_attrs.get(PROFILE_KEY)
        return {PROFILE_KEY: profile} if profile else None


class StudySearch(OptunaSearch):
    """``OptunaSearch`` that starts no trial after ``deadline`` (epoch seconds; running ones
    finish, as ``--timeout`` promises) and tells its sampler a pruned trial as pruned and a failed
    one as failed, as the Optuna backend does (plain OptunaSearch would tell them complete, and fail).
    """

    def __init__(self, *args: Any, deadline: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.deadline = deadline

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.deadline is not None and time.time() >= self.deadline:
            return Searcher.FINISHED
        return super().suggest(trial_id)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        outcome = (result or {}).get(OUTCOME)
        if outcome in ("pruned", "failed"):
            result, error = None, error or outcome == "failed"
        super().on_trial_complete(trial_id, result=result, error=error)


@dataclasses.dataclass(frozen=True)
class _Job:
    """What a Ray worker needs to run trials of one search (absolute paths: workers do not share
    the driver's working directory)."""

    settings: SearchSettings
    spec: WorkloadSpec
    studies_dir: Path
    run_id: str
    gpus_per_trial: float


# ---------------------------------------------------------------------------------------------
# The driver


def run(
    settings: SearchSettings,
    spec: WorkloadSpec,
    *,
    address: str | None,
    cpus_per_trial: float,
    gpus_per_trial: float,
    deadline: float | None,
) -> None:
    """Run the study's remaining trials on Ray Tune (the study must exist: ``create_or_resume``).

    Starts a local Ray unless ``address`` names a cluster to join (or Ray is already running in
    this process, which is then used and left running). Returns when the study holds
    ``settings.trials`` counted trials or ``deadline`` (epoch seconds) passes; Ctrl-C raises
    KeyboardInterrupt after Ray stopped, with the unfinished trials marked interrupted.
    """
    if cpus_per_trial <= 0 or gpus_per_trial < 0:
        raise UserError(
            f"--cpus-per-trial must be > 0 and --gpus-per-trial >= 0, but got "
            f"({cpus_per_trial=}, {gpus_per_trial=})"
        )
    settings = dataclasses.replace(settings, storage=absolute_storage(settings.storage))
    storage = open_storage(settings.storage, create=False)
    study = optuna.load_study(
        study_name=settings.study, storage=storage, sampler=optuna.samplers.RandomSampler()
    )
    info = StudyInfo.load(study)
    remaining = settings.trials - counted(study)
    if remaining <= 0 or (deadline is not None and time.time() >= deadline):
        return
    job = _Job(
        settings=settings,
        spec=absolute_spec(spec),
        studies_dir=STUDIES_DIR.resolve(),
        run_id=uuid.uuid4().hex[:12],
        gpus_per_trial=gpus_per_trial,
    )
    profiles = pending_profiles(study) if settings.profiles else []
    try:
        with _quiet_env(), _connected(address):
            check_fits(cpus_per_trial, gpus_per_trial)
            _fit(job, study, info, profiles, remaining, deadline, cpus_per_trial, gpus_per_trial)
    finally:
        # After Ray stopped, so no worker finishes a trial this marks.
        _fail_unfinished(study, storage, job.run_id)


def _fit(
    job: _Job,
    study: optuna.Study,
    info: StudyInfo,
    profiles: list[str],
    remaining: int,
    deadline: float | None,
    cpus_per_trial: float,
    gpus_per_trial: float,
) -> None:
    settings = job.settings
    with _optuna_quiet():
        searcher = StudySearch(
            space=DefineByRun(settings.space),
            metric=list(METRICS),
            mode=["max", "max"],
            # Offset by the trials so far: a resumed search draws new values, reproducibly.
            sampler=settings.make_sampler(len(study.get_trials(deepcopy=False))),
            storage=searcher_storage(study, settings.space, profiles),
            study_name=_SEARCHER_STUDY,
            deadline=deadline,
        )
    trainable = tune.with_resources(
        tune.with_parameters(_ray_trial, job=job), {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=remaining,
            max_concurrent_trials=settings.jobs,
            reuse_actors=True,  # a worker process loads the workload once and runs many trials
            trial_dirname_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            storage_path=str(Path(info.artifacts_dir, "ray").resolve()),
            name=f"{settings.study}-{job.run_id}",
            verbose=0,
            log_to_file=False,
        ),
    )
    ray_logger = logging.getLogger("ray")
    level = ray_logger.level
    # Also quiet when Ray was started by someone else: Tune logs, for one, that it found no
    # result files (we turned them off) when it gathers the results.
    ray_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # TPE over a long study can take over a second to ask; Ray warns about that as if
            # the define-by-run function trained a model.
            warnings.filterwarnings("ignore", message="Define-by-run function passed in the `space`")
            tuner.fit()
    finally:
        ray_logger.setLevel(level)


def _trial_dirname(trial: Any) -> str:
    return str(trial.trial_id)


def absolute_storage(url: str | None) -> str:
    """The storage URL with a relative journal or SQLite path made absolute (Ray workers run in
    other directories); other URLs unchanged."""
    url = storage_url(url)
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        return url if path.startswith("/") else f"sqlite:///{Path(path).resolve()}"
    if "://" in url:
        return url
    return str(Path(url.removeprefix("journal:")).resolve())


def absolute_spec(spec: WorkloadSpec) -> WorkloadSpec:
    """``spec`` with its file paths (weights, data root, a model file) made absolute."""
    ref = ModelFile.parse(spec.model) if spec.model is not None else None
    model = ref.absolute() if ref is not None else spec.model
    return dataclasses.replace(
        spec,
        model=model,
        weights=spec.weights.expanduser().resolve() if spec.weights is not None else None,
        data_root=spec.data_root.expanduser().resolve() if spec.data_root is not None else None,
    )


def pending_profiles(study: optuna.Study) -> list[str]:
    """The profiles this run must evaluate: those without a trial that ran or runs (a profile
    only queued, WAITING, still needs running; an interrupted one runs again)."""
    present = {
        t.user_attrs.get(PROFILE_KEY)
        for t in study.get_trials(deepcopy=False)
        if t.state != TrialState.WAITING and not was_interrupted(t)
    }
    return [name for name in PROFILES if name not in present]


_SEARCHER_STUDY = "mcaas-ray-searcher"


def searcher_storage(study: optuna.Study, space: SearchSpace, profiles: Sequence[str]) -> BaseStorage:
    """The in-memory study ``OptunaSearch`` asks: the study's finished trials (so a resumed
    search learns from them) and the ``profiles`` queued first, each named in its user attrs.

    Profiles are queued here rather than through ``points_to_evaluate`` because the name must
    reach ``space.suggest`` (a profile's config is exact even where its params are partial).
    Trials run with a space file whose dimensions clash with ``space`` are left out: Optuna
    would refuse to sample ``space`` beside them.
    """
    storage = InMemoryStorage()
    with _optuna_quiet():
        searcher = optuna.create_study(
            storage=storage, study_name=_SEARCHER_STUDY, directions=["maximize", "maximize"]
        )
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    searcher.add_trials([t for t in finished if fits_space(t, space)])
    for name in profiles:
        searcher.enqueue_trial(profile_params(name, space), user_attrs={PROFILE_KEY: name})
    return storage


def fits_space(trial: FrozenTrial, space: SearchSpace) -> bool:
    """Whether every param of ``trial`` is one ``space`` asks, with a distribution Optuna takes
    as the same dimension (ranges may differ; choices and kinds may not)."""
    for name, recorded in trial.distributions.items():
        try:
            dimension = space.param_dimension(name)
        except SpaceError:
            return False
        recorder = RecordingTrial({name: trial.params[name]})
        dimension.suggest(recorder, name)
        try:
            check_distribution_compatibility(recorded, recorder.distributions[name])
        except ValueError:
            return False
    return True


@contextlib.contextmanager
def _optuna_quiet() -> Iterator[None]:
    """No "study created" lines for the searcher's private in-memory study."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


@contextlib.contextmanager
def _quiet_env() -> Iterator[None]:
    """Set QUIET_ENV (unless the user set a variable) for the run, then restore the environment."""
    saved = {key: os.environ.get(key) for key in QUIET_ENV}
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _connected(address: str | None) -> Iterator[None]:
    """Ray for the run: the one already initialised in this process (left running), else a
    local instance or the cluster at ``address`` (shut down / disconnected afterwards)."""
    if ray.is_initialized():
        yield
        return
    options: dict[str, Any] = {
        "log_to_driver": False,
        "configure_logging": True,
        "logging_level": logging.ERROR,
        "runtime_env": worker_runtime_env(),
    }
    if address is None:
        ray.init(num_cpus=default_threads(1), include_dashboard=False, **options)
    else:
        check_reachable(address)
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise UserError(f"cannot join the Ray cluster at {address!r}: {first_line(exc)}") from None
    try:
        yield
    finally:
        ray.shutdown()


def worker_runtime_env() -> dict[str, Any]:
    """Ray's ``runtime_env`` for the workers: a PYTHONPATH that finds this package when it runs
    from a source checkout (relative entries made absolute: workers run in other directories)."""
    root = str(Path(__file__).resolve().parent.parent)
    entries = [str(Path(p).resolve()) for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(dict.fromkeys([root, *entries]))}}


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise UserError unless ``address`` (``host[:port]`` or ``ray://host:port``) accepts a
    connection within ``timeout`` seconds: Ray itself retries an unreachable cluster for minutes.

    ``auto`` and ``local`` are Ray's own lookups and fail fast on their own.
    """
    if address in ("auto", "local"):
        return
    target = address.removeprefix("ray://")
    host, sep, port_text = target.rpartition(":")
    if not sep:
        host, port_text = target, str(DEFAULT_GCS_PORT)
    if not host or not port_text.isdigit():
        raise UserError(f"bad --address {address!r}; expected host:port, ray://host:port, auto or local")
    try:
        with socket.create_connection((host.strip("[]"), int(port_text)), timeout=timeout):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise UserError(
            f"cannot reach the Ray cluster at {address!r} ({why}); start one with `ray start --head` "
            "or pass the address it printed"
        ) from None


def check_fits(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Raise UserError unless one trial's CPUs and GPUs fit on a node of the Ray cluster (else
    Tune would wait for them forever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= cpus_per_trial and n.get("GPU", 0) >= gpus_per_trial for n in nodes):
        return
    largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
    raise UserError(
        f"a trial needs {cpus_per_trial:g} CPUs and {gpus_per_trial:g} GPUs, but the largest Ray node "
        f"has {largest.get('CPU', 0):g} CPUs and {largest.get('GPU', 0):g} GPUs; "
        "lower --cpus-per-trial / --gpus-per-trial"
    )


def _fail_unfinished(study: optuna.Study, storage: BaseStorage, run_id: str) -> None:
    """Mark this run's trials still RUNNING (their Ray trial was stopped or its worker died) as
    interrupted: they are replaced on the next run, as in the Optuna backend."""
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get(RUN_ATTR) != run_id:
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(
            trial_id, "reason", f"{INTERRUPTED} (its Ray trial stopped without a result)"
        )
        storage.set_trial_state_values(trial_id, TrialState.FAIL)


# ---------------------------------------------------------------------------------------------
# The trial (runs in Ray worker processes)


@dataclasses.dataclass
class _Worker:
    """What a worker process builds once and reuses for every trial it runs."""

    storage: BaseStorage
    study_id: int
    setup: WorkerSetup

    @property
    def study(self) -> optuna.Study:
        return self.setup.study


_WORKLOADS: dict[tuple[WorkloadSpec, str], Workload] = {}
_WORKERS: dict[_Job, _Worker] = {}


def _trial_device(job: _Job) -> str:
    # With no GPU reserved, "auto" must not put the trial on a GPU Ray handed to another trial.
    if job.settings.device == "auto":
        return "cuda" if job.gpus_per_trial > 0 and ray.get_gpu_ids() else "cpu"
    return job.settings.device


def _worker(job: _Job) -> _Worker:
    if job in _WORKERS:
        return _WORKERS[job]
    import torch

    settings = job.settings
    torch.set_num_threads(settings.threads)
    device = _trial_device(job)
    key = (job.spec, device)
    if key not in _WORKLOADS:
        _WORKLOADS[key] = load_workload(
            job.spec, device=pick_device(device), studies_dir=job.studies_dir, progress=False
        )
    storage = open_storage(settings.storage, create=False)
    study = optuna.load_study(
        study_name=settings.study, storage=storage, sampler=optuna.samplers.RandomSampler()
    )
    worker = _Worker(
        storage=storage,
        study_id=storage.get_study_id_from_name(settings.study),
        setup=worker_setup(settings, _WORKLOADS[key], study, cache_dir=job.studies_dir / ".cache"),
    )
    _WORKERS[job] = worker
    return worker


def _ray_trial(config: dict[str, Any], job: _Job) -> None:
    """One Ray trial: open a study trial, run the pipeline for ``config``, record the outcome,
    and report the objective values to Ray's searcher (complete trials only)."""
    profile = config.get(PROFILE_KEY)
    params = {key: value for key, value in config.items() if key != PROFILE_KEY}
    worker = _worker(job)
    trial = _open_trial(worker, profile)
    trial.set_user_attr("worker", worker_id())
    trial.set_user_attr(RUN_ATTR, job.run_id)
    trial.set_user_attr(RAY_TRIAL_ATTR, tune.get_context().get_trial_id())

    def make_config() -> PipelineConfig:
        _set_params(worker, trial, job.settings.space, params)
        return job.settings.space.config_from_params(params, profile=profile)

    state, outcome = run_and_record(trial, worker.setup, make_config, profile=profile)
    if outcome is None:
        tune.report({OUTCOME: state})
        return
    tune.report({OUTCOME: "complete", **dict(zip(METRICS, outcome.values))})


def _open_trial(worker: _Worker, profile: str | None) -> optuna.Trial:
    """A RUNNING trial in the study for this Ray trial: the profile's queued (WAITING) trial when
    there is one, claimed as Optuna's own ``ask`` claims it, else a new trial."""
    storage = worker.storage
    if profile is not None:
        for t in worker.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if t.user_attrs.get(PROFILE_KEY) != profile:
                continue
            trial_id = storage.get_trial_id_from_study_id_trial_number(worker.study_id, t.number)
            if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                return optuna.Trial(worker.study, trial_id)
    trial = optuna.Trial(worker.study, storage.create_new_trial(worker.study_id))
    if profile is not None:
        trial.set_user_attr(PROFILE_KEY, profile)
    return trial


def _set_params(worker: _Worker, trial: optuna.Trial, space: SearchSpace, params: Mapping[str, Any]) -> None:
    """Record ``params`` with the distributions an Optuna trial of this space records."""
    trial_id = worker.storage.get_trial_id_from_study_id_trial_number(worker.study_id, trial.number)
    for name, distribution in distributions_for(space, params).items():
        value = params[name]
        worker.storage.set_trial_param(trial_id, name, distribution.to_internal_repr(value), distribution)
