"""The dynamo ONNX exporter's operator registry, built once per process instead of once per export.

``torch.onnx.export(..., dynamo=True)`` builds an ``ONNXRegistry`` from onnxscript's torchlib on
every call: about 500 functions, each re-parsed from its Python source to infer its signature.
On this project's 2-core machine that was 2.3 s of a demo student's 5.9 s export (38 %), paid by
every trial once or twice (its untrained structural student, measured before training, and its
final file) and identical every time: it depends on the torch and onnxscript installed and the
opset, nothing else. Each export gets its own copy of the registry's table (an export may
register custom operators into it); the function records in it are built once and never changed
after (``OnnxDecompMeta`` infers its signature in ``__post_init__``).

Kept to this module because it reaches into torch's exporter (``_registration``), whose API
moves: where that is not as expected, nothing is cached and exports build the registry as before.
"""

from __future__ import annotations

import functools
from typing import Any

# (registry class, the arguments it was built with) -> the registry built once.
_BUILT: dict[tuple[Any, ...], Any] = {}


def reuse_registry() -> None:
    """Make the exporter's ``ONNXRegistry.from_torchlib`` build each registry once per process
    (idempotent; a no-op where torch's exporter is not laid out as this expects)."""
    try:
        from torch.onnx._internal.exporter import _registration
    except ImportError:
        return
    registry = getattr(_registration, "ONNXRegistry", None)
    build = vars(registry).get("from_torchlib") if registry is not None else None
    if not isinstance(build, classmethod) or getattr(build.__func__, "reused", False):
        return
    original = build.__func__

    @functools.wraps(original)
    def from_torchlib(cls: type, *args: Any, **kwargs: Any) -> Any:
        key = (cls, args, tuple(sorted(kwargs.items())))
        if key not in _BUILT:
            _BUILT[key] = original(cls, *args, **kwargs)
        return _copy(_BUILT[key])

    from_torchlib.reused = True  # type: ignore[attr-defined]
    registry.from_torchlib = classmethod(from_torchlib)


def _copy(built: Any) -> Any:
    """A registry with ``built``'s settings and its own table (lists of the same records)."""
    fresh = object.__new__(type(built))
    fresh.__dict__.update(built.__dict__)
    fresh.functions = {target: list(records) for target, records in built.functions.items()}
    return fresh
