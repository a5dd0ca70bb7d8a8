"""Quantize: the exported fp32 ONNX graph becomes the final artifact ``model.onnx``, converted by
ONNX Runtime's own tools (``torch.ao.quantization`` is deprecated and never used) as the mode's
entry in ``stages.quant_modes.QUANT_MODES`` says, then checked to run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnxruntime as ort

from stages._base import OnnxFile
from stages._context import Context
from stages.config import QuantizeConfig
from stages.errors import StageError
from stages.export import EXPORT_FORMATS
from stages.quant_modes import QUANT_MODES

__all__ = ["FINAL_ONNX_NAME", "Quantize"]

FINAL_ONNX_NAME = EXPORT_FORMATS["onnx"].file_name


@dataclasses.dataclass(frozen=True)
class Quantize:
    """Convert the exported ONNX model as ``config.mode`` says into ``ctx.workdir/"model.onnx"``.

    The result is checked to load and run in ONNX Runtime on the CPU before it is returned.
    """

    config: QuantizeConfig = dataclasses.field(default_factory=QuantizeConfig)
    name: ClassVar[str] = "quantize"

    def run(self, model: OnnxFile, ctx: Context) -> OnnxFile:
        if not isinstance(model, OnnxFile):
            raise StageError(
                "quantize", "expected an exported ONNX model (run export first), "
                f"but got {type(model).__name__}."
            )
        dst = ctx.workdir / FINAL_ONNX_NAME
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=ctx.workdir, prefix=".quantize-") as tmp:
            out = Path(tmp) / FINAL_ONNX_NAME
            try:
                with _quiet_quantizer_logs():
                    QUANT_MODES[self.config.mode].quantizer(model.path, out, self.config, ctx)
            except Exception as exc:
                first_line = (str(exc).strip().splitlines() or [""])[0]
                raise StageError(
                    "quantize",
                    f"mode {self.config.mode} failed on {model.path.name}: {type(exc).__name__}: {first_line}",
                    setting="quantize.mode",
                ) from exc
            _check_runs(out, ctx.data.example_input().numpy(), self.config.mode)
            os.replace(out, dst)  # the temporary folder is on the same file system
        return OnnxFile(dst)


def _check_runs(path: Path, example: np.ndarray, mode: str) -> None:
    """Fail here, naming the mode, rather than later in measurement."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        session.run(None, {session.get_inputs()[0].name: example.astype(np.float32)})
    except Exception as exc:
        raise StageError(
            "quantize", f"the {mode} model does not run in ONNX Runtime on the CPU: {exc}", setting="quantize.mode"
        ) from exc


_log = logging.getLogger(__name__)


class _DemoteQuantizerRecords(logging.Filter):
    """Moves ORT quantization's notes below ERROR (progress, "tensor X not quantized") to this
    module's DEBUG log: the user cannot act on them, and the measured size and accuracy already
    show their effect."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_quantizer = f"onnxruntime{os.sep}quantization" in record.pathname
        if record.levelno >= logging.ERROR or not from_quantizer:
            return True
        _log.debug("onnxruntime.quantization: %s", record.getMessage())
        return False


@contextmanager
def _quiet_quantizer_logs() -> Iterator[None]:
    # ORT's quantizer logs through the root logger with module-level ``logging.info(...)``,
    # which would also install a stderr handler (``basicConfig``) on a root that has none: a
    # temporary NullHandler prevents that; the filter demotes the notes themselves. Its named
    # loggers (``onnxruntime.quantization.*``) are held at ERROR for the duration.
    root = logging.getLogger()
    demote = _DemoteQuantizerRecords()
    placeholder = logging.NullHandler() if not root.handlers else None
    named = logging.getLogger("onnxruntime.quantization")
    named_level = named.level
    root.addFilter(demote)
    named.setLevel(logging.ERROR)
    if placeholder is not None:
        root.addHandler(placeholder)
    try:
        yield
    finally:
        root.removeFilter(demote)
        named.setLevel(named_level)
        if placeholder is not None:
            root.removeHandler(placeholder)
