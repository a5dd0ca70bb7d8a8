"""The API through FastAPI's test client, no job run: the token, uploads, job requests and
every bad input the issue lists (a 4xx JSON error naming the field, nothing written, the server
still serving), the page and its offline plotly, and the server's data roots."""

from __future__ import annotations

import importlib.metadata
import io
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from search.errors import UserError
from search.service import ServerConfig, create_app, data_roots, load_or_create_token
from search.service.app import PLOTLY_JS
from search.service.uploads import describe_model
from search.workloads import DemoCNN, load_dataset
from stages import count_params_macs, weight_layers
from tests.search.study_fixtures import TINY_SPACE

TOKEN = "t" * 32


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ServerConfig:
    monkeypatch.chdir(tmp_path)
    return ServerConfig(
        folder=tmp_path / "server",
        storage=str(tmp_path / "studies.journal"),
        max_upload_bytes=200_000,
        workdir=tmp_path,
    )


def _client(config: ServerConfig) -> Iterator[TestClient]:
    # start_jobs=False: requests are accepted and kept, no worker is started.
    with TestClient(create_app(config, TOKEN, start_jobs=False), headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


@pytest.fixture
def client(config: ServerConfig) -> Iterator[TestClient]:
    yield from _client(config)


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A state_dict of the demo CNN (untrained: uploads check loading and fit, not accuracy)."""
    torch.manual_seed(0)
    buffer = io.BytesIO()
    torch.save(DemoCNN().state_dict(), buffer)
    return buffer.getvalue()


def _files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _error(response, status: int, field: str) -> str:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"], body
    assert body["error"].startswith(f"{field}: "), body
    return body["error"]


def _upload(client: TestClient, data: bytes, **fields: str):  # type: ignore[no-untyped-def]
    form = {"model": "demo", "dataset": "digits", **fields}
    return client.post("/api/models", files={"file": ("ckpt.pt", data)}, data=form)


# ---------------------------------------------------------------------------------------------
# Token


def test_every_api_route_but_health_needs_the_token(config: ServerConfig) -> None:
    with TestClient(create_app(config, TOKEN, start_jobs=False)) as c:
        for method, path in [("get", "/api/server"), ("get", "/api/studies"), ("post", "/api/studies"),
                             ("get", "/api/studies/x/front"), ("post", "/api/models"), ("get", "/api/models")]:
            _error(getattr(c, method)(path), 401, "token")
            _error(getattr(c, method)(path, headers={"Authorization": "Bearer wrong" + TOKEN}), 401, "token")
            _error(getattr(c, method)(path, headers={"Authorization": TOKEN}), 401, "token")
        server = c.get("/api/server", headers={"Authorization": f"Bearer {TOKEN}"})
        assert server.status_code == 200 and server.json()["datasets"] == ["digits"]
        # A liveness probe sends no token, and learns nothing but that the server is up.
        health = c.get("/api/health")
        assert health.status_code == 200
        assert health.json() == {"status": "ok", "version": importlib.metadata.version("mcaas-search")}
        # The page and its scripts need none: the token is typed into the page.
        assert c.get("/").status_code == 200


@pytest.mark.parametrize("token_file", [None, Path("secret")])
def test_the_log_in_page_says_how_the_token_was_given(config: ServerConfig, token_file: Path | None) -> None:
    with TestClient(create_app(config, TOKEN, token_file=token_file, start_jobs=False)) as c:
        page = c.get("/").text
    assert "{{" not in page
    assert ("printed it at its first start" in page) == (token_file is None)
    assert ("started with <code>--token-file</code>" in page) == (token_file is not None)
    assert "secret" not in page  # the page is public: it names no path


def test_the_token_is_made_once_owner_only_and_kept(tmp_path: Path) -> None:
    token, created = load_or_create_token(tmp_path / "srv")
    assert created and len(token) >= 32
    path = tmp_path / "srv" / "token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_token(tmp_path / "srv") == (token, False)


def test_a_token_file_readable_by_others_or_too_short_is_refused(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.write_text("x" * 40)
    os.chmod(loose, 0o644)
    with pytest.raises(UserError, match="readable by others"):
        load_or_create_token(tmp_path, loose)
    short = tmp_path / "short"
    short.write_text("abc")
    os.chmod(short, 0o600)
    with pytest.raises(UserError, match="at least 16"):
        load_or_create_token(tmp_path, short)
    good = tmp_path / "good"
    good.write_text("y" * 20 + "\n")
    os.chmod(good, 0o600)
    assert load_or_create_token(tmp_path, good) == ("y" * 20, False)


# ---------------------------------------------------------------------------------------------
# Uploads


def test_an_upload_is_kept_and_described(client: TestClient, config: ServerConfig, demo_checkpoint: bytes) -> None:
    response = _upload(client, demo_checkpoint)
    assert response.status_code == 201, response.text
    record = response.json()
    model = DemoCNN()
    params, macs = count_params_macs(model, torch.zeros(1, 1, 8, 8))
    assert record["description"] == {
        "architecture": "DemoCNN",
        "parameters": params,
        "macs": macs,
        "weight_layers": len(weight_layers(model)),
        "layers": sum(1 for m in model.modules() if not list(m.children())),
        "input_shape": [1, 8, 8],
        "classes": 10,
    }
    assert (config.models_dir / record["id"] / "checkpoint.pt").read_bytes() == demo_checkpoint
    assert client.get(f"/api/models/{record['id']}").json() == record
    assert [m["id"] for m in client.get("/api/models").json()] == [record["id"]]
    # The same upload again is the same model.
    assert _upload(client, demo_checkpoint).json()["id"] == record["id"]
    assert _files_under(config.uploads_tmp) == []


def test_describe_model_counts_real_facts() -> None:
    data = load_dataset("digits")
    description = describe_model(DemoCNN(), data)
    assert description["parameters"] == sum(p.numel() for p in DemoCNN().parameters())
    assert description["input_shape"] == [1, 8, 8] and description["classes"] == 10


class _Code:
    """Unpickling this runs code: what weights_only loading must refuse."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch PWNED",))


def _pickle_with_code() -> bytes:
    import pickle

    return pickle.dumps(_Code())


@pytest.mark.parametrize(
    "payload, fields, status, field, words",
    [
        (b"not a checkpoint at all", {}, 400, "file", "not a torch checkpoint"),
        ("plain-dict", {}, 400, "file", "not a state_dict"),
        ("pickle-code", {}, 400, "file", "not a torch checkpoint"),
        ("module", {}, 400, "file", "weights_only"),
        ("state", {"dataset": "cifar10"}, 400, "dataset", "unknown dataset"),
        ("state", {"dataset": "../digits"}, 400, "dataset", "plain name"),
        ("state", {"model": "../../etc/demo"}, 400, "model", "plain name"),
        ("state", {"model": "nomodel"}, 400, "model", "unknown model"),
        ("state", {"model": "resnet18"}, 400, "file", "does not fit"),
        ("big", {}, 413, "file", "limit"),
        (b"", {}, 400, "file", "empty"),
    ],
)
def test_bad_uploads_are_refused_and_nothing_is_kept(
    client: TestClient, config: ServerConfig, tmp_path: Path, demo_checkpoint: bytes,
    payload: object, fields: dict[str, str], status: int, field: str, words: str,
) -> None:
    if payload == "plain-dict":
        buffer = io.BytesIO()
        torch.save({"a": 1}, buffer)
        payload = buffer.getvalue()
    elif payload == "pickle-code":
        payload = _pickle_with_code()
    elif payload == "module":
        buffer = io.BytesIO()
        torch.save(torch.nn.Linear(2, 2), buffer)
        payload = buffer.getvalue()
    elif payload == "state":
        payload = demo_checkpoint
    elif payload == "big":
        payload = demo_checkpoint * 3  # over the fixture's 200 kB limit
    assert isinstance(payload, bytes)
    message = _error(_upload(client, payload, **fields), status, field)
    assert words in message
    assert not (tmp_path / "PWNED").exists()
    for folder in (config.models_dir, config.uploads_tmp):
        assert not folder.exists() or _files_under(folder) == [], folder
    assert client.get("/api/health").status_code == 200


def test_a_body_over_the_limit_is_refused_before_it_is_read(client: TestClient, config: ServerConfig) -> None:
    big = b"x" * (2 * config.max_upload_bytes + 2_000_000)
    _error(_upload(client, big), 413, "file")
    _error(client.post("/api/studies", content=b"{" + b" " * 2_000_000 + b"}"), 413, "body")
    # Sent without a length (chunked): refused once it passes the limit, whatever it claims to be.
    chunks = (b"x" * 100_000 for _ in range(30))
    _error(client.post("/api/studies", content=chunks, headers={"Content-Type": "application/json"}), 413, "body")
    assert client.get("/api/health").status_code == 200


def test_model_code_only_with_allow_model_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_checkpoint: bytes) -> None:
    monkeypatch.chdir(tmp_path)
    code = b"from search.workloads import DemoCNN\n\ndef build(in_channels, num_classes):\n    return DemoCNN(in_channels, num_classes)\n"
    files = {"file": ("ckpt.pt", demo_checkpoint), "code": ("net.py", code)}
    form = {"factory": "build", "dataset": "digits"}
    refused = ServerConfig(folder=tmp_path / "a", workdir=tmp_path)
    for c in _client(refused):
        _error(c.post("/api/models", files=files, data=form), 403, "code")
    assert not (tmp_path / "a" / "models").exists()
    allowed = ServerConfig(folder=tmp_path / "b", workdir=tmp_path, allow_model_code=True)
    for c in _client(allowed):
        response = c.post("/api/models", files=files, data=form)
        assert response.status_code == 201, response.text
        record = response.json()
        assert record["architecture"] == "model.py:build"
        assert (allowed.models_dir / record["id"] / "model.py").read_bytes() == code
        _error(c.post("/api/models", files=files, data={**form, "factory": "../x"}), 400, "factory")


# ---------------------------------------------------------------------------------------------
# Job requests


def test_a_job_request_is_kept_on_disk_as_queued(client: TestClient, config: ServerConfig) -> None:
    response = client.post("/api/studies", json={"model": "demo", "trials": 3, "max_drop": 2, "space": TINY_SPACE})
    assert response.status_code == 201, response.text
    name = response.json()["id"]
    assert name == "demo-size-1"
    status = client.get(f"/api/studies/{name}").json()
    assert status["state"] == "queued" and status["request"]["trials"] == 3
    request = json.loads((config.jobs_dir / name / "request.json").read_text())
    assert request["search"]["storage"] == str(Path(config.storage or ""))
    assert (config.jobs_dir / name / "space.toml").read_text() == TINY_SPACE
    assert client.post("/api/studies", json={"model": "demo"}).json()["id"] == "demo-size-2"
    assert [s["id"] for s in client.get("/api/studies").json()] == ["demo-size-1", "demo-size-2"]
    # Not started yet: its figure cannot be drawn, and says why.
    _error(client.get(f"/api/studies/{name}/front"), 409, "study")


@pytest.mark.parametrize(
    "body, status, field",
    [
        (b"{not json", 400, "body"),
        (b"[1, 2]", 400, "body"),
        (b'"demo"', 400, "body"),
        (json.dumps({"model": "demo", "color": "red"}).encode(), 400, "color"),
        (json.dumps({"trials": 3}).encode(), 400, "model"),
        (json.dumps({"model": "m-000000000000"}).encode(), 400, "model"),
        (json.dumps({"model": "../models/x"}).encode(), 400, "model"),
        (json.dumps({"model": "demo", "dataset": "fashion-mnist"}).encode(), 400, "dataset"),
        (json.dumps({"model": "demo", "dataset": "/usr/share/datasets"}).encode(), 400, "dataset"),
        (json.dumps({"model": "demo", "target": "speed"}).encode(), 400, "target"),
        (json.dumps({"model": "demo", "max_drop": -1}).encode(), 400, "max_drop"),
        (json.dumps({"model": "demo", "max_drop": "1"}).encode(), 400, "max_drop"),
        (json.dumps({"model": "demo", "trials": 0}).encode(), 400, "trials"),
        (json.dumps({"model": "demo", "trials": 2.5}).encode(), 400, "trials"),
        (json.dumps({"model": "demo", "trials": True}).encode(), 400, "trials"),
        (json.dumps({"model": "demo", "timeout": 0}).encode(), 400, "timeout"),
        (json.dumps({"model": "demo", "space": "prune.ratio = = 1"}).encode(), 400, "space"),
        (json.dumps({"model": "demo", "space": '"prune.nope" = 1'}).encode(), 400, "space"),
        (json.dumps({"model": "demo", "space": ["x"]}).encode(), 400, "space"),
        (json.dumps({"model": "demo", "study": "../escape"}).encode(), 400, "study"),
        (json.dumps({"model": "demo", "study": "a/b"}).encode(), 400, "study"),
        (json.dumps({"model": "demo", "study": ".hidden"}).encode(), 400, "study"),
    ],
)
def test_bad_job_requests_are_refused_and_nothing_is_written(
    client: TestClient, config: ServerConfig, body: bytes, status: int, field: str
) -> None:
    _error(client.post("/api/studies", content=body, headers={"Content-Type": "application/json"}), status, field)
    assert _files_under(config.jobs_dir) == []
    assert client.get("/api/health").status_code == 200


def test_a_study_name_in_use_is_refused(client: TestClient, config: ServerConfig) -> None:
    assert client.post("/api/studies", json={"model": "demo", "study": "mine"}).status_code == 201
    _error(client.post("/api/studies", json={"model": "demo", "study": "mine"}), 409, "study")
    assert os.listdir(config.jobs_dir) == ["mine"]


def test_unknown_studies_trials_and_routes(client: TestClient) -> None:
    _error(client.get("/api/studies/nope"), 404, "study")
    _error(client.get("/api/studies/nope/trials"), 404, "study")
    _error(client.get("/api/studies/nope/events"), 404, "study")
    _error(client.get("/api/studies/nope/trials/0/model.onnx"), 404, "study")
    _error(client.get("/api/studies/nope/report"), 404, "study")
    _error(client.post("/api/studies/nope/cancel"), 404, "study")
    _error(client.get("/api/studies/a..b"), 400, "study")
    _error(client.get("/api/studies/x/trials/one"), 400, "number")
    _error(client.get("/api/nothing"), 404, "path")
    _error(client.delete("/api/health"), 405, "method")
    assert client.get("/api/health").status_code == 200


# ---------------------------------------------------------------------------------------------
# The page, offline


def test_the_page_and_plotly_are_served_locally(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    script = client.get("/static/app.js").text
    # Everything the page loads comes from this server: no URL to anywhere else.
    assert re.findall(r'(?:src|href)="([^"]*)"', page.text) == [
        "data:,", "/static/style.css", "/static/plotly.min.js", "/static/app.js"
    ]
    assert not re.search(r"https?://", page.text + script)
    assert client.get("/static/style.css").status_code == 200
    plotly_js = client.get("/static/plotly.min.js")
    assert plotly_js.status_code == 200 and plotly_js.content == PLOTLY_JS.read_bytes()
    _error(client.get("/static/../token"), 404, "path")
    _error(client.get("/static/token"), 404, "path")


# ---------------------------------------------------------------------------------------------
# Data roots


def test_data_roots_name_datasets_and_refuse_folders_without_one(fashion_mnist_root: Path, tmp_path: Path) -> None:
    offered = data_roots([fashion_mnist_root])
    assert offered == {"digits": None, "fashion-mnist": fashion_mnist_root.resolve()}
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no dataset"):
        data_roots([tmp_path / "empty"])
    with pytest.raises(UserError, match="does not exist"):
        data_roots([tmp_path / "missing"])
    with pytest.raises(UserError, match="already offered"):
        data_roots([fashion_mnist_root, fashion_mnist_root])
