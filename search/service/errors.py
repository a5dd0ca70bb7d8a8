"""Errors the API answers with: a 4xx status and ``{"error": "<field>: <what was wrong>"}`` on
one line, as the CLI answers bad input with one line and exit code 2."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from search.errors import first_line


class ApiError(Exception):
    """Bad input to the API: ``field`` names what was wrong (a JSON key, a form field, a path
    part, ``token``), ``message`` says how, ``status`` is the 4xx code."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message

    @property
    def line(self) -> str:
        return " ".join(f"{self.field}: {self.message}".splitlines())


def error_response(status: int, line: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(line.splitlines())}, status_code=status, headers=headers)


def install_handlers(app: FastAPI) -> None:
    """Every error the app can meet becomes one JSON line: ours, FastAPI's validation of path
    parameters, and Starlette's own (unknown route, wrong method)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return error_response(exc.status, exc.line, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        first = problems[0] if problems else {}
        field = ".".join(str(p) for p in first.get("loc", ())[1:]) or "request"
        return error_response(400, f"{field}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            line = f"path: no such route {request.url.path!r}"
        elif exc.status_code == 405:
            line = f"method: {request.method} is not allowed on {request.url.path!r}"
        else:
            line = f"request: {first_line(Exception(exc.detail))}"
        return error_response(exc.status_code, line)
