"""Quantize stage: every mode on every tiny model gives a ``model.onnx`` that runs in ONNX
Runtime on the CPU, with the expected operators, sizes and (measured) accuracy; calibration reads
the training split only; the ORT quantizer stays quiet."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from stages._base import OnnxFile
from stages._context import Context, Split, TaskData
from stages.config import PipelineConfig, QuantizeConfig
from stages.errors import ConfigError, StageError
from stages.export import FP32_ONNX_NAME, export_onnx
from stages.measure import OnnxRunner, onnx_accuracy
from stages.quant_modes import INT8_FORMATS, QUANT_MODES, QuantMode, TrainingCalibration
from stages.quantize import FINAL_ONNX_NAME, Quantize
from tests.tiny_models import TINY_MODELS, TinyCNN, no_warnings, train_briefly

torch.set_num_threads(1)

# (mode, int8 format) pairs: every mode, and both int8 formats of static quantization.
CASES = [
    ("none", "qdq"),
    ("fp16", "qdq"),
    ("int8-dynamic", "qdq"),
    ("int8-static", "qdq"),
    ("int8-static", "qoperator"),
    ("int8-qat", "qdq"),
    ("int8-static-percentile", "qdq"),
]

# Operators that show each conversion really happened.
EXPECTED_OPS = {
    ("int8-dynamic", "qdq"): {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"},
    ("int8-static", "qdq"): {"QuantizeLinear", "DequantizeLinear"},
    ("int8-static", "qoperator"): {"QLinearConv", "QuantizeLinear", "DequantizeLinear"},
    ("int8-qat", "qdq"): {"QuantizeLinear", "DequantizeLinear"},
    ("int8-static-percentile", "qdq"): {"QuantizeLinear", "DequantizeLinear"},
}


@pytest.fixture(scope="module")
def exported(data: TaskData, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each tiny model, trained a little and exported to fp32 ONNX once for the module."""
    root = tmp_path_factory.mktemp("fp32")
    paths = {}
    for name, make in TINY_MODELS.items():
        model = train_briefly(make(), data, steps=150)
        with no_warnings():
            paths[name] = export_onnx(model, data.example_input(), root / f"{name}.onnx")
    return paths


def _context(data: TaskData, workdir: Path, fp32: Path) -> tuple[Context, OnnxFile]:
    """A fresh workdir holding the fp32 export under its stage name, as the pipeline leaves it."""
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(fp32, workdir / FP32_ONNX_NAME)
    ctx = Context(data=data, teacher=nn.Identity(), workdir=workdir, seed=3)
    return ctx, OnnxFile(workdir / FP32_ONNX_NAME)


def _ops(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(path).graph.node}


@pytest.mark.parametrize(("mode", "fmt"), CASES)
@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_every_mode_writes_a_model_that_runs_in_ort_and_keeps_accuracy(
    name: str, mode: str, fmt: str, data: TaskData, exported: dict[str, Path], tmp_path: Path
) -> None:
    ctx, fp32 = _context(data, tmp_path, exported[name])
    out = Quantize(QuantizeConfig(mode=mode, format=fmt)).run(fp32, ctx)

    assert out == OnnxFile(tmp_path / FINAL_ONNX_NAME)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([FP32_ONNX_NAME, FINAL_ONNX_NAME])
    proto = onnx.load(out.path)
    # Inputs and outputs stay float32 in every mode: callers feed the same tensors.
    for value in (*proto.graph.input, *proto.graph.output):
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert EXPECTED_OPS.get((mode, fmt), set()) <= _ops(out.path)
    if mode == "none":
        assert out.path.read_bytes() == fp32.path.read_bytes()
    if mode == "fp16":
        assert onnx.TensorProto.FLOAT16 in {t.data_type for t in proto.graph.initializer}

    runner = OnnxRunner(out.path, threads=1)
    logits = runner.predict(data.val.x[:3].numpy())
    assert logits.shape == (3, data.num_classes) and np.isfinite(logits).all()
    # Accuracy is measured, not assumed: within three validation samples of fp32.
    fp32_acc = onnx_accuracy(OnnxRunner(fp32.path), data.val, batch_size=64)
    acc = onnx_accuracy(runner, data.val, batch_size=64)
    assert fp32_acc > 50
    assert abs(acc - fp32_acc) <= 3 * 100 / len(data.val)


def test_int8_is_about_a_quarter_and_fp16_half_of_fp32(data: TaskData, tmp_path: Path) -> None:
    """On a model whose file is mostly weights (TinyCNN at width 32, ~58k params)."""
    torch.manual_seed(0)
    fp32 = export_onnx(TinyCNN(width=32).eval(), data.example_input(), tmp_path / "wide.onnx")
    base = fp32.stat().st_size
    ratios = {}
    for mode, fmt in CASES:
        ctx, model = _context(data, tmp_path / f"{mode}-{fmt}", fp32)
        out = Quantize(QuantizeConfig(mode=mode, format=fmt)).run(model, ctx)
        ratios[mode, fmt] = out.path.stat().st_size / base
    assert ratios["none", "qdq"] == 1.0
    assert 0.45 < ratios["fp16", "qdq"] < 0.55
    for key in [("int8-dynamic", "qdq"), ("int8-static", "qdq"), ("int8-static", "qoperator")]:
        assert 0.2 < ratios[key] < 0.3, (key, ratios[key])


def test_calibration_reads_only_the_training_split(
    data: TaskData, exported: dict[str, Path], tmp_path: Path
) -> None:
    """Validation and test inputs made of NaN: calibrating on them would break the ranges."""
    nan = torch.full_like(data.val.x, float("nan"))
    poisoned = dataclasses.replace(
        data, val=Split(x=nan, y=data.val.y), test=Split(x=nan.clone(), y=data.test.y)
    )
    ctx, fp32 = _context(poisoned, tmp_path, exported["tiny_cnn"])
    out = Quantize(QuantizeConfig(mode="int8-static")).run(fp32, ctx)
    clean = OnnxRunner(out.path).predict(data.val.x.numpy())
    assert np.isfinite(clean).all()


def test_poisoned_training_data_does_break_calibration(
    data: TaskData, exported: dict[str, Path], tmp_path: Path
) -> None:
    """The check above has teeth: NaN in the training split does reach the calibrator."""
    nan = torch.full_like(data.train.x, float("nan"))
    poisoned = dataclasses.replace(data, train=Split(x=nan, y=data.train.y))
    ctx, fp32 = _context(poisoned, tmp_path, exported["tiny_cnn"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's all-NaN reductions
        with pytest.raises(StageError, match="quantize: mode int8-static failed") as caught:
            Quantize(QuantizeConfig(mode="int8-static")).run(fp32, ctx)
    # The quantizer's failure blames its mode, as fields (a search excludes the value from them).
    assert (caught.value.stage, caught.value.setting) == ("quantize", "quantize.mode")


def _input_scale(path: Path) -> float:
    """The scale with which the graph input is quantized (QDQ: the first QuantizeLinear)."""
    model = onnx.load(path)
    inputs = {i.name for i in model.graph.input}
    node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in inputs)
    scale = next(t for t in model.graph.initializer if t.name == node.input[1])
    return float(onnx.numpy_helper.to_array(scale))


def test_percentile_calibration_ignores_outliers_that_min_max_follows(
    data: TaskData, exported: dict[str, Path], tmp_path: Path
) -> None:
    """One training image with a pixel at 1000: min-max stretches the input's int8 step to fit
    it, the 99.99th percentile does not (so ordinary inputs keep their resolution)."""
    x = data.train.x.clone()
    x[0, 0, 0, 0] = 1000.0
    outlier = dataclasses.replace(data, train=Split(x=x, y=data.train.y))
    scales = {}
    for mode in ("int8-static", "int8-static-percentile"):
        ctx, fp32 = _context(outlier, tmp_path / mode, exported["tiny_cnn"])
        config = QuantizeConfig(mode=mode, calibration_samples=len(x))
        scales[mode] = _input_scale(Quantize(config).run(fp32, ctx).path)
    assert scales["int8-static"] >= 1000 / 255 * 0.99
    assert scales["int8-static-percentile"] < scales["int8-static"] / 10


def test_calibration_reader_draws_seeded_training_samples(data: TaskData) -> None:
    def batches(samples: int, seed: int) -> list[np.ndarray]:
        reader = TrainingCalibration(
            data.train, samples, seed, input_name="input", batch_size=32
        )
        out = []
        while (feed := reader.get_next()) is not None:
            out.append(feed["input"])
        return out

    drawn = batches(40, seed=5)
    assert [b.shape[0] for b in drawn] == [32, 8]
    rows = np.concatenate(drawn)
    train = data.train.x.numpy().reshape(len(data.train), -1)
    matches = [np.flatnonzero((train == row.reshape(1, -1)).all(axis=1)) for row in rows]
    assert all(len(m) == 1 for m in matches)  # every row is a training row...
    assert len({int(m[0]) for m in matches}) == 40  # ...drawn without repeats
    assert all(np.array_equal(a, b) for a, b in zip(drawn, batches(40, seed=5)))
    assert not np.array_equal(drawn[0], batches(40, seed=6)[0])
    assert sum(b.shape[0] for b in batches(10_000, seed=0)) == len(data.train)


def test_qat_is_converted_like_static_and_is_deterministic(
    data: TaskData, exported: dict[str, Path], tmp_path: Path
) -> None:
    outputs = []
    for mode in ("int8-static", "int8-qat"):
        ctx, fp32 = _context(data, tmp_path / mode, exported["tiny_resnet"])
        outputs.append(Quantize(QuantizeConfig(mode=mode)).run(fp32, ctx).path.read_bytes())
    assert outputs[0] == outputs[1]


def test_quantizer_is_quiet(
    data: TaskData,
    exported: dict[str, Path],
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = logging.getLogger()
    handlers, filters = list(root.handlers), list(root.filters)
    caplog.set_level(logging.INFO)
    for mode in ("int8-dynamic", "int8-static"):
        ctx, fp32 = _context(data, tmp_path / mode, exported["concat_depthwise_se"])
        Quantize(QuantizeConfig(mode=mode)).run(fp32, ctx)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == []
    assert root.handlers == handlers and root.filters == filters  # nothing left behind


def test_quantize_needs_an_exported_model(data: TaskData, tmp_path: Path) -> None:
    ctx = Context(data=data, teacher=nn.Identity(), workdir=tmp_path)
    with pytest.raises(StageError, match="expected an exported ONNX model.*got TinyCNN"):
        Quantize().run(TinyCNN(), ctx)  # type: ignore[arg-type]


def test_config_accepts_exactly_the_registered_modes_and_formats() -> None:
    for mode in QUANT_MODES:
        assert QuantizeConfig(mode=mode).mode == mode
    for fmt in INT8_FORMATS:
        assert QuantizeConfig(format=fmt).format == fmt
    with pytest.raises(ConfigError, match=r"quantize.mode must be one of none, fp16, .*got 'int4'"):
        QuantizeConfig(mode="int4")
    with pytest.raises(ConfigError, match=r"quantize.format must be one of qdq, qoperator, .*'qq'"):
        QuantizeConfig(format="qq")


def test_bytes_per_weight_match_the_stored_weight_types() -> None:
    assert {m: e.bytes_per_weight for m, e in QUANT_MODES.items()} == {
        "none": 4.0, "fp16": 2.0, "int8-dynamic": 1.0, "int8-static": 1.0, "int8-qat": 1.0,
        "int8-static-percentile": 1.0,
    }
    assert [m for m, e in QUANT_MODES.items() if e.fake_quant_training] == ["int8-qat"]


def test_a_new_mode_is_one_registry_entry(
    data: TaskData, exported: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def copy(src: Path, dst: Path, config: QuantizeConfig, ctx: Context) -> None:
        shutil.copyfile(src, dst)

    monkeypatch.setitem(QUANT_MODES, "copy", QuantMode(copy, 4.0, "test", fake_quant_training=True))
    ctx, fp32 = _context(data, tmp_path, exported["tiny_cnn"])
    out = Quantize(QuantizeConfig(mode="copy")).run(fp32, ctx)
    assert out.path.read_bytes() == fp32.path.read_bytes()
    # Its fake_quant_training flag brings the rule that int8-qat had alone.
    with pytest.raises(ConfigError, match="quantize.mode=copy fake-quantizes.*got 0.0"):
        PipelineConfig.from_flat({"quantize.mode": "copy", "distill.epochs": 0})
