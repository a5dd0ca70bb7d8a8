"""Ctrl-C that always stops: Python raises KeyboardInterrupt from its signal handler at whatever
bytecode runs next, and two places there lose or mistime it. ``redeliver_lost_interrupts`` covers
a finalizer (the interrupt is printed as "Exception ignored" and dropped); ``stops_deferred``
holds it off a few lines that must not be cut in half."""

from __future__ import annotations

import _thread
import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

# The signals that stop a search: Ctrl-C, and in a worker process the parent's stop request.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def redeliver_lost_interrupts(signum: int = signal.SIGINT) -> Iterator[None]:
    """Raise a KeyboardInterrupt that a finalizer swallowed (torch sets off many) again in the
    main thread, by simulating ``signum`` once more; otherwise the command would go on as if
    never stopped. The signal is simulated from another thread a moment later: from inside the
    hook it would be raised (and dropped) right there."""
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            threading.Timer(0.01, _thread.interrupt_main, args=(signum,)).start()
        else:
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = previous


@contextlib.contextmanager
def stops_deferred() -> Iterator[None]:
    """Hold Ctrl-C (and a worker's stop request) until the block ends, then raise it as its
    handler would have."""
    handlers = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    handlers = {s: h for s, h in handlers.items() if callable(h)}
    if threading.current_thread() is not threading.main_thread() or not handlers:
        yield  # only the main thread runs signal handlers
        return
    caught: list[int] = []
    for signum in handlers:
        signal.signal(signum, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    for signum in dict.fromkeys(caught):
        handlers[signum](signum, None)  # type: ignore[operator]
