"""Running a study: open it (measuring the teacher's baseline once, for a new study), hand its
remaining trials to a backend, and report how the run ended. The CLI and the benchmark call this."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import optuna

from objectives import Constraint
from search.backends.settings import DEFAULT_STRATEGY, STRATEGIES, SearchSettings
from search.errors import UserError
from search.study import (
    STUDIES_DIR,
    StudyInfo,
    check_resumable,
    create_or_resume,
    load_study,
    open_storage,
)
from search.study.artifacts import fetch_teacher, open_store, record_store, upload_teacher
from search.study.records import ARTIFACTS, BASELINE_ONNX
from search.trials.context import cached_analysis, make_context, measure_baseline_into
from search.trials.trial import first_rung_steps
from search.workloads import Analysis, Workload, WorkloadSpec, demo_cache_path, file_sha256
from spaces import SearchSpace, default_space, fit_space

if TYPE_CHECKING:
    from search.backends.backend import Backend

# A baseline measured elsewhere (the benchmark shares one between its studies): the teacher's
# exported fp32 file and its metrics.
Baseline = tuple[Path, dict[str, float]]
Status = Callable[[str], AbstractContextManager[object]]
Watch = Callable[[optuna.Study, StudyInfo], AbstractContextManager[object]]


@dataclasses.dataclass(frozen=True)
class StudyRun:
    """How one run of a study ended: the study, its stored record, the wall time, and whether
    Ctrl-C stopped it (the trials it interrupted are replaced when the same command reruns)."""

    study: optuna.Study
    info: StudyInfo
    seconds: float
    interrupted: bool


def _no_status(message: str) -> AbstractContextManager[object]:
    return contextlib.nullcontext()


def open_study(
    settings: SearchSettings,
    workload: Workload,
    target: str,
    constraint: Constraint,
    *,
    baseline: Baseline | None = None,
    status: Status = _no_status,
) -> tuple[optuna.Study, StudyInfo, SearchSettings]:
    """Create study ``settings.study`` or resume it, refusing one run for another workload,
    target or constraint before any work. A new study measures the teacher's exported fp32 file
    (unless ``baseline`` is given), which also caches the teacher's outputs for every worker, and
    analyses the teacher (``search.workloads.analysis``); both are stored with the study.

    Returns the study, its record, and ``settings`` with the space fitted to the analysis (what
    the workers must search).
    """
    stored = _stored_info(settings)
    if stored is not None:
        info = dataclasses.replace(stored, workload=workload.fingerprint, target=target, constraint=constraint)
        # Both before anything is written to the study.
        check_resumable(settings.study, stored, info)
        if settings.strategy not in (None, stored.strategy):
            raise UserError(
                f"study {settings.study!r} was run with --strategy {stored.strategy}, not "
                f"{settings.strategy}; use another --study name, or that strategy to resume it"
            )
        settings = dataclasses.replace(
            settings,
            strategy=stored.strategy,
            space=resumed_space(settings.study, settings.space, stored),
        )
        # Before the study is opened: its claim lock lives in its folder.
        info = rebuild_missing_folders(info, settings, workload, baseline=baseline)
    else:
        artifacts = STUDIES_DIR / settings.study
        ctx = make_context(workload, artifacts / "trials", threads=settings.threads, seed=settings.seed or 0)
        if baseline is None:
            with status("measuring the teacher's exported fp32 artifact (the baseline)"):
                ctx, metrics = measure_baseline_into(ctx, artifacts / "baseline")
            assert ctx.baseline_onnx is not None
            baseline = (ctx.baseline_onnx, metrics)
        with status("analysing the teacher: what prunes, which blocks can go, how long an epoch takes"):
            analysis = cached_analysis(workload, ctx, baseline[0])
        strategy = settings.strategy or DEFAULT_STRATEGY
        sized = fit_space(settings.space, analysis.facts, target=target)
        fitted = STRATEGIES[strategy].space(sized)
        settings = dataclasses.replace(settings, strategy=strategy, space=fitted)
        info = StudyInfo(
            workload=workload.fingerprint,
            target=target,
            constraint=constraint,
            baseline=baseline[1],
            baseline_onnx=str(baseline[0].resolve()),
            artifacts_dir=str(artifacts.resolve()),
            space=[list(row) for row in settings.space.describe()],
            analysis=analysis.to_dict(),
            strategy=strategy,
            first_rung=first_rung_steps(sized, int(workload.data.train.x.shape[0])),
        )
    study, info = create_or_resume(
        settings.study,
        settings.storage,
        info,
        sampler=settings.make_sampler(),
        profiles=settings.space if settings.profiles else None,
    )
    url = record_store(study, settings.artifacts)
    if url is not None and workload.spec.is_demo:
        upload_teacher(study, demo_cache_path(STUDIES_DIR, workload.spec), open_store(url))
    return study, info, settings


def join_with_study_teacher(spec: WorkloadSpec, study: str, storage: str | None) -> str | None:
    """Before a demo worker (no ``--weights``) loads its workload: when study ``study`` already
    exists with its teacher in an artifact store, put that teacher in this machine's demo cache
    (checked against the study's recorded hash), so the worker runs with it instead of training
    one of its own that the study would refuse. Returns the line saying so, or None when nothing
    was fetched (no such study, no stored teacher, another split, or the cache already holds it)."""
    if not spec.is_demo:
        return None
    try:  # create=False: a worker refused later (a bad --device) must leave no empty journal
        existing = load_study(study, open_storage(storage, create=False))
        stored = StudyInfo.load(existing)
    except UserError:
        return None
    want = stored.workload.get("weights_sha256")
    ran = WorkloadSpec.from_dict(stored.workload)
    if not want or not ran.is_demo or (ran.seed, ran.image_size) != (spec.seed, spec.image_size):
        return None  # not this worker's demo: check_resumable names the difference
    cache = demo_cache_path(STUDIES_DIR, ran)
    if cache.is_file() and file_sha256(cache) == want:
        return None
    if not fetch_teacher(existing, want, cache):
        return None
    return f"using the teacher of study {study!r} from the artifact store (sha256 {want[:12]})"


def rebuild_missing_folders(
    info: StudyInfo, settings: SearchSettings, workload: Workload, *, baseline: Baseline | None
) -> StudyInfo:
    """``info`` with a trial folder and a teacher file that exist here, recorded in the study.

    A journal holds absolute paths: resumed elsewhere (a fresh clone of a repository that commits
    it, another machine), its study folder is missing. Its new trials then go to this folder's
    ``studies/STUDY``, and the teacher's fp32 file (what latency ratios are measured against) is
    ``baseline``'s file or exported there again; the stored baseline metrics stay, so every ratio
    keeps its reference. Trials already recorded keep their paths (``show`` says a file is missing).
    """
    artifacts, onnx = Path(info.artifacts_dir), Path(info.baseline_onnx)
    if artifacts.is_dir() and onnx.is_file():
        return info
    if not artifacts.is_dir():
        artifacts = (STUDIES_DIR / settings.study).resolve()
    if not onnx.is_file():
        if baseline is not None and baseline[0].is_file():
            onnx = baseline[0]
        else:
            ctx = make_context(workload, artifacts / "trials", threads=settings.threads, seed=settings.seed or 0)
            ctx, _ = measure_baseline_into(ctx, artifacts / "baseline")
            assert ctx.baseline_onnx is not None
            onnx = ctx.baseline_onnx
    info = dataclasses.replace(info, artifacts_dir=str(artifacts), baseline_onnx=str(onnx.resolve()))
    study = load_study(settings.study, open_storage(settings.storage, create=True))
    study.set_user_attr(ARTIFACTS, info.artifacts_dir)
    study.set_user_attr(BASELINE_ONNX, info.baseline_onnx)
    return info


def resumed_space(name: str, space: SearchSpace, stored: StudyInfo, *, option: str = "--study name") -> SearchSpace:
    """``space`` fitted as study ``name`` was fitted when created (by its stored analysis, keeping
    every setting it searched then); refuses a space that differs from the one it searched (a
    space file edited since, or other --space): its earlier trials were asked other questions,
    and its report would show a space the new trials were not drawn from. ``option`` is what names the
    study on the command line, for the refusal."""
    if not stored.analysis:  # made before the pre-flight analysis: nothing to fit to
        return space
    facts = Analysis.from_dict(stored.analysis).facts
    searched = [row[0] for row in stored.space]
    fitted = STRATEGIES[stored.strategy].space(fit_space(space, facts, target=stored.target, keep=searched))
    if stored.space:
        # A setting added to the default space, or by a fitting rule, since the study was created
        # stays at its default in this study, as in its earlier trials (one the given space file
        # sets is a difference).
        defaults = default_space()
        added = [k for k in fitted if k not in searched and (k not in space or (k in defaults and space[k] == defaults[k]))]
        fitted = SearchSpace({k: v for k, v in fitted.dimensions.items() if k not in added}, profile_epochs=fitted.profile_epochs)
        why = space_difference(stored.space, fitted.describe())
        if why:
            raise UserError(
                f"study {name!r} searched another space ({why}); use another {option}, or "
                "the space it was created with to resume it"
            )
    return fitted


def space_difference(stored: Sequence[Sequence[str]], given: Sequence[Sequence[str]]) -> str | None:
    """The settings whose search range differs between two ``SearchSpace.describe()`` listings,
    as "key: stored ..., given ..." (None when they agree)."""
    before, after = dict((row[0], row[1]) for row in stored), dict((row[0], row[1]) for row in given)
    diffs = [
        f"{key}: stored {before.get(key, 'not searched')!r}, given {after.get(key, 'not searched')!r}"
        for key in [*before, *(key for key in after if key not in before)]
        if before.get(key) != after.get(key)
    ]
    return "; ".join(diffs) or None


def _stored_info(settings: SearchSettings) -> StudyInfo | None:
    try:
        return StudyInfo.load(load_study(settings.study, open_storage(settings.storage, create=True)))
    except UserError:  # no such study yet (or one not made by mcaas-search: create_or_resume says so)
        return None


def run_study(
    settings: SearchSettings,
    workload: Workload,
    target: str,
    constraint: Constraint,
    backend: Backend,
    *,
    baseline: Baseline | None = None,
    deadline: float | None = None,
    status: Status = _no_status,
    watch: Watch | None = None,
) -> StudyRun:
    """Open the study and run its remaining trials on ``backend`` until it holds
    ``settings.trials`` trials, or until ``deadline`` (epoch seconds; default: now +
    ``settings.timeout_s``). ``watch(study, info)`` is entered around the run (a progress
    display). Ctrl-C ends the run early: the result says so instead of raising."""
    study, info, settings = open_study(settings, workload, target, constraint, baseline=baseline, status=status)
    if deadline is None and settings.timeout_s:
        deadline = time.time() + settings.timeout_s
    started = time.time()
    interrupted = False
    try:
        with watch(study, info) if watch is not None else contextlib.nullcontext():
            backend.run(settings, workload, deadline=deadline)
    except KeyboardInterrupt:
        interrupted = True
    return StudyRun(study, info, time.time() - started, interrupted)
