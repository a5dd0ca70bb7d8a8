"""Quantization modes: one entry per ``quantize.mode``, carrying its ONNX-file -> ONNX-file
converter (ONNX Runtime's own tools), its bytes per weight and whether it trains with fake
quantization. ``QuantizeConfig``, the pipeline, the search space and the search's size estimate
all read this registry, so a new mode is one entry here plus its tests.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
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
from onnxruntime.transformers.float16 import (
    DEFAULT_OP_BLOCK_LIST,
    convert_float_to_float16,
)

from stages._context import Context, Split

__all__ = ["INT8_FORMATS", "QUANT_MODES", "QuantMode", "Quantizer", "QuantizerSettings", "TrainingCalibration"]


class QuantizerSettings(Protocol):
    """What a quantizer reads of its settings besides the mode: ONNX Runtime's int8 layout
    (``INT8_FORMATS`` key) and how many training samples calibrate the activation ranges.
    ``stages.config.QuantizeConfig`` has both (it validates against this module, which therefore
    names no config type)."""

    @property
    def format(self) -> str: ...

    @property
    def calibration_samples(self) -> int: ...


Quantizer = Callable[[Path, Path, QuantizerSettings, Context], None]

# ``quantize.format`` -> ONNX Runtime's layout of a statically quantized graph.
INT8_FORMATS: dict[str, QuantFormat] = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}

# Samples per calibration batch (the exported graph has a dynamic batch axis).
CALIBRATION_BATCH = 32


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


def _none(src: Path, dst: Path, config: QuantizerSettings, ctx: Context) -> None:
    shutil.copyfile(src, dst)


# Ops left in float32 by fp16: the converter's defaults, and LayerNormalization, whose fp16 form
# crashes ONNX Runtime 1.32's CPU session at full graph optimisation (a segfault while creating
# the session for a Vision Transformer; it runs at the "extended" level and in fp32).
FP16_BLOCKED_OPS = (*DEFAULT_OP_BLOCK_LIST, "LayerNormalization")


def _fp16(src: Path, dst: Path, config: QuantizerSettings, ctx: Context) -> None:
    model = convert_float_to_float16(
        onnx.load(src), keep_io_types=True, op_block_list=list(FP16_BLOCKED_OPS)
    )
    onnx.save_model(model, dst)


def _int8_dynamic(src: Path, dst: Path, config: QuantizerSettings, ctx: Context) -> None:
    # Activations are quantized at run time, so there is no calibration and no format choice:
    # ORT writes ConvInteger / MatMulInteger nodes (all run on its CPU provider).
    prepared = _pre_process(src, dst)
    quantize_dynamic(prepared, dst, per_channel=True, weight_type=QuantType.QInt8)


def _int8_static_with(method: CalibrationMethod, **options: Any) -> Quantizer:
    """A static int8 quantizer whose activation ranges come from ``method`` over training samples."""

    def quantize(src: Path, dst: Path, config: QuantizerSettings, ctx: Context) -> None:
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
            calibrate_method=method,
            # No "CalibMaxIntermediateOutputs": in onnxruntime 1.32 it discards the held batches
            # without folding them into the ranges, so calibration would silently see only the
            # last few. Memory grows with calibration_samples instead.
            extra_options=options,
        )

    return quantize


_int8_static = _int8_static_with(CalibrationMethod.MinMax)


@dataclasses.dataclass(frozen=True)
class QuantMode:
    """A ``quantize.mode``: ``quantizer(fp32 onnx, output path, settings, ctx)`` writes the final
    file; ``bytes_per_weight`` estimates its size from a parameter count before any training;
    ``fake_quant_training`` trains with fake quantization during distillation (which it needs).
    ``searched_by_default`` puts it among the default space's choices: a mode added later keeps
    it False, since a new choice would change the categorical dimension of every existing
    default-space study, which Optuna then refuses to resume; a space file opts in to it."""

    quantizer: Quantizer
    bytes_per_weight: float
    description: str
    fake_quant_training: bool = False
    searched_by_default: bool = True


# QAT models reach the quantizer as plain modules with quantization-friendly weights; they are
# converted like static PTQ.
QUANT_MODES: dict[str, QuantMode] = {
    "none": QuantMode(_none, 4.0, "fp32 as exported"),
    "fp16": QuantMode(
        _fp16, 2.0, "weights and arithmetic in half precision; inputs and outputs stay float32"
    ),
    "int8-dynamic": QuantMode(
        _int8_dynamic, 1.0, "int8 weights, activations quantized on the fly"
    ),
    "int8-static": QuantMode(
        _int8_static, 1.0, "int8 weights and activations, ranges calibrated on training samples"
    ),
    "int8-qat": QuantMode(
        _int8_static,
        1.0,
        "as int8-static, after training with fake quantization during distillation",
        fake_quant_training=True,
    ),
    "int8-static-percentile": QuantMode(
        _int8_static_with(CalibrationMethod.Percentile, CalibPercentile=99.99),
        1.0,
        "as int8-static, activation ranges clipped at the 99.99th percentile of calibration "
        "values (outliers no longer widen the int8 step)",
        searched_by_default=False,
    ),
}


def _pre_process(src: Path, dst: Path) -> Path:
    """ORT's recommended preparation (shape inference, graph optimisation) before int8."""
    prepared = dst.with_name("prepared.onnx")
    quant_pre_process(src, prepared)
    return prepared


def _input_name(path: Path) -> str:
    return onnx.load(path, load_external_data=False).graph.input[0].name

