"""Live progress as Server-Sent Events: the study's status (what ``GET /api/studies/{id}``
answers) each time it changes, read from the storage every ``interval`` seconds, and a final
``end`` event once the job is done, failed or cancelled."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from search.service.errors import ApiError
from search.service.jobs import FINAL

# A comment line this often keeps proxies from closing an idle stream.
KEEPALIVE_S = 15.0


def sse(event: str, data: Any) -> str:
    """One event in the text/event-stream format."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def status_events(
    request: Request,
    status: Callable[[], dict[str, Any]],
    *,
    interval: float = 1.0,
) -> AsyncIterator[str]:
    """``status`` events while the client listens; ``end`` after a final state. ``status`` reads
    the storage, so it runs in a worker thread, never blocking the event loop."""
    last: str | None = None
    quiet = 0.0
    while not await request.is_disconnected():
        try:
            current = await run_in_threadpool(status)
        except ApiError as exc:
            yield sse("error", {"error": exc.line})
            return
        text = json.dumps(current, sort_keys=True)
        if text != last:
            yield sse("status", current)
            last, quiet = text, 0.0
        elif quiet >= KEEPALIVE_S:
            yield ": keep-alive\n\n"
            quiet = 0.0
        if current.get("state") in FINAL:
            yield sse("end", {"state": current["state"]})
            return
        await anyio.sleep(interval)
        quiet += interval
