"""Export: a torch module becomes the deployable artifact, an fp32 ONNX file with a dynamic batch
axis (input ``input``, output ``logits``). Every number of a trial is measured on this file or
on its quantized successor, never on the torch object."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import onnx
import torch
from torch import nn

from stages._base import OnnxFile
from stages._context import Context
from stages._graph import on_device_in_eval
from stages.config import ExportConfig
from stages.errors import StageError
from stages.files import atomic_path, write_atomic

__all__ = ["EXPORT_FORMATS", "FP32_ONNX_NAME", "Export", "ExportFormat", "export_onnx", "export_pt2"]

FP32_ONNX_NAME = "model.fp32.onnx"
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclasses.dataclass(frozen=True)
class Export:
    """Write ``ctx.workdir / "model.fp32.onnx"`` from the module (exported on the CPU, in eval
    mode; the module's device and mode are restored afterwards)."""

    config: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    name: ClassVar[str] = "export"

    def run(self, model: nn.Module, ctx: Context) -> OnnxFile:
        path = ctx.workdir / FP32_ONNX_NAME
        export_onnx(model, ctx.data.example_input(), path, opset=self.config.opset)
        return OnnxFile(path)


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int = 18) -> Path:
    """Export ``model`` to an fp32 ONNX file at ``path`` (atomically) and check it.

    Uses the dynamo exporter (the TorchScript-based one is deprecated). The debug metadata it
    records (Python stack traces, module paths, the torch.export graph signature) is dropped:
    it is no part of the model, leaks local file paths and, on a small compressed model, would
    be a sizeable share of the bytes the size ratio is computed from.
    """
    path = Path(path)
    with on_device_in_eval(model, "cpu"):  # exported on the CPU, then put back
        try:
            program = torch.onnx.export(
                model,
                (_batch_of_two(example),),
                None,
                dynamo=True,
                external_data=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
        except Exception as exc:
            raise StageError(
                "export", f"torch.onnx.export failed for {type(model).__name__}: {_root_cause(exc)}"
            ) from exc
    proto = program.model_proto
    _strip_debug_metadata(proto.graph)
    for function in proto.functions:
        _strip_debug_metadata(function)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise StageError(
            "export", f"the ONNX graph of {type(model).__name__} fails onnx.checker: "
            f"{_root_cause(exc)}"
        ) from exc
    write_atomic(path, proto.SerializeToString())
    return path


def export_pt2(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Save ``model`` as a ``torch.export`` program (``.pt2``, load with ``torch.export.load``).

    This is the PyTorch-native artifact; ``torch.jit.trace``/``torch.jit.save`` would be the
    TorchScript one, but torch 2.14 deprecates them with a ``FutureWarning``.
    """
    path = Path(path)
    with on_device_in_eval(model, "cpu"):  # exported on the CPU, then put back
        try:
            program = torch.export.export(
                model,
                (_batch_of_two(example),),
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )
        except Exception as exc:
            raise StageError(
                "export", f"torch.export.export failed for {type(model).__name__}: "
                f"{_root_cause(exc)}"
            ) from exc
        with atomic_path(path) as tmp:
            torch.export.save(program, tmp)
    return path


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """An artifact format a trial can ship: ``writer(model, example input, path) -> path``
    writes it; a trial's file of this format is ``file_name`` in its workdir."""

    writer: Callable[[nn.Module, torch.Tensor, Path], Path]
    file_name: str
    description: str

    @property
    def suffix(self) -> str:
        return Path(self.file_name).suffix


# Artifact format -> its entry (``search export --format`` offers these names).
EXPORT_FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat(export_onnx, "model.onnx", "ONNX, run in ONNX Runtime (measured)"),
    "pt2": ExportFormat(export_pt2, "model.pt2", "torch.export program (torch.export.load)"),
}


def _batch_of_two(example: torch.Tensor) -> torch.Tensor:
    # torch.export specialises a size-1 dimension to the constant 1, so a batch-1 example cannot
    # produce a dynamic batch axis; two rows can.
    example = example.detach().cpu()
    if example.shape[0] >= 2:
        return example
    return example[:1].repeat(2, *([1] * (example.dim() - 1)))


def _root_cause(exc: BaseException) -> str:
    """The innermost cause in one line (the exporter wraps it in a page of advice)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _strip_debug_metadata(graph: onnx.GraphProto | onnx.FunctionProto) -> None:
    """Drop the exporter's notes (graph signature, per-node stack traces, module paths)."""
    del graph.metadata_props[:]
    for node in graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _strip_debug_metadata(attribute.g)
            for subgraph in attribute.graphs:
                _strip_debug_metadata(subgraph)


