"""Quantize: the exported fp32 ONNX graph becomes the final artifact ``model.onnx``, converted by
ONNX Runtime's own tools (``torch.ao.quantization`` is deprecated and never used).

Modes: ``none`` (fp32 as exported), ``fp16`` (weights and arithmetic in half precision, inputs
and outputs stay float32), ``int8-dynamic`` (int8 weights, activations quantized on the fly),
``int8-static`` and ``int8-qat`` (int8 weights and activations, activation ranges calibrated on
training samples; ``int8-qat`` weights were trained with fake quantization during distillation).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16

from stages._base import OnnxFile
from stages._context import Context, Split
from stages.config import QuantizeConfig
from stages.errors import StageError

__all__ = ["FINAL_ONNX_NAME", "QUANTIZERS", "Quantize", "TrainingCalibration"]

FINAL_ONNX_NAME = "model.onnx"

# Samples per calibration batch (the exported graph has a dynamic batch axis).
CALIBRATION_BATCH = 32

INT8_FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}


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
                f"quantize: expected an exported ONNX model (run export first), "
                f"but got {type(model).__name__}."
            )
        dst = ctx.workdir / FINAL_ONNX_NAME
        ctx.workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=ctx.workdir, prefix=".quantize-") as tmp:
            out = Path(tmp) / FINAL_ONNX_NAME
            try:
                with _quiet_quantizer_logs():
                    QUANTIZERS[self.config.mode](model.path, out, self.config, ctx)
            except Exception as exc:
                first_line = (str(exc).strip().splitlines() or [""])[0]
                raise StageError(
                    f"quantize: mode {self.config.mode} failed on {model.path.name}: "
                    f"{type(exc).__name__}: {first_line}"
                ) from exc
            _check_runs(out, ctx.data.example_input().numpy(), self.config.mode)
            os.replace(out, dst)  # the temporary folder is on the same file system
        return OnnxFile(dst)


class TrainingCalibration(CalibrationDataReader):
    """Feeds ``samples`` training inputs, drawn at random with ``seed``, to ORT's calibrator.

    Only the training split is read: activation ranges must not be fitted on the data that
    judges the model.
    """

    def __init__(
        self, train: Split, samples: int, seed: int, *, input_name: str, batch_size: int
    ) -> None:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(train), generator=generator)[: min(samples, len(train))]
        self._x = train.x
        self._input_name = input_name
        self._chunks = iter(order.split(batch_size))

    def get_next(self) -> dict[str, np.ndarray] | None:
        chunk = next(self._chunks, None)
        if chunk is None:
            return None
        return {self._input_name: self._x[chunk].to("cpu", torch.float32).numpy()}


def _none(src: Path, dst: Path, config: QuantizeConfig, ctx: Context) -> None:
    shutil.copyfile(src, dst)


def _fp16(src: Path, dst: Path, config: QuantizeConfig, ctx: Context) -> None:
    model = convert_float_to_float16(onnx.load(src), keep_io_types=True)
    onnx.save_model(model, dst)


def _int8_dynamic(src: Path, dst: Path, config: QuantizeConfig, ctx: Context) -> None:
    # Activations are quantized at run time, so there is no calibration and no format choice:
    # ORT writes ConvInteger / MatMulInteger nodes (all run on its CPU provider).
    prepared = _pre_process(src, dst)
    quantize_dynamic(prepared, dst, per_channel=True, weight_type=QuantType.QInt8)


def _int8_static(src: Path, dst: Path, config: QuantizeConfig, ctx: Context) -> None:
    prepared = _pre_process(src, dst)
    reader = TrainingCalibration(
        ctx.data.train,
        config.calibration_samples,
        ctx.seed,
        input_name=_input_name(prepared),
        batch_size=CALIBRATION_BATCH,
    )
    quantize_static(
        prepared,
        dst,
        reader,
        quant_format=INT8_FORMATS[config.format],
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        calibrate_method=CalibrationMethod.MinMax,
        # No "CalibMaxIntermediateOutputs": in onnxruntime 1.32 it discards the held batches
        # without folding them into the ranges, so calibration would silently see only the
        # last few. Memory grows with calibration_samples instead.
    )


# Mode -> converter ``(fp32 onnx, output path, config, ctx)``. QAT models reach this stage as
# plain modules with quantization-friendly weights; they are converted like static PTQ.
QUANTIZERS: dict[str, Callable[[Path, Path, QuantizeConfig, Context], None]] = {
    "none": _none,
    "fp16": _fp16,
    "int8-dynamic": _int8_dynamic,
    "int8-static": _int8_static,
    "int8-qat": _int8_static,
}


def _pre_process(src: Path, dst: Path) -> Path:
    """ORT's recommended preparation (shape inference, graph optimisation) before int8."""
    prepared = dst.with_name("prepared.onnx")
    quant_pre_process(src, prepared)
    return prepared


def _input_name(path: Path) -> str:
    return onnx.load(path, load_external_data=False).graph.input[0].name


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
            f"quantize: the {mode} model does not run in ONNX Runtime on the CPU: {exc}"
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
