"""Export: a torch module becomes the deployable artifact, an fp32 ONNX file with a dynamic batch
axis (input ``input``, output ``logits``). Every number of a trial is measured on this file or
on its quantized successor, never on the torch object."""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import onnx
import torch
from onnxscript import ir
from onnx.external_data_helper import convert_model_to_external_data
from torch import nn

from stages._base import OnnxFile
from stages._context import Context, Split
from stages._graph import named_weights, on_device_in_eval, structure_of
from stages._onnx_registry import reuse_registry
from stages.config import ExportConfig
from stages.errors import StageError
from stages.files import atomic_path, temp_beside, write_atomic
from stages.measure import OnnxRunner, onnx_accuracy, torch_accuracy

__all__ = [
    "EXPORT_FORMATS",
    "FP32_ONNX_NAME",
    "Export",
    "ExportFormat",
    "ExportedProgram",
    "Runtime",
    "TracedGraph",
    "export_onnx",
    "export_onnx_external",
    "export_pt2",
    "trace_onnx",
    "to_external_data",
]

FP32_ONNX_NAME = "model.fp32.onnx"
EXTERNAL_DATA_SUFFIX = ".data"
_INLINE_TYPES = (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
INPUT_NAME = "input"
OUTPUT_NAME = "logits"


@dataclasses.dataclass(frozen=True)
class Export:
    """Write ``ctx.workdir / "model.fp32.onnx"`` from the module (exported on the CPU, in eval
    mode; the module's device and mode are restored afterwards). With ``traced``, the graph of
    a module of the same structure traced earlier (the untrained structural student's, see
    ``TracedGraph``), the file is written from it instead of tracing the module again."""

    config: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    traced: TracedGraph | None = dataclasses.field(default=None, kw_only=True)
    name: ClassVar[str] = "export"

    def run(self, model: nn.Module, ctx: Context) -> OnnxFile:
        path = ctx.workdir / FP32_ONNX_NAME
        if self.traced is not None and self.traced.opset == self.config.opset and self.traced.fits(model):
            self.traced.write(model, path)
        else:
            export_onnx(model, ctx.data.example_input(), path, opset=self.config.opset)
        return OnnxFile(path)


@dataclasses.dataclass(frozen=True)
class TracedGraph:
    """A module's ONNX graph as the dynamo exporter traced it, before the weights are folded in
    and the graph optimized (``optimize=False``): ``write`` makes the exported file of any module
    of the same ``structure`` from it (its weights applied, then the exporter's own optimization,
    which folds batch norms into convolutions with their values), so the file is byte for byte
    the one tracing that module would give (``export_onnx`` writes every file this way).

    Why: a trial measures its untrained structural student's file before training and exports
    its trained student at the end. Training changes weights, never the structure, and
    torch.export lifts weights as graph inputs (a trace cannot depend on their values), so the
    second trace (1.5-6 s of a demo trial, on this machine) repeated the first; writing from the
    kept graph takes under 0.1 s. ``structure`` is the module tree as printed (every module's
    type and settings) and the name, shape and dtype of every parameter and buffer: a module
    that differs in any of them is traced again (``Export``)."""

    structure: str
    unoptimized: bytes  # the serialized ModelProto, before optimization
    opset: int

    def fits(self, model: nn.Module) -> bool:
        """Whether ``model`` has the structure this graph was traced from."""
        return structure_of(model) == self.structure

    def write(self, model: nn.Module, path: Path) -> Path:
        """Write the ONNX file of ``model`` (of this structure) at ``path`` (atomically), checked."""
        if not self.fits(model):
            raise ValueError(f"{type(model).__name__} has another structure than the traced graph; trace it.")
        program = torch.onnx.ONNXProgram(ir.serde.deserialize_model(onnx.ModelProto.FromString(self.unoptimized)), None)
        lifted = program.model.graph.initializers
        weights = {name: tensor.detach().cpu() for name, tensor in named_weights(model).items() if name in lifted}
        program.apply_weights(weights)
        program.optimize()
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
        write_atomic(Path(path), proto.SerializeToString())
        return Path(path)


def trace_onnx(model: nn.Module, example: torch.Tensor, opset: int = 18) -> TracedGraph:
    """Trace ``model`` with the dynamo exporter (the TorchScript-based one is deprecated, and its
    operator registry is built once per process: ``stages._onnx_registry``) into a
    ``TracedGraph``, with a dynamic batch axis, input ``input`` and output ``logits``."""
    reuse_registry()
    with on_device_in_eval(model, "cpu"):  # exported on the CPU, then put back
        try:
            with _out_of_place_activations(model):
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
                    optimize=False,
                )
        except Exception as exc:
            raise StageError(
                "export", f"torch.onnx.export failed for {type(model).__name__}: {_root_cause(exc)}"
            ) from exc
        structure = structure_of(model)
    return TracedGraph(structure, ir.serde.serialize_model(program.model).SerializeToString(), opset)


@contextlib.contextmanager
def _out_of_place_activations(model: nn.Module) -> Iterator[None]:
    """``torch.nn`` layers set to work in place (``nn.ReLU6(inplace=True)``, ...) computing out of
    place for the block: the same graph (the same operators and weights), traced in 0.56x the CPU
    time on MobileNetV2, whose 35 ReLU6 layers are in place (torch.export's decomposition pass
    functionalizes each in-place op; two thirds of an export were that pass)."""
    flipped = [
        m for m in model.modules() if getattr(m, "inplace", None) is True and type(m).__module__.startswith("torch.nn.")
    ]
    for module in flipped:
        module.inplace = False
    try:
        yield
    finally:
        for module in flipped:
            module.inplace = True


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int = 18) -> Path:
    """Export ``model`` to an fp32 ONNX file at ``path`` (atomically) and check it.

    Traced (``trace_onnx``), then written from the trace (``TracedGraph.write``): the
    exporter's optimization with the module's weights. The debug metadata it records (Python
    stack traces, module paths, the torch.export graph signature) is dropped: it is no part of
    the model, leaks local file paths and, on a small compressed model, would be a sizeable
    share of the bytes the size ratio is computed from.
    """
    return trace_onnx(model, example, opset).write(model, path)


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


def export_onnx_external(model: nn.Module, example: torch.Tensor, path: Path, opset: int = 18) -> Path:
    """Export ``model`` as ``export_onnx`` does, with its weights in ``path + ".data"`` beside the
    graph (see ``to_external_data``)."""
    path = Path(path)
    tmp = temp_beside(path)
    try:
        export_onnx(model, example, tmp, opset=opset)
        to_external_data(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def to_external_data(source: Path, path: Path) -> tuple[Path, ...]:
    """Write the ONNX model at ``source`` to ``path`` with its weights in one external data file,
    ``path + ".data"`` (ONNX Runtime reads it from beside the graph): for graphs over protobuf's
    2 GB limit and runtimes that map weights from disk. Returns ``(path, data file)``."""
    path = Path(path)
    data = path.with_name(path.name + EXTERNAL_DATA_SUFFIX)
    model = onnx.load(str(source))
    # Every tensor goes out, also the small weights of a small model, except the integer ones: they
    # are shapes and axes, which ONNX Runtime must read while it loads the graph.
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location=data.name, size_threshold=0)
    for tensor in model.graph.initializer:
        if tensor.data_type in _INLINE_TYPES:
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
    onnx.save_model(model, str(path))
    data.chmod(path.stat().st_mode & 0o777)  # onnx creates it private; it ships with the graph
    return path, data


def copy_file(source: Path, path: Path) -> tuple[Path, ...]:
    """Write a stored file as it is (byte for byte)."""
    shutil.copyfile(source, path)
    return (Path(path),)


def onnx_io(path: Path) -> dict[str, Any]:
    """The graph's input name and shape (a symbolic batch axis) and its output name."""
    graph = onnx.load(str(path), load_external_data=False).graph
    initialisers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    described: dict[str, Any] = {}
    if inputs:
        described["name"] = inputs[0].name
        described["onnx_shape"] = [d.dim_param or d.dim_value for d in inputs[0].type.tensor_type.shape.dim]
    if graph.output:
        described["output"] = graph.output[0].name
    return described


def _no_io(path: Path) -> dict[str, Any]:
    return {}


class ExportedProgram(nn.Module):
    """A loaded torch.export program as a module: its train/eval mode was fixed at export, and
    the program refuses ``eval()``, so switching modes is a no-op here."""

    def __init__(self, program_module: nn.Module) -> None:
        super().__init__()
        self.program = program_module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

    def train(self, mode: bool = True) -> ExportedProgram:
        return self


def _load_onnx(path: Path, threads: int) -> OnnxRunner:
    return OnnxRunner(path, threads=threads)


def _load_pt2(path: Path, threads: int) -> nn.Module:
    return ExportedProgram(torch.export.load(str(path)).module())


def _pt2_accuracy(model: nn.Module, split: Split, batch_size: int) -> float:
    return torch_accuracy(model, split, device=torch.device("cpu"), batch_size=batch_size)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Where a format runs: ``load(path, threads)`` opens a file on the CPU and
    ``accuracy(loaded, split, batch_size)`` measures its top-1 accuracy in percent, as the search
    measures. ``name`` is how messages call it, ``label`` how the sidecar does."""

    name: str
    label: str
    load: Callable[[Path, int], Any]
    accuracy: Callable[[Any, Split, int], float]


ONNX_RUNTIME = Runtime("ONNX Runtime", "onnxruntime (CPUExecutionProvider)", _load_onnx, onnx_accuracy)
TORCH_RUNTIME = Runtime("torch", "torch (CPU)", _load_pt2, _pt2_accuracy)


@dataclasses.dataclass(frozen=True)
class ExportFormat:
    """An artifact format a trial can ship, with what every caller needs.

    - ``writer(model, example input, path) -> path`` writes it from a torch module;
    - a trial stores a file of it as ``file_name`` in its workdir, or, when ``stored_as`` names
      another format, the file is made from that format's stored file: ``make(stored, path)``
      writes it (no re-training) and returns the files written, the model first;
    - ``runtime`` loads and measures it; ``io(path)`` names its input and output for the
      sidecar;
    - ``measured``: it runs the very graph whose latency the search measured, so the measured
      session settings apply; ``quantized``: a quantized trial stores it too.
    """

    writer: Callable[[nn.Module, torch.Tensor, Path], Path]
    file_name: str
    description: str
    runtime: Runtime
    make: Callable[[Path, Path], tuple[Path, ...]] = copy_file
    stored_as: str | None = None
    io: Callable[[Path], dict[str, Any]] = _no_io
    measured: bool = False
    quantized: bool = False

    @property
    def suffix(self) -> str:
        return Path(self.file_name).suffix

    def stored(self) -> ExportFormat:
        """The entry of the file a trial stores for this format (itself, or ``stored_as``'s)."""
        return EXPORT_FORMATS[self.stored_as] if self.stored_as is not None else self


# Artifact format -> its entry (``search export --format`` offers these names).
EXPORT_FORMATS: dict[str, ExportFormat] = {
    "onnx": ExportFormat(
        export_onnx, "model.onnx", "the measured artifact, ONNX as ONNX Runtime ran it", ONNX_RUNTIME,
        io=onnx_io, measured=True, quantized=True,
    ),
    "onnx-external": ExportFormat(
        export_onnx_external, "model.onnx",
        "the measured ONNX graph with its weights in FILE.data beside it (ONNX external data)",
        ONNX_RUNTIME, make=to_external_data, stored_as="onnx", io=onnx_io, measured=True, quantized=True,
    ),
    "pt2": ExportFormat(
        export_pt2, "model.pt2",
        "the unquantized PyTorch model as a torch.export program (torch.export.load; TorchScript is "
        "deprecated in torch 2.14), when the trial saved one",
        TORCH_RUNTIME,
    ),
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


