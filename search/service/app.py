"""The FastAPI application: the ``/api`` routes (bearer token on every one but ``/api/health``,
which a liveness probe reads and which says nothing but status and version), the page at ``/``
and its static files (plotly.js from the installed plotly package: no CDN).

Blocking work (storage reads, upload checks, exports) runs in FastAPI's thread pool; training
runs only in job worker processes, so status requests are answered while jobs train.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import plotly
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from search.service.auth import token_matches, where_the_token_is
from search.service.config import ServerConfig
from search.service.errors import ApiError, error_response, install_handlers
from search.service.events import status_events
from search.service.inspection import Inspections
from search.service.jobs import Jobs
from search.service.requests import parse_request
from search.service.studies import Studies
from search.service.uploads import list_models, load_model, save_upload

STATIC = Path(__file__).with_name("static")
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def _installed_version() -> str:
    """This package's version, as pip installed it ("unknown" for a checkout run from source)."""
    try:
        return importlib.metadata.version("mcaas-search")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


VERSION = _installed_version()
# Bodies other than uploads are small JSON documents (a space file is a few hundred bytes).
MAX_JSON_BYTES = 1_000_000
MULTIPART_SLACK = 1_000_000  # form fields and part headers around the uploaded files

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class BodyTooLarge(Exception):
    """The request body went past the limit while it was being received."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"body: the request is over the server's limit of {limit / 1e6:g} MB")


class BodyLimit:
    """Refuses a body over the limit (413) from its Content-Length before reading it, and stops
    reading one sent without (chunked) once it goes past the limit."""

    def __init__(self, app: Callable[..., Awaitable[None]], upload_limit: int) -> None:
        self.app, self.upload_limit = app, upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        is_upload = scope["path"] == "/api/models"
        limit = 2 * self.upload_limit + MULTIPART_SLACK if is_upload else MAX_JSON_BYTES
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            field = "file" if is_upload else "body"
            what = self.upload_limit if is_upload else limit
            response = error_response(413, f"{field}: the upload is over the server's limit of {what / 1e6:g} MB")
            await response(scope, receive, send)
            return
        seen = 0

        async def counted() -> MutableMapping[str, Any]:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
            return message

        await self.app(scope, counted, send)


def create_app(
    config: ServerConfig, token: str, *, token_file: Path | None = None, start_jobs: bool = True
) -> FastAPI:
    """The app for ``config``; ``token`` guards ``/api`` (``token_file``: the ``--token-file`` it
    came from, which the log-in page mentions; None: the server folder's). With ``start_jobs`` the
    job scheduler runs while the app does and each upload is inspected in its own process
    (``start_jobs=False``: requests are accepted and kept, nothing is run; for tests)."""
    jobs = Jobs(config)
    studies = Studies(config, jobs)
    inspections = Inspections(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        config.folder.mkdir(parents=True, exist_ok=True)
        if start_jobs:
            jobs.start()
        try:
            yield
        finally:
            jobs.stop()

    def require_token(request: Request) -> None:
        if not token_matches(request.headers.get("authorization"), token):
            raise ApiError(401, "token", "missing or wrong bearer token (send Authorization: Bearer <token>)")

    app = FastAPI(title="mcaas-search", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.jobs, app.state.studies = jobs, studies
    install_handlers(app)

    @app.exception_handler(BodyTooLarge)
    async def _too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return error_response(413, str(exc))

    app.add_middleware(BodyLimit, upload_limit=config.max_upload_bytes)
    @app.get("/api/health")
    def health() -> dict[str, str]:
        """Liveness, for probes that send no token: nothing about jobs, models or settings."""
        return {"status": "ok", "version": VERSION}

    api = APIRouter(prefix="/api", dependencies=[Depends(require_token)])

    @api.get("/server")
    def server() -> dict[str, Any]:
        names = jobs.names()
        states = [jobs.state(n)["state"] for n in names]
        return {
            "status": "ok",
            "jobs": {s: states.count(s) for s in ("queued", "running", "done", "failed", "cancelled")},
            "workers": config.workers,
            "datasets": list(config.data_roots),
            "allow_model_code": config.allow_model_code,
            "max_upload_mb": config.max_upload_bytes / 1e6,
        }

    @api.post("/models", status_code=201)
    async def upload_model(request: Request) -> dict[str, Any]:
        try:
            form = await request.form(max_files=2, max_fields=10)
        except BodyTooLarge:
            raise
        except Exception as exc:  # a malformed multipart body
            raise ApiError(400, "body", f"expected a multipart form: {exc}") from None
        try:
            checkpoint, code = form.get("file"), form.get("code")
            if not isinstance(checkpoint, UploadFile):
                raise ApiError(400, "file", "is required: the state_dict checkpoint, as a file part")
            if code is not None and not isinstance(code, UploadFile):
                raise ApiError(400, "code", "must be a file part (the model's Python file)")
            fields = {k: form.get(k) for k in ("model", "dataset", "factory")}
            for key, value in fields.items():
                if value is not None and not isinstance(value, str):
                    raise ApiError(400, key, "must be a text field")
            record = await run_in_threadpool(
                save_upload,
                config,
                checkpoint=checkpoint.file,
                architecture=fields["model"] or "",
                dataset=fields["dataset"] or "",
                code=code.file if code is not None else None,
                factory=fields["factory"],
            )
        finally:
            await form.close()
        if start_jobs:
            inspections.start(record["id"], record["dataset"])
        return {**record, "inspect": inspections.state(record["id"])}

    @api.get("/models")
    def models() -> list[dict[str, Any]]:
        return [{**m, "inspect": inspections.state(m["id"])} for m in list_models(config)]

    @api.get("/models/{model_id}")
    def model(model_id: str) -> dict[str, Any]:
        return {**load_model(config, model_id), "inspect": inspections.state(model_id)}

    @api.post("/studies", status_code=201)
    async def create_study(request: Request) -> dict[str, Any]:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "body", f"malformed JSON: {exc}") from None

        def accept() -> dict[str, Any]:
            job = parse_request(config, body, set(studies.names()))
            jobs.create(job)
            return {"id": job.study, "status": studies.status(job.study)}

        return await run_in_threadpool(accept)

    @api.get("/studies")
    def list_studies() -> list[dict[str, Any]]:
        return [studies.status(name) for name in studies.names()]

    @api.get("/studies/{name}")
    def study(name: str) -> dict[str, Any]:
        return studies.status(name)

    @api.get("/studies/{name}/events")
    def events(name: str, request: Request) -> StreamingResponse:
        studies.status(name)  # 404 before the stream starts
        return StreamingResponse(
            status_events(request, lambda: studies.status(name)),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @api.get("/studies/{name}/trials")
    def trials(name: str) -> list[dict[str, Any]]:
        return studies.trials(name)

    @api.get("/studies/{name}/trials/{number}")
    def trial(name: str, number: int) -> dict[str, Any]:
        return studies.trial(name, number)

    @api.get("/studies/{name}/front")
    def front(name: str) -> dict[str, Any]:
        return studies.front(name)

    @api.post("/studies/{name}/cancel")
    def cancel(name: str) -> dict[str, Any]:
        if jobs.request(name) is None:
            studies.status(name)  # 404 for an unknown study
            raise ApiError(409, "study", f"study {name!r} was not started by this server; stop it where it runs")
        jobs.cancel(name)
        return studies.status(name)

    @api.get("/studies/{name}/trials/{number}/model.onnx")
    def model_onnx(name: str, number: int) -> FileResponse:
        path, _ = studies.export(name, number)
        return FileResponse(path, media_type="application/octet-stream", filename=f"{name}-t{number}.onnx")

    @api.get("/studies/{name}/trials/{number}/sidecar.json")
    def sidecar(name: str, number: int) -> FileResponse:
        _, path = studies.export(name, number)
        return FileResponse(path, media_type="application/json", filename=f"{name}-t{number}.onnx.json")

    @api.get("/studies/{name}/report")
    def report(name: str) -> FileResponse:
        return FileResponse(studies.report(name), media_type="text/html")

    app.include_router(api)

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace("{{where_the_token_is}}", where_the_token_is(token_file)))

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> FileResponse:
        files = {"app.js": STATIC / "app.js", "style.css": STATIC / "style.css", "plotly.min.js": PLOTLY_JS}
        if name not in files:
            raise ApiError(404, "path", f"no static file {name!r}")
        return FileResponse(files[name])

    return app
