"""The pipeline's records: what each stage is recorded with, and no validation pass twice."""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch_pruning as tp

from stages import measure
from stages._context import Context, TaskData
from stages.config import PipelineConfig
from stages.measure import torch_accuracy
from stages.pipeline import run_pipeline
from tests.support import count_calls
from tests.tiny_models import make_tiny_cnn, train_briefly

torch.set_num_threads(1)

CONFIG = {"prune.ratio": 0.3, "distill.epochs": 1.0, "quantize.mode": "int8-dynamic"}


@pytest.fixture(scope="module")
def teacher(data: TaskData) -> torch.nn.Module:
    return train_briefly(make_tiny_cnn(), data, steps=60)


def _context(data: TaskData, teacher: torch.nn.Module, workdir: Path, **kw: object) -> Context:
    return Context(data=data, teacher=teacher, workdir=workdir, batch_size=32, **kw)  # type: ignore[arg-type]


def _count_val_passes(monkeypatch: pytest.MonkeyPatch, data: TaskData) -> list[int]:
    calls: list[int] = []
    real = measure.torch_accuracy

    def counting(model, split, **kw):  # type: ignore[no-untyped-def]
        if split is data.val:
            calls.append(1)
        return real(model, split, **kw)

    for module in ("stages.measure", "stages.distill"):
        monkeypatch.setattr(f"{module}.torch_accuracy", counting)
    return calls


def test_watched_distill_keeps_its_final_report_instead_of_measuring_again(
    data: TaskData, teacher: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports: list[tuple[str, float, float]] = []
    calls = _count_val_passes(monkeypatch, data)
    measured = _keep_measured_models(monkeypatch)
    ctx = _context(
        data, teacher, tmp_path, on_progress=lambda *a: reports.append(a), report_fractions=(0.5, 1.0)
    )
    result = run_pipeline(PipelineConfig.from_flat(CONFIG), ctx)

    assert [(s, f) for s, f, _ in reports] == [("distill", 0.5), ("distill", 1.0)]
    distill = next(r for r in result.stages if r.stage == "distill")
    assert distill.metrics["val_acc"] == reports[-1][2]
    assert len(calls) == 2  # the two reports: none after prune (distill follows) or after distill
    # The kept number is the model's: measuring the distilled model again gives the same.
    distilled = measured[1]  # measure_torch after prune, then after distill
    again = torch_accuracy(distilled, data.val, device=ctx.device, batch_size=ctx.eval_batch_size)
    assert again == pytest.approx(distill.metrics["val_acc"], abs=1e-9)
    # And the exported file, run in ONNX Runtime, agrees with the module within a few samples.
    assert result.metrics["val_acc"] == pytest.approx(distill.metrics["val_acc"], abs=2.0)


def _keep_measured_models(monkeypatch: pytest.MonkeyPatch) -> list[torch.nn.Module]:
    """A copy of each module the pipeline records torch metrics of, in order."""
    models: list[torch.nn.Module] = []
    real = measure.measure_torch

    def keeping(model, ctx, **kw):  # type: ignore[no-untyped-def]
        models.append(copy.deepcopy(model))
        return real(model, ctx, **kw)

    monkeypatch.setattr("stages.pipeline.measure_torch", keeping)
    return models


def test_unwatched_pipeline_measures_each_torch_stage(
    data: TaskData, teacher: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_val_passes(monkeypatch, data)
    ctx = _context(data, teacher, tmp_path)
    result = run_pipeline(PipelineConfig.from_flat(CONFIG), ctx)
    assert len(calls) == 1  # after distill; not after prune, which distillation follows
    prune, distill = (next(r for r in result.stages if r.stage == s) for s in ("prune", "distill"))
    assert "val_acc" in distill.metrics and "val_acc" not in prune.metrics
    assert "gzip_bytes" in distill.metrics and "gzip_bytes" not in prune.metrics  # the last is exported
    # Prune's record still holds its shape: the pruned student's, which distillation keeps.
    teacher_params = measure.measure_torch(teacher, ctx, accuracy=False, gzip_bytes=False)["params"]
    assert prune.metrics["params"] == distill.metrics["params"] < teacher_params


def test_a_stage_no_distillation_follows_is_measured(
    data: TaskData, teacher: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_val_passes(monkeypatch, data)
    config = {"prune.ratio": 0.3, "distill.epochs": 0.0, "cluster.k": 16, "quantize.mode": "none"}
    result = run_pipeline(PipelineConfig.from_flat(config), _context(data, teacher, tmp_path))
    assert len(calls) == 2  # after prune and after cluster
    assert [r.stage for r in result.stages if "val_acc" in r.metrics] == ["prune", "cluster", "export"], result.stages


def test_test_accuracy_is_measured_only_within_the_validation_bound(
    data: TaskData, teacher: torch.nn.Module, tmp_path: Path
) -> None:
    config = PipelineConfig.from_flat({"prune.ratio": 0.3})
    kept = run_pipeline(config, _context(data, teacher, tmp_path / "a", test_min_val_acc=0.0))
    assert kept.metrics["test_acc"] > 0 and kept.metrics["n_test"] == len(data.test)
    skipped = run_pipeline(config, _context(data, teacher, tmp_path / "b", test_min_val_acc=100.01))
    assert "test_acc" not in skipped.metrics and "n_test" not in skipped.metrics
    assert skipped.metrics["val_acc"] == kept.metrics["val_acc"]


def test_fp32_file_before_quantization_is_recorded_by_size_only(
    data: TaskData, teacher: torch.nn.Module, tmp_path: Path
) -> None:
    result = run_pipeline(PipelineConfig.from_flat(CONFIG), _context(data, teacher, tmp_path))
    export, quantize = (next(r for r in result.stages if r.stage == s) for s in ("export", "quantize"))
    assert set(export.metrics) == {"bytes", "gzip_bytes", "params", "macs"}
    assert export.metrics["bytes"] > 2 * quantize.metrics["bytes"]  # int8 weights
    assert {"val_acc", "test_acc", "latency_ms"} <= set(quantize.metrics)


def test_a_boosted_distillation_records_the_epochs_it_trained(
    data: TaskData, teacher: torch.nn.Module, tmp_path: Path
) -> None:
    config = {**CONFIG, "prune.ratio": 0.6, "quantize.mode": "none"}
    plain = run_pipeline(PipelineConfig.from_flat(config), _context(data, teacher, tmp_path / "a"))
    boosted = run_pipeline(
        PipelineConfig.from_flat({**config, "distill.size_boost": 100.0}), _context(data, teacher, tmp_path / "b")
    )
    plain_distill, distill = (next(r for r in res.stages if r.stage == "distill") for res in (plain, boosted))
    assert "epochs" not in plain_distill.metrics
    ratio = measure.measure_torch(teacher, _context(data, teacher, tmp_path), accuracy=False)["macs"] / distill.metrics["macs"]
    assert ratio > 1.5  # 60 % of the channels pruned
    assert distill.metrics["epochs"] == pytest.approx(ratio, rel=1e-6)  # 1 epoch times the MACs ratio
    # The samples each saw: 256 / batch 32 = 8 steps an epoch, times the epochs, times the batch.
    assert plain_distill.metrics["samples_seen"] == 8 * 32
    assert distill.metrics["samples_seen"] == round(8 * ratio) * 32


def test_distillation_reports_the_samples_it_will_see_before_it_trains(
    data: TaskData, teacher: torch.nn.Module, tmp_path: Path
) -> None:
    heard: list[dict[str, float]] = []
    for epochs in (1.5, 0.0):
        run_pipeline(
            PipelineConfig.from_flat({**CONFIG, "distill.epochs": epochs}),
            _context(data, teacher, tmp_path / str(epochs)),
            after_prune=heard.append,
        )
    assert [h["samples_seen"] for h in heard] == [12 * 32, 0]  # 1.5 epochs of 8 steps
    assert all("macs" in h for h in heard)


@pytest.mark.parametrize("mode", ["int8-dynamic", "int8-qat", "none"])
def test_a_trial_that_measured_its_untrained_student_traces_its_graph_once(
    data: TaskData, teacher: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    from stages import export, pipeline

    traces: list[str] = []
    real_trace, real_run = export.trace_onnx, export.Export.run
    exported: list[torch.nn.Module] = []

    def counting(model, example, opset=18):  # type: ignore[no-untyped-def]
        traces.append(type(model).__name__)
        return real_trace(model, example, opset)

    def keeping(self, model, ctx):  # type: ignore[no-untyped-def]
        exported.append(copy.deepcopy(model))
        return real_run(self, model, ctx)

    monkeypatch.setattr(export, "trace_onnx", counting)
    monkeypatch.setattr(pipeline, "trace_onnx", counting)
    monkeypatch.setattr(export.Export, "run", keeping)
    heard: list[dict[str, float]] = []
    config = PipelineConfig.from_flat({**CONFIG, "distill.epochs": 2.0, "quantize.mode": mode, "cluster.k": 16})
    run_pipeline(config, _context(data, teacher, tmp_path), on_untrained=heard.append)
    # One trace, before training: the trained student's file is written from it (after QAT's
    # fake quantization is stripped, and after clustering, as well).
    assert len(heard) == 1 and len(traces) == 1
    written = (tmp_path / export.FP32_ONNX_NAME).read_bytes()
    assert written != (tmp_path / "untrained" / export.FP32_ONNX_NAME).read_bytes()  # trained weights
    # Byte for byte what tracing the trained student gives: the same deployed file.
    fresh = export.export_onnx(exported[-1], data.example_input(), tmp_path / "fresh.onnx")
    assert written == fresh.read_bytes() and len(traces) == 2


def test_a_module_of_another_structure_is_traced_again(data: TaskData, tmp_path: Path) -> None:
    from stages import export
    from tests.tiny_models import TinyCNN

    small, wide = make_tiny_cnn(), TinyCNN(width=32).eval()
    traced = export.trace_onnx(small, data.example_input())
    assert traced.fits(copy.deepcopy(small)) and not traced.fits(wide)
    path = export.Export(traced=traced).run(wide, _context(data, wide, tmp_path)).path
    assert path.read_bytes() == export.export_onnx(wide, data.example_input(), tmp_path / "w.onnx").read_bytes()
    with pytest.raises(ValueError, match="another structure"):
        traced.write(wide, tmp_path / "x.onnx")


def test_a_trial_counts_params_and_macs_once_per_structure(
    data: TaskData, teacher: torch.nn.Module, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pruned student is counted once, though the records after prune and distillation, the
    untrained file, the fp32 file and the final one all carry its params and MACs."""
    counted = count_calls(monkeypatch, tp.utils, "count_ops_and_params")
    monkeypatch.setattr("stages._graph._COUNTS", OrderedDict())
    result = run_pipeline(PipelineConfig.from_flat(CONFIG), _context(data, teacher, tmp_path), on_untrained=lambda _: None)
    carrying = [r.metrics["macs"] for r in result.stages if "macs" in r.metrics]
    assert len(carrying) == 4 and len(set(carrying)) == 1  # prune, distill, export, quantize
    assert len(counted) == 1
