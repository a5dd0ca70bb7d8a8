"""One search as asked for (``SearchRequest``): the workload, the goal, how its trials run and
where they are kept. The CLI (``mcaas-search run``), the service (a ``POST /api/studies`` job)
and the benchmark each build one, and it is validated here, with one set of limits, so the same
bad request is refused with the same message wherever it comes from.

Each check raises a ``RequestError`` naming the field: the CLI's flags call the same checks as
they parse (``--trials`` -> ``check_count("trials", ...)``), the service answers 400 naming the
JSON key.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from objectives import DEFAULT_MAX_DROP, DROP_TYPES, TARGETS, Constraint
from search.backends import BACKENDS, SAMPLERS, STRATEGIES, Backend, SearchSettings, make_backend
from search.errors import UserError
from search.study import STUDIES_DIR
from search.workloads import MAX_SEED, Workload, WorkloadSpec, workload_space
from spaces import SearchSpace, load_space

# Upper bounds that catch typos (and keep --jobs from forking thousands of processes).
MAX_TRIALS, MAX_JOBS, MAX_THREADS = 100_000, 1024, 1024
MAX_TIMEOUT_S = 30 * 86400
# A study name becomes a folder under studies/ and a part of the service's URLs: no path
# separators, no hidden names (.cache), no "..".
STUDY_NAME = re.compile(r"^(?!.*\.\.)[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
# The Ray options a request may carry (see ``BACKENDS``).
BACKEND_OPTIONS = ("address", "cpus_per_trial", "gpus_per_trial")


class RequestError(UserError):
    """A search request's ``field`` is wrong; ``message`` says how (without the field name, so
    the CLI can name its flag and the service its JSON key)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_count(field: str, value: object, high: int) -> int:
    """``value`` as a count in [1, ``high``] (trials, jobs, threads)."""
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
        raise RequestError(field, f"expected a positive integer up to {high}, got {value!r}")
    return value


def check_study_name(value: object, field: str = "study") -> str:
    """``value`` as a study name: it becomes a folder under ``studies/``."""
    if not isinstance(value, str) or not STUDY_NAME.match(value):
        raise RequestError(
            field,
            f"expected a name of letters, digits, '_', '-' and '.' (a folder under {STUDIES_DIR}/, "
            f"not starting with '.' or '-', no '..'), got {value!r}",
        )
    return value


def check_max_drop(value: object) -> float:
    """The accuracy drop allowed, in points (or percent): [0, 100)."""
    if not _is_number(value):
        raise RequestError("max_drop", f"expected a number of points, got {value!r}")
    if not 0 <= value < 100:  # type: ignore[operator]
        raise RequestError("max_drop", f"must be >= 0 and < 100, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_timeout(value: object) -> float:
    """Seconds after which no trial is started: (0, 30 days]."""
    if not _is_number(value) or not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):  # type: ignore[arg-type]
        raise RequestError(
            "timeout", f"expected a positive duration up to {MAX_TIMEOUT_S / 86400:g} days, got {value!r}"
        )
    return float(value)  # type: ignore[arg-type]


def check_seed(value: object) -> int:
    """A seed numpy and scikit-learn accept: an integer in [0, 2**32 - 1]."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SEED:
        raise RequestError("seed", f"must lie in [0, {MAX_SEED}], but got {value!r}")
    return value


def check_choice(field: str, value: object, choices: Mapping[str, Any] | tuple[str, ...]) -> str:
    """``value`` as one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise RequestError(field, f"unknown {field} {value!r}; choose one of {', '.join(choices)}")
    return value


@dataclasses.dataclass(frozen=True)
class SearchRequest:
    """A checked search request: what to compress (``spec``), for what (``target`` within
    ``constraint``), how (trials, parallelism, sampler, space file) and where (study, storage,
    artifact store, backend). ``study`` None means named from the workload and target;
    ``threads`` None means the cores split between the jobs (``trial_threads``). The seed is the
    workload's (``spec.seed``): it seeds the split, the training and the sampler."""

    spec: WorkloadSpec
    target: str = "size"
    constraint: Constraint = Constraint(max_drop=DEFAULT_MAX_DROP)
    study: str | None = None
    trials: int = 40
    timeout: float | None = None
    jobs: int = 1
    threads: int | None = None
    sampler: str = "tpe"
    # A name in STRATEGIES; None: the study's own (the default for a new study).
    strategy: str | None = None
    profiles: bool = True
    early_stop: bool = True
    skip_dominated: bool = True
    space_file: Path | None = None
    storage: str | None = None
    artifacts: str | None = None
    backend: str = "optuna"
    backend_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    device: str = "auto"

    def __post_init__(self) -> None:
        check_choice("target", self.target, TARGETS)
        check_max_drop(self.constraint.max_drop)
        check_count("trials", self.trials, MAX_TRIALS)
        if self.timeout is not None:
            check_timeout(self.timeout)
        check_count("jobs", self.jobs, MAX_JOBS)
        if self.threads is not None:
            check_count("threads", self.threads, MAX_THREADS)
        if self.study is not None:
            check_study_name(self.study)
        check_seed(self.spec.seed)
        check_choice("sampler", self.sampler, SAMPLERS)
        check_choice("backend", self.backend, BACKENDS)
        if self.strategy is not None:
            check_choice("strategy", self.strategy, STRATEGIES)
        unknown = sorted(set(self.backend_options) - set(BACKEND_OPTIONS))
        if unknown:
            raise RequestError("backend_options", f"unknown {unknown}; options: {', '.join(BACKEND_OPTIONS)}")

    def space(self) -> SearchSpace:
        """The workload's base space, narrowed by ``space_file`` (refused when that is no file)."""
        base = workload_space(self.spec)
        if self.space_file is None:
            return base
        if not self.space_file.is_file():
            what = "is a folder" if self.space_file.is_dir() else "does not exist"
            raise UserError(f"space file {str(self.space_file)!r} {what}")
        return load_space(self.space_file, base=base)

    def make_backend(self) -> Backend:
        """The chosen backend with its options (Ray's address and per-trial resources)."""
        return make_backend(self.backend, self.backend_options)

    def study_name(self, workload: Workload) -> str:
        """``study``, or a name made of the workload's and the target's."""
        if self.study is not None:
            return self.study
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{workload.name}-{self.target}").strip("-")

    def settings(self, study: str, space: SearchSpace, threads: int) -> SearchSettings:
        """How a backend runs the trials of ``study`` over ``space`` with ``threads`` each."""
        return SearchSettings(
            study=study,
            storage=self.storage,
            artifacts=self.artifacts,
            trials=self.trials,
            space=space,
            sampler=self.sampler,
            strategy=self.strategy,
            seed=self.spec.seed,
            timeout_s=self.timeout,
            jobs=self.jobs,
            threads=threads,
            profiles=self.profiles,
            early_stop=self.early_stop,
            skip_dominated=self.skip_dominated,
            device=self.device,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields, as ``from_dict`` reads them back."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["spec"] = self.spec.to_dict()
        out["constraint"] = self.constraint.to_dict()
        out["space_file"] = str(self.space_file) if self.space_file is not None else None
        out["backend_options"] = dict(self.backend_options)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchRequest:
        """The request ``to_dict`` wrote, checked again (a hand-edited file is input too)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise RequestError(str(unknown[0]), f"unknown field; fields: {', '.join(sorted(names))}")
        values = dict(data)
        values["spec"] = WorkloadSpec.from_dict(data["spec"])
        if "constraint" in data:
            check_max_drop(data["constraint"].get("max_drop"))
            values["constraint"] = Constraint.from_dict(data["constraint"])
        if data.get("space_file") is not None:
            values["space_file"] = Path(data["space_file"])
        return cls(**values)


def constraint_of(
    max_drop: object,
    drop_type: str = "absolute",
    max_size: float | None = None,
    max_latency: float | None = None,
) -> Constraint:
    """The accuracy and hard bounds of a request, ``max_drop`` checked as ``check_max_drop``
    checks it (the ``Constraint``'s own checks come after)."""
    return Constraint(
        max_drop=check_max_drop(max_drop),
        drop_type=check_choice("drop_type", drop_type, DROP_TYPES),
        max_size=max_size,
        max_latency=max_latency,
    )


__all__ = [
    "MAX_JOBS",
    "MAX_THREADS",
    "MAX_TIMEOUT_S",
    "MAX_TRIALS",
    "STUDY_NAME",
    "RequestError",
    "SearchRequest",
    "check_choice",
    "check_count",
    "check_max_drop",
    "check_seed",
    "check_study_name",
    "check_timeout",
    "constraint_of",
]
