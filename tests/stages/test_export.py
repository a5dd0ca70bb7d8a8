"""Export stage: a checked fp32 ONNX file with a dynamic batch axis whose predictions are the
PyTorch model's, written atomically and quietly; the PyTorch-native ``.pt2`` format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from stages._base import OnnxFile
from stages._context import Context, TaskData
from stages.config import ExportConfig
from stages.errors import StageError
from stages.export import (
    EXPORT_FORMATS,
    FP32_ONNX_NAME,
    Export,
    export_onnx,
    export_pt2,
    to_external_data,
)
from stages.measure import OnnxRunner, onnx_accuracy, torch_accuracy
from tests.support import count_calls
from tests.tiny_models import TINY_MODELS, make_tiny_cnn, train_briefly

torch.set_num_threads(1)


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_export_writes_a_checked_onnx_file_that_matches_torch_at_any_batch(
    name: str, data: TaskData, tmp_path: Path
) -> None:
    model = TINY_MODELS[name]()
    ctx = Context(data=data, teacher=model, workdir=tmp_path)
    exported = Export(ExportConfig(opset=18)).run(model, ctx)

    assert exported == OnnxFile(tmp_path / FP32_ONNX_NAME)
    proto = onnx.load(exported.path)
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {18}
    assert sorted(p.name for p in tmp_path.iterdir()) == [FP32_ONNX_NAME]  # no temp files left

    runner = OnnxRunner(exported.path, threads=1)
    for batch in (1, 5):
        x = data.val.x[:batch]
        with torch.inference_mode():
            expected = model(x).numpy()
        np.testing.assert_allclose(runner.predict(x.numpy()), expected, rtol=1e-4, atol=1e-5)


def test_export_drops_debug_metadata_but_keeps_the_model(data: TaskData, tmp_path: Path) -> None:
    path = export_onnx(make_tiny_cnn(), data.example_input(), tmp_path / "m.onnx")
    proto = onnx.load(path)
    assert not proto.graph.metadata_props
    assert all(not node.metadata_props for node in proto.graph.node)
    raw = path.read_bytes()
    # Stack traces would carry this test's file path into the deployable artifact.
    assert b"tiny_models.py" not in raw and b"stack_trace" not in raw
    weights = sum(p.numel() for p in make_tiny_cnn().parameters()) * 4
    assert weights < len(raw) < 1.15 * weights  # the file is the weights plus a small graph


def test_exported_fp32_accuracy_equals_torch_accuracy(data: TaskData, tmp_path: Path) -> None:
    model = train_briefly(make_tiny_cnn(), data, steps=60)
    path = export_onnx(model, data.example_input(), tmp_path / "m.onnx")
    runner = OnnxRunner(path, threads=1)
    for split in (data.val, data.test):
        in_torch = torch_accuracy(model, split, device=torch.device("cpu"), batch_size=32)
        in_ort = onnx_accuracy(runner, split, batch_size=32)
        assert in_torch > 50  # trained: far above the 10 % of chance
        assert abs(in_ort - in_torch) <= 100 / len(split) + 1e-9  # within one sample


def test_export_restores_mode_and_leaves_weights_alone(data: TaskData, tmp_path: Path) -> None:
    model = make_tiny_cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    export_onnx(model, data.example_input(), tmp_path / "m.onnx")
    assert model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this layer cannot be traced")


def test_failed_export_raises_stage_error_and_keeps_the_old_file(
    data: TaskData, tmp_path: Path
) -> None:
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous artifact")
    with pytest.raises(StageError, match="export: .*Broken.*cannot be traced"):
        export_onnx(Broken(), data.example_input(), target)
    with pytest.raises(StageError, match="export: .*Broken: RuntimeError: this layer cannot"):
        export_pt2(Broken(), data.example_input(), tmp_path / "m.pt2")
    assert target.read_bytes() == b"previous artifact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_pt2_export_round_trips_with_a_dynamic_batch(data: TaskData, tmp_path: Path) -> None:
    model = make_tiny_cnn()
    path = export_pt2(model, data.example_input(), tmp_path / "model.pt2")
    loaded = torch.export.load(path).module()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2"]
    x = data.val.x[:3]
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), model(x))


def test_torchscript_is_deprecated_which_is_why_pt2_is_offered(data: TaskData) -> None:
    with pytest.warns(FutureWarning, match="deprecated"):
        torch.jit.trace(make_tiny_cnn(), (data.example_input(),))
    assert "pt2" in EXPORT_FORMATS and not any("torchscript" in name for name in EXPORT_FORMATS)


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_every_export_format_writes_its_file(data: TaskData, tmp_path: Path, fmt: str) -> None:
    entry = EXPORT_FORMATS[fmt]
    assert entry.file_name == f"model{entry.suffix}" and entry.description
    path = entry.writer(make_tiny_cnn(), data.example_input(), tmp_path / entry.file_name)
    assert path == tmp_path / entry.file_name and path.stat().st_size > 0


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_every_export_format_is_loaded_and_measured_by_its_runtime(data: TaskData, tmp_path: Path, fmt: str) -> None:
    """What ``export`` verifies with: the entry's runtime scores the file as the model scores."""
    entry = EXPORT_FORMATS[fmt]
    model = train_briefly(make_tiny_cnn(), data, steps=60)
    path = entry.writer(model, data.example_input(), tmp_path / entry.file_name)
    measured = entry.runtime.accuracy(entry.runtime.load(path, 1), data.val, 64)
    expected = torch_accuracy(model, data.val, device=torch.device("cpu"), batch_size=64)
    assert abs(measured - expected) <= 100 / len(data.val) + 1e-9
    assert entry.io(path).get("name", "input") == "input"


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_every_export_format_is_made_from_the_file_a_trial_stores(data: TaskData, tmp_path: Path, fmt: str) -> None:
    entry = EXPORT_FORMATS[fmt]
    stored = entry.stored()
    (tmp_path / "stored").mkdir()
    source = stored.writer(make_tiny_cnn(), data.example_input(), tmp_path / "stored" / stored.file_name)
    (tmp_path / "out").mkdir()
    written = entry.make(source, tmp_path / "out" / "m")
    assert written[0] == tmp_path / "out" / "m" and all(f.is_file() for f in written)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f.name for f in written)
    entry.runtime.load(written[0], 1)


def test_onnx_external_data_holds_the_weights_beside_the_graph(data: TaskData, tmp_path: Path) -> None:
    model = make_tiny_cnn()
    inline = export_onnx(model, data.example_input(), tmp_path / "inline.onnx")
    graph, weights = to_external_data(inline, tmp_path / "m.onnx")
    assert weights == tmp_path / "m.onnx.data"
    proto = onnx.load(str(graph), load_external_data=False)
    weights_inside = [t.name for t in proto.graph.initializer
                      if t.data_type == onnx.TensorProto.FLOAT and t.data_location != onnx.TensorProto.EXTERNAL]
    assert proto.graph.initializer and weights_inside == []
    # The weights moved out of the graph, none lost: the bytes add up, the outputs are the same.
    assert graph.stat().st_size < inline.stat().st_size / 4
    assert graph.stat().st_size + weights.stat().st_size >= inline.stat().st_size * 0.9
    x = data.val.x[:5].numpy()
    np.testing.assert_allclose(OnnxRunner(graph).predict(x), OnnxRunner(inline).predict(x), rtol=1e-6, atol=1e-6)


def test_the_exporters_operator_registry_is_built_once_a_process_and_changes_no_file(
    data: TaskData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch.onnx._internal.exporter import _registration

    from stages import _onnx_registry

    class Counting:
        """torchlib's operator list, counting how often the exporter builds its registry from it."""

        def __init__(self, inner: object) -> None:
            self.inner, self.builds = inner, 0

        def get_torchlib_ops(self) -> object:
            self.builds += 1
            return self.inner.get_torchlib_ops()  # type: ignore[attr-defined]

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

    counting = Counting(_registration.onnxscript_apis)
    monkeypatch.setattr(_registration, "onnxscript_apis", counting)
    monkeypatch.setattr(_onnx_registry, "_BUILT", {})
    first = export_onnx(make_tiny_cnn(), data.example_input(), tmp_path / "a.onnx")
    other = export_onnx(TINY_MODELS[sorted(TINY_MODELS)[-1]](), data.example_input(), tmp_path / "b.onnx")
    export_onnx(make_tiny_cnn(), data.example_input(), tmp_path / "c.onnx")
    assert counting.builds == 1  # three exports, one registry (each export built its own before)
    assert other.read_bytes() != first.read_bytes()
    # The same model gives the same file from a registry built for it and from the reused one.
    torch.manual_seed(0)
    model = make_tiny_cnn()
    monkeypatch.setattr(_onnx_registry, "_BUILT", {})
    built = export_onnx(model, data.example_input(), tmp_path / "built.onnx").read_bytes()
    assert export_onnx(model, data.example_input(), tmp_path / "reused.onnx").read_bytes() == built
    assert counting.builds == 2
    # Each caller gets its own copy of the table: what one registers is not in the next one's.
    registry = _registration.ONNXRegistry.from_torchlib()
    registry.functions.clear()
    assert _registration.ONNXRegistry.from_torchlib().functions


def test_export_traces_in_place_activations_out_of_place_and_puts_them_back(
    data: TaskData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.export's decomposition functionalizes each in-place op, which made MobileNetV2's
    export take 1.8x the CPU time; out-of-place layers give the same graph."""
    traced = count_calls(
        monkeypatch, torch.onnx, "export", lambda model, *a, **k: [m.inplace for m in model.modules() if isinstance(m, nn.ReLU)]
    )
    model = make_tiny_cnn()
    path = export_onnx(model, data.example_input(), tmp_path / "m.onnx")
    assert traced == [[False, False, False]]
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))
    x = data.val.x[:5]
    with torch.inference_mode():
        expected = model.eval()(x).numpy()
    np.testing.assert_allclose(OnnxRunner(path).predict(x.numpy()), expected, rtol=1e-4, atol=1e-5)
