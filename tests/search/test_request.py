"""``SearchRequest``: one request, checked in one place with one set of limits, whether it comes
from the CLI's flags, the service's JSON or a file written earlier."""

from __future__ import annotations

import json
import os
from pathlib import Path
from unittest import mock

import pytest

from objectives import Constraint
from search.cli import main
from search.request import MAX_TRIALS, RequestError, SearchRequest
from search.service.config import ServerConfig
from search.service.errors import ApiError
from search.service.requests import JobRequest, parse_request
from search.workloads import WorkloadSpec

# (flags, JSON body fields, field): the same bad request as the CLI and the service take it.
SAME_REFUSALS = [
    (["--trials", str(MAX_TRIALS + 1)], {"trials": MAX_TRIALS + 1}, "trials"),
    (["--trials", "0"], {"trials": 0}, "trials"),
    (["--study", "../outside"], {"study": "../outside"}, "study"),
    (["--study", "a..b"], {"study": "a..b"}, "study"),
    (["--study", ".cache"], {"study": ".cache"}, "study"),
    (["--max-drop", "100"], {"max_drop": 100.0}, "max_drop"),
    (["--max-drop", "-1.5"], {"max_drop": -1.5}, "max_drop"),
    (["--timeout", "31d"], {"timeout": 31 * 86400.0}, "timeout"),
    (["--seed", "-1"], {"seed": -1}, "seed"),
    (["--seed", str(2**32)], {"seed": 2**32}, "seed"),
]


def _cli_message(capsys: pytest.CaptureFixture[str], argv: list[str], flag: str) -> str:
    """What ``mcaas-search run ARGV`` says is wrong with ``flag`` (exit code 2, one line)."""
    capsys.readouterr()
    with mock.patch.dict(os.environ, {"COLUMNS": "300"}):
        try:
            code = main(["run", *argv])
        except SystemExit as exc:
            code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, (code, err)
    prefix = f"mcaas-search run: error: argument {flag}: "
    assert err.startswith(prefix), err
    return err.removeprefix(prefix).strip()


def _service_message(config: ServerConfig, body: dict[str, object], field: str) -> str:
    """What the service answers a ``POST /api/studies`` of ``body`` with (400 naming ``field``)."""
    with pytest.raises(ApiError) as refused:
        parse_request(config, {"model": "demo", **body}, set())
    assert refused.value.status == 400 and refused.value.field == field, refused.value.line
    return refused.value.message


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ServerConfig:
    monkeypatch.chdir(tmp_path)
    return ServerConfig(folder=tmp_path / "server", storage=str(tmp_path / "s.journal"), workdir=tmp_path)


@pytest.mark.parametrize(("argv", "body", "field"), SAME_REFUSALS, ids=[" ".join(a) for a, _, _ in SAME_REFUSALS])
def test_the_cli_and_the_service_refuse_a_bad_request_with_the_same_message(
    argv: list[str], body: dict[str, object], field: str, config: ServerConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    cli = _cli_message(capsys, argv, argv[0])
    assert cli == _service_message(config, body, field)
    # ... and it is the message the request itself gives, built from a dict of that field.
    with pytest.raises(RequestError) as refused:
        SearchRequest.from_dict(_request_dict(body))
    assert (refused.value.field, refused.value.message) == (field, cli)


def _request_dict(body: dict[str, object]) -> dict[str, object]:
    """A request dict with ``body``'s fields (JSON keys) in the request's own terms."""
    data = SearchRequest(WorkloadSpec()).to_dict()
    for key, value in body.items():
        if key == "max_drop":
            data["constraint"] = {"max_drop": value}
        elif key == "seed":
            data["spec"] = {**data["spec"], "seed": value}  # type: ignore[dict-item]
        else:
            data[key] = value
    return data


def test_the_service_takes_as_many_trials_as_the_cli(config: ServerConfig) -> None:
    """One limit: the service once stopped at 10,000 trials, the CLI at 100,000."""
    job = parse_request(config, {"model": "demo", "trials": MAX_TRIALS}, set())
    assert job.trials == MAX_TRIALS


def test_json_types_the_cli_cannot_send_are_refused_by_the_request(config: ServerConfig) -> None:
    assert "got 2.5" in _service_message(config, {"trials": 2.5}, "trials")
    assert "got True" in _service_message(config, {"trials": True}, "trials")
    assert "expected a number of points, got '1'" == _service_message(config, {"max_drop": "1"}, "max_drop")
    assert "unknown target 'speed'" in _service_message(config, {"target": "speed"}, "target")


def test_a_request_round_trips_through_a_dict(tmp_path: Path) -> None:
    spec = WorkloadSpec(
        model="resnet18", weights=tmp_path / "r18.pt", dataset="fashion-mnist", data_root=tmp_path / "data",
        image_size=32, download=True, allow_pickle=True, allow_weak_teacher=True, seed=7, val_fraction=0.2,
    )
    request = SearchRequest(
        spec,
        target="latency",
        constraint=Constraint(max_drop=0.5, drop_type="relative", max_size=1e6, max_latency=2.0),
        study="mine",
        trials=12,
        timeout=3600.0,
        jobs=2,
        threads=3,
        sampler="random",
        profiles=False,
        early_stop=False,
        skip_dominated=False,
        space_file=tmp_path / "space.toml",
        storage="sqlite:///x.db",
        artifacts=str(tmp_path / "artifacts"),
        backend="ray",
        backend_options={"address": "10.0.0.1:6379", "cpus_per_trial": 2.0, "gpus_per_trial": 0.5},
        device="cpu",
    )
    text = json.dumps(request.to_dict())
    assert SearchRequest.from_dict(json.loads(text)) == request
    assert SearchRequest.from_dict(SearchRequest(WorkloadSpec()).to_dict()) == SearchRequest(WorkloadSpec())
    assert WorkloadSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_a_hand_edited_request_is_checked_again() -> None:
    data = SearchRequest(WorkloadSpec()).to_dict()
    with pytest.raises(RequestError, match="^colour: unknown field"):
        SearchRequest.from_dict({**data, "colour": "red"})
    with pytest.raises(RequestError, match="^jobs: expected a positive integer up to 1024, got 0$"):
        SearchRequest.from_dict({**data, "jobs": 0})
    with pytest.raises(RequestError, match="^backend: unknown backend 'dask'"):
        SearchRequest.from_dict({**data, "backend": "dask"})


def test_the_settings_a_backend_runs_come_from_the_request() -> None:
    request = SearchRequest(WorkloadSpec(seed=5), trials=9, timeout=60.0, jobs=2, sampler="nsga2",
                            profiles=False, storage="s.journal", device="cpu")
    settings = request.settings("s", SearchRequest(WorkloadSpec()).space(), threads=4)
    assert (settings.study, settings.trials, settings.seed, settings.timeout_s, settings.jobs, settings.threads) == (
        "s", 9, 5, 60.0, 2, 4
    )
    assert (settings.sampler, settings.profiles, settings.storage, settings.device) == ("nsga2", False, "s.journal", "cpu")


def test_a_job_request_round_trips_and_one_of_the_earlier_layout_is_read(config: ServerConfig) -> None:
    job = parse_request(config, {"model": "demo", "trials": 3, "max_drop": 2, "seed": 4, "timeout": 90}, set())
    again = JobRequest.from_dict(json.loads(json.dumps(job.to_dict())))
    assert again == job and (again.study, again.trials, again.max_drop, again.seed, again.timeout_s) == (
        "demo-size-1", 3, 2.0, 4, 90.0
    )
    earlier = {
        "study": "old", "model": "demo", "dataset": "digits", "target": "size", "max_drop": 1.0, "trials": 5,
        "timeout_s": None, "space": None, "seed": 0, "storage": "s.journal", "threads": 2, "created": "t",
        "spec": {"model": None, "weights": None, "dataset": None, "data_root": None},
    }
    old = JobRequest.from_dict(earlier)
    assert (old.study, old.trials, old.search.storage, old.search.threads, old.search.spec) == (
        "old", 5, "s.journal", 2, WorkloadSpec(decide_drop=1.0)
    )
