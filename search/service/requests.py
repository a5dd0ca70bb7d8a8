"""Job requests: a ``POST /api/studies`` body checked into a ``JobRequest`` (the search it asks
for, checked as ``SearchRequest`` checks every request, and what the client named), and that
request as ``request.json`` holds it. The jobs on disk and their scheduler are ``jobs``."""

from __future__ import annotations

import dataclasses
import datetime
import json
import re
import tempfile
from pathlib import Path
from typing import Any

from objectives import DEFAULT_MAX_DROP
from search.request import RequestError, SearchRequest, constraint_of
from search.service.config import ServerConfig
from search.service.errors import ApiError
from search.service.uploads import DEMO, check_name, load_model, workload_spec
from search.workloads import WorkloadSpec, workload_space
from spaces import load_space
from stages.errors import ConfigError

# A job's space file (TOML), as `--space FILE` takes it, in its folder.
SPACE_FILE = "space.toml"
FIELDS = ("model", "dataset", "target", "max_drop", "trials", "timeout", "space", "study", "seed")


@dataclasses.dataclass(frozen=True)
class JobRequest:
    """A checked ``POST /api/studies`` body: the search it asks for (``search``, run in the
    server's storage with the job's share of the cores), and what the client named."""

    search: SearchRequest
    model: str
    dataset: str
    space: str | None  # the text of a space file (TOML), as `--space FILE` takes it
    created: str

    @property
    def study(self) -> str:
        assert self.search.study is not None  # a job's study is always named
        return self.search.study

    @property
    def target(self) -> str:
        return self.search.target

    @property
    def max_drop(self) -> float:
        return self.search.constraint.max_drop

    @property
    def trials(self) -> int:
        return self.search.trials

    @property
    def timeout_s(self) -> float | None:
        return self.search.timeout

    @property
    def seed(self) -> int:
        return self.search.spec.seed

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "search": self.search.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRequest:
        if "search" not in data:  # a job accepted before requests held a SearchRequest
            data = _upgraded(data)
        return cls(**{**data, "search": SearchRequest.from_dict(data["search"])})


def _upgraded(old: dict[str, Any]) -> dict[str, Any]:
    """A request.json of the earlier layout (the search's fields beside the job's) in this one."""
    search = {
        "spec": {**old["spec"], "seed": old["seed"], "decide_drop": old["max_drop"]},
        "target": old["target"],
        "constraint": {"max_drop": old["max_drop"]},
        "study": old["study"],
        "trials": old["trials"],
        "timeout": old["timeout_s"],
        "storage": old["storage"],
        "threads": old["threads"],
    }
    return {"search": search, **{k: old[k] for k in ("model", "dataset", "space", "created")}}


def parse_request(config: ServerConfig, body: object, taken: set[str]) -> JobRequest:
    """Check a ``POST /api/studies`` body: its shape and the model and dataset it names here, then
    the search it asks for, checked as ``SearchRequest`` checks every request (a refusal names
    the field as the JSON key). ``taken`` are the study names in use. Nothing is written: a
    refusal is an ``ApiError`` naming the field."""
    if not isinstance(body, dict):
        raise ApiError(400, "body", "expected a JSON object such as {\"model\": \"demo\", \"trials\": 10}")
    for key in body:
        if key not in FIELDS:
            raise ApiError(400, str(key), f"unknown field; fields: {', '.join(FIELDS)}")
    model = check_name("model", body.get("model"))
    if model == DEMO:
        dataset = body.get("dataset", "digits")
        if dataset != "digits":
            raise ApiError(400, "dataset", f"the demo model runs on digits only, got {json.dumps(dataset)}")
    else:
        record = load_model(config, model) if (config.models_dir / model).is_dir() else None
        if record is None:
            raise ApiError(400, "model", f"unknown model {model!r}; use {DEMO!r} or the id of an uploaded model")
        dataset = check_name("dataset", body.get("dataset", record["dataset"]))
        if dataset not in config.data_roots:
            raise ApiError(400, "dataset", f"unknown dataset {dataset!r}; offered: {', '.join(config.data_roots)}")
        if dataset != record["dataset"]:
            raise ApiError(
                400, "dataset", f"model {model} was uploaded for {record['dataset']}, not {dataset}"
            )
    target = body.get("target", "size")
    study = body.get("study")
    try:
        constraint = constraint_of(body.get("max_drop", DEFAULT_MAX_DROP))
        # The default validation split grows to decide the bound, as `run`'s does.
        spec = workload_spec(config, model, dataset)
        spec = dataclasses.replace(spec, seed=body.get("seed", 0), decide_drop=constraint.max_drop)
        search = SearchRequest(
            spec=spec,
            target=target,
            constraint=constraint,
            study=study if study is not None else _free_name(_default_stem(config, model, dataset, str(target)), taken),
            trials=body.get("trials", 40),
            timeout=body.get("timeout"),
            storage=config.storage_url,
            threads=config.threads_per_job(),
        )
    except RequestError as exc:
        raise ApiError(400, exc.field, exc.message) from None
    space = body.get("space")
    if space is not None:
        if not isinstance(space, str):
            raise ApiError(400, "space", "expected the text of a space file (TOML) as a string")
        check_space(space, search.spec)
    if study is not None and study in taken:
        raise ApiError(409, "study", f"a study named {study!r} already exists; pick another name")
    return JobRequest(
        search=search,
        model=model,
        dataset=dataset,
        space=space,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
    )


def check_space(text: str, spec: WorkloadSpec) -> None:
    """Refuse a space text ``--space`` would refuse (400 naming ``space``), writing nothing that
    stays."""
    with tempfile.TemporaryDirectory(prefix="mcaas-space-") as folder:
        path = Path(folder) / SPACE_FILE
        path.write_text(text)
        try:
            load_space(path, base=workload_space(spec))
        except ConfigError as exc:
            raise ApiError(400, "space", str(exc).replace(f"{path}: ", "").replace(str(path), "space")) from None


def _default_stem(config: ServerConfig, model: str, dataset: str, target: str) -> str:
    if model == DEMO:
        return f"demo-{target}"
    architecture = load_model(config, model)["architecture"].rpartition(":")[2]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{architecture}-{dataset}-{target}").strip("-")


def _free_name(stem: str, taken: set[str]) -> str:
    n = 1
    while f"{stem}-{n}" in taken:
        n += 1
    return f"{stem}-{n}"


__all__ = ["FIELDS", "SPACE_FILE", "JobRequest", "check_space", "parse_request"]
