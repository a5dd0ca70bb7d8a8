"""Measurement: ONNX Runtime session settings, batched accuracy, file and gzip sizes,
interleaved latency (order, run counts, time budget) and the metric dicts of a file and of a
torch module."""

from __future__ import annotations

import gzip
import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from objectives import metrics
from stages import measure
from stages._context import Context, Split, TaskData
from stages.export import export_onnx
from stages.measure import (
    MIN_LATENCY_RUNS,
    OnnxRunner,
    file_sizes,
    interleaved_latency,
    measure_onnx,
    measure_torch,
    onnx_accuracy,
    onnx_correct,
    torch_accuracy,
)
from tests.tiny_models import (
    make_tiny_cnn,
    make_tiny_resnet,
    no_warnings,
    tiny_task_data,
    train_briefly,
)

torch.set_num_threads(1)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def data() -> TaskData:
    return tiny_task_data(n_train=128, n_val=48, n_test=40)


@pytest.fixture(scope="module")
def student(data: TaskData, tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    """A trained TinyCNN and its fp32 ONNX export."""
    model = train_briefly(make_tiny_cnn(), data, steps=40)
    with no_warnings():
        path = export_onnx(model, data.example_input(), tmp_path_factory.mktemp("s") / "s.onnx")
    return model, path


@pytest.fixture(scope="module")
def teacher_onnx(data: TaskData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    with no_warnings():
        return export_onnx(
            make_tiny_resnet(), data.example_input(), tmp_path_factory.mktemp("t") / "t.onnx"
        )


# --- OnnxRunner and accuracy ------------------------------------------------------------------


def test_runner_session_is_set_up_for_repeatable_timing(student: tuple[nn.Module, Path]) -> None:
    runner = OnnxRunner(student[1], threads=2)
    options = runner.session.get_session_options()
    assert runner.session.get_providers() == ["CPUExecutionProvider"]
    assert options.intra_op_num_threads == 2 and options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert runner.predict(np.zeros((3, 1, 8, 8), dtype=np.float64)).shape == (3, 10)
    with pytest.raises(ValueError, match="threads must be >= 1, but got 0"):
        OnnxRunner(student[1], threads=0)


class FixedRunner:
    """Predicts class ``x[:, 0, 0, 0] > 0`` and records the batch sizes it was given."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.batches.append(x.shape[0])
        positive = x[:, 0, 0, 0] > 0
        return np.stack([~positive, positive], axis=1).astype(np.float32)


def test_onnx_accuracy_is_batched_and_in_percent() -> None:
    x = torch.tensor([1.0, -1, 1, 1, -1, 1, -1, -1, 1, 1]).reshape(10, 1, 1, 1)
    y = torch.tensor([1, 0, 1, 0, 0, 1, 0, 1, 1, 1])  # 8 of 10 match the sign
    runner = FixedRunner()
    assert onnx_accuracy(runner, Split(x=x, y=y), batch_size=4) == pytest.approx(80.0)
    assert runner.batches == [4, 4, 2]
    with pytest.raises(ValueError, match="empty split"):
        onnx_accuracy(runner, Split(x=x[:0], y=y[:0]), batch_size=4)


def test_onnx_accuracy_equals_torch_accuracy(
    data: TaskData, student: tuple[nn.Module, Path]
) -> None:
    model, path = student
    in_ort = onnx_accuracy(OnnxRunner(path), data.val, batch_size=16)
    in_torch = torch_accuracy(model, data.val, device=CPU, batch_size=7)
    assert in_torch > 30  # trained: above the 10 % of chance
    assert abs(in_ort - in_torch) <= 100 / len(data.val) + 1e-9


# --- file sizes -------------------------------------------------------------------------------


def _with_sparse_weights(path: Path, out: Path, keep: float) -> Path:
    """Copy of an ONNX file whose float weights keep only their largest ``keep`` fraction."""
    proto = onnx.load(path)
    for init in proto.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.size > 100:
            cut = np.quantile(np.abs(w), 1 - keep)
            init.CopyFrom(numpy_helper.from_array(np.where(np.abs(w) >= cut, w, 0), init.name))
    onnx.save(proto, out)
    return out


def test_file_sizes_are_bytes_and_repeatable_gzip(
    student: tuple[nn.Module, Path], tmp_path: Path
) -> None:
    dense = student[1]
    size, zipped = file_sizes(dense)
    assert size == dense.stat().st_size
    assert zipped == len(gzip.compress(dense.read_bytes(), compresslevel=9, mtime=0))
    assert file_sizes(dense) == (size, zipped)
    assert zipped > 0.8 * size  # random-looking fp32 weights hardly compress

    sparse = _with_sparse_weights(dense, tmp_path / "sparse.onnx", keep=0.1)
    sparse_size, sparse_zipped = file_sizes(sparse)
    assert sparse_size == pytest.approx(size, rel=0.02)  # zeros take as many bytes...
    assert sparse_zipped < 0.35 * sparse_size  # ...until compressed


# --- interleaved latency ----------------------------------------------------------------------


class FakeClock:
    """Stands in for the ``time`` module: advances only when a fake model runs."""

    def __init__(self) -> None:
        self.now_ns = 0

    def perf_counter_ns(self) -> int:
        return self.now_ns


class FakeRunner:
    """Costs ``ms`` on the fake clock per run and logs its name into a shared call list."""

    def __init__(self, name: str, ms: float, clock: FakeClock, calls: list[str]) -> None:
        self.name, self.ms, self.clock, self.calls = name, ms, clock, calls

    def predict(self, x: np.ndarray) -> np.ndarray:
        assert x.shape[0] == 1 and x.dtype == np.float32
        self.calls.append(self.name)
        self.clock.now_ns += int(self.ms * 1e6)
        return np.zeros((1, 10), dtype=np.float32)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Callable[[float, float], tuple[FakeRunner, ...]]:
    clock = FakeClock()
    monkeypatch.setattr(measure, "time", clock)
    calls: list[str] = []

    def make(student_ms: float, teacher_ms: float) -> tuple[FakeRunner, FakeRunner]:
        return FakeRunner("s", student_ms, clock, calls), FakeRunner("t", teacher_ms, clock, calls)

    return make


EXAMPLE = np.zeros((1, 1, 8, 8), dtype=np.float32)


def test_latency_alternates_student_and_teacher_and_returns_their_medians(fake) -> None:
    student, teacher = fake(2.0, 3.0)
    s_ms, t_ms = interleaved_latency(student, teacher, EXAMPLE, runs=30, warmup=4, budget_s=0.1)
    assert (s_ms, t_ms) == (2.0, 3.0)
    calls = student.calls
    assert calls == ["s", "t"] * (len(calls) // 2)  # strictly turn about, warm-up included
    # 5 ms a pair: 30 runs take 0.15 s, past the 0.1 s budget, so exactly ``runs`` are timed.
    assert calls.count("s") == 4 + 30


def test_fast_models_get_up_to_three_times_the_runs_within_budget(fake) -> None:
    student, teacher = fake(0.5, 0.5)
    interleaved_latency(student, teacher, EXAMPLE, runs=100, warmup=10, budget_s=3.0)
    assert student.calls.count("s") == 10 + 300


def test_slow_models_stop_at_the_minimum_runs_once_the_budget_is_overrun(fake) -> None:
    student, teacher = fake(100.0, 150.0)  # 0.25 s a pair: 100 runs would take 25 s
    interleaved_latency(student, teacher, EXAMPLE, runs=100, warmup=2, budget_s=1.0)
    assert student.calls.count("s") == 2 + MIN_LATENCY_RUNS
    assert student.clock.now_ns / 1e9 == pytest.approx(0.25 * (2 + MIN_LATENCY_RUNS))


def test_medium_models_run_until_twice_the_budget(fake) -> None:
    student, teacher = fake(40.0, 60.0)  # 0.1 s a pair
    interleaved_latency(student, teacher, EXAMPLE, runs=100, warmup=0, budget_s=1.0)
    assert student.calls.count("s") == 20  # 2 s: twice the 1 s budget, 20 >= the minimum runs


def test_latency_without_teacher_times_the_student_only(fake) -> None:
    student, teacher = fake(1.5, 9.0)
    s_ms, t_ms = interleaved_latency(student, None, EXAMPLE, runs=20, warmup=3)
    assert s_ms == 1.5 and t_ms is None
    assert set(student.calls) == {"s"}


def test_latency_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="runs >= 1.*runs=0"):
        interleaved_latency(FixedRunner(), None, EXAMPLE, runs=0)


class Sleeper:
    """Sleeps ``seconds`` a run on the real clock and counts its runs (warm-up included)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.runs = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.runs += 1
        time.sleep(self.seconds)
        return np.zeros((1, 10), dtype=np.float32)


def test_latency_respects_the_time_budget_on_the_real_clock() -> None:
    student, teacher = Sleeper(0.004), Sleeper(0.006)
    s_ms, t_ms = interleaved_latency(student, teacher, EXAMPLE, runs=1000, warmup=1, budget_s=0.1)
    assert s_ms >= 4.0 and t_ms >= 6.0  # sleep never returns early
    # 20 pairs take at least 0.2 s, twice the budget: the loop stops at the minimum runs however
    # busy the machine (counting runs, not seconds, so load cannot make this fail).
    assert student.runs == teacher.runs == 1 + MIN_LATENCY_RUNS


def test_latency_of_real_onnx_models_is_positive(
    student: tuple[nn.Module, Path], teacher_onnx: Path
) -> None:
    s_ms, t_ms = interleaved_latency(
        OnnxRunner(student[1]), OnnxRunner(teacher_onnx), EXAMPLE, runs=30, budget_s=0.2
    )
    assert s_ms > 0 and t_ms is not None and t_ms > 0


# --- metric dicts -----------------------------------------------------------------------------


def _ctx(data: TaskData, tmp_path: Path, **kw: object) -> Context:
    return Context(
        data=data, teacher=nn.Identity(), workdir=tmp_path, latency_runs=20,
        latency_budget_s=0.1, eval_batch_size=16, **kw,
    )


def test_measure_onnx_returns_every_metric_measured_on_the_file(
    data: TaskData, student: tuple[nn.Module, Path], teacher_onnx: Path, tmp_path: Path
) -> None:
    model, path = student
    ctx = _ctx(data, tmp_path, baseline_onnx=teacher_onnx)
    # A different torch model: params and MACs come from it, every other number from the file.
    untrained = make_tiny_cnn(seed=7)
    result = measure_onnx(path, ctx, torch_model=untrained)

    assert set(result) == {
        metrics.VAL_ACC, metrics.TEST_ACC, metrics.BYTES, metrics.GZIP_BYTES, metrics.PARAMS,
        metrics.MACS, metrics.LATENCY_MS, metrics.TEACHER_LATENCY_MS, metrics.N_VAL,
        metrics.N_TEST, metrics.LATENCY_THREADS, metrics.TEACHER_LATENCY_THREADS, metrics.OPS,
        metrics.VAL_LOST, metrics.VAL_GAINED,
    }
    runner = OnnxRunner(path)
    assert result[metrics.VAL_ACC] == onnx_accuracy(runner, data.val, 16)
    # The paired counts are per image against the teacher's file on the same split.
    teacher_correct = onnx_correct(OnnxRunner(teacher_onnx), data.val, 16)
    student_correct = onnx_correct(runner, data.val, 16)
    assert result[metrics.VAL_LOST] == (teacher_correct & ~student_correct).sum()
    assert result[metrics.VAL_GAINED] == (~teacher_correct & student_correct).sum()
    assert result[metrics.VAL_LOST] + result[metrics.VAL_GAINED] > 0  # the two models differ
    teacher_acc = onnx_accuracy(OnnxRunner(teacher_onnx), data.val, 16)
    assert 100 * (result[metrics.VAL_LOST] - result[metrics.VAL_GAINED]) / 48 == pytest.approx(
        teacher_acc - result[metrics.VAL_ACC]
    )
    assert result[metrics.TEST_ACC] == onnx_accuracy(runner, data.test, 16)
    assert result[metrics.VAL_ACC] != torch_accuracy(untrained, data.val, device=CPU, batch_size=16)
    assert (result[metrics.BYTES], result[metrics.GZIP_BYTES]) == file_sizes(path)
    assert result[metrics.PARAMS] == sum(p.numel() for p in untrained.parameters())
    assert result[metrics.MACS] > result[metrics.PARAMS]  # convs reuse weights over positions
    assert (result[metrics.N_VAL], result[metrics.N_TEST]) == (48, 40)
    assert result[metrics.LATENCY_MS] > 0 and result[metrics.TEACHER_LATENCY_MS] > 0
    assert all(isinstance(v, float) for v in result.values())


def test_measure_onnx_leaves_out_what_it_cannot_measure(
    data: TaskData, student: tuple[nn.Module, Path], tmp_path: Path
) -> None:
    result = measure_onnx(student[1], _ctx(data, tmp_path))
    assert metrics.TEACHER_LATENCY_MS not in result  # no baseline to compare with
    assert metrics.VAL_LOST not in result and metrics.VAL_GAINED not in result
    assert metrics.PARAMS not in result and metrics.MACS not in result  # no torch model
    assert result[metrics.LATENCY_MS] > 0


def test_measure_torch_gives_cheap_torch_metrics(data: TaskData, tmp_path: Path) -> None:
    model = make_tiny_cnn().train()
    result = measure_torch(model, _ctx(data, tmp_path))
    assert model.training  # mode restored after evaluation
    assert result[metrics.VAL_ACC] == torch_accuracy(model, data.val, device=CPU, batch_size=5)
    assert result[metrics.N_VAL] == len(data.val)
    assert result[metrics.PARAMS] == sum(p.numel() for p in model.parameters())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert result[metrics.BYTES] == pytest.approx(len(buffer.getvalue()), rel=0.01)
    assert 0 < result[metrics.GZIP_BYTES] < result[metrics.BYTES]

    no_accuracy = measure_torch(model, _ctx(data, tmp_path), accuracy=False)
    assert metrics.VAL_ACC not in no_accuracy and no_accuracy[metrics.MACS] == result[metrics.MACS]
    no_gzip = measure_torch(model, _ctx(data, tmp_path), accuracy=False, gzip_bytes=False)
    assert metrics.GZIP_BYTES not in no_gzip and no_gzip[metrics.BYTES] == result[metrics.BYTES]


# --- best thread count, operator count --------------------------------------------------------


def test_each_model_is_timed_at_its_best_thread_count_all_sessions_turn_about(
    fake, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clock_runners: dict[tuple[str, int], FakeRunner] = {}
    # The student is fastest on 1 thread, the teacher on 2 (as small and large models here are).
    costs = {("s.onnx", 1): 1.0, ("s.onnx", 2): 1.5, ("t.onnx", 1): 4.0, ("t.onnx", 2): 3.0}
    template, _ = fake(0.0, 0.0)

    def runner(path: Path, threads: int = 1) -> FakeRunner:
        made = FakeRunner(f"{Path(path).name}@{threads}", costs[(Path(path).name, threads)], template.clock, template.calls)
        clock_runners[(Path(path).name, threads)] = made
        return made

    monkeypatch.setattr(measure, "OnnxRunner", runner)
    student, teacher = measure.best_latency(Path("s.onnx"), Path("t.onnx"), EXAMPLE, (1, 2), runs=20, budget_s=1.0)
    assert student == (1.0, 1) and teacher == (3.0, 2)
    timed = [c for c in template.calls]
    assert timed[:4] == ["s.onnx@1", "s.onnx@2", "t.onnx@1", "t.onnx@2"]  # one loop, turn about
    assert len({timed.count(name) for name in set(timed)}) == 1  # every session as many runs
    alone, none = measure.best_latency(Path("s.onnx"), None, EXAMPLE, (2, 1, 2), runs=20, budget_s=1.0)
    assert alone == (1.0, 1) and none is None


def test_alone_each_thread_count_is_timed_by_itself_at_onnx_runtimes_defaults(
    fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    costs = {1: 2.0, 2: 1.5, 4: 1.8}  # a teacher fastest on 2 threads
    template, _ = fake(0.0, 0.0)
    made: list[tuple[int, bool]] = []

    def runner(path: Path, threads: int = 1, *, spinning: bool = False) -> FakeRunner:
        made.append((threads, spinning))
        return FakeRunner(f"t@{threads}", costs[threads], template.clock, template.calls)

    monkeypatch.setattr(measure, "OnnxRunner", runner)
    assert measure.alone_latency(Path("t.onnx"), EXAMPLE, (1, 2, 4, 2), runs=20, budget_s=1.0) == (1.5, 2)
    assert made == [(1, True), (2, True), (4, True)]  # spinning on, each count once
    calls = template.calls
    # One session at a time: all of one count's runs before the next count's first.
    assert calls == sorted(calls, key=lambda name: [1, 2, 4].index(int(name.split("@")[1])))


def test_a_deployers_session_keeps_spinning_and_a_timed_about_one_does_not(student: tuple[nn.Module, Path]) -> None:
    key = "session.intra_op.allow_spinning"
    assert OnnxRunner(student[1], threads=2).session.get_session_options().get_session_config_entry(key) == "0"
    deployed = OnnxRunner(student[1], threads=2, spinning=True).session.get_session_options()
    with pytest.raises(RuntimeError, match="does not have configuration"):  # ONNX Runtime's default: on
        deployed.get_session_config_entry(key)
    ms, threads = measure.alone_latency(student[1], EXAMPLE, (1, 2), runs=20, budget_s=0.1)
    assert ms > 0 and threads in (1, 2)


def test_thread_counts_are_powers_of_two_and_the_core_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(measure.os, "sched_getaffinity", lambda pid: set(range(6)))
    assert measure.thread_counts() == (1, 2, 4, 6)
    monkeypatch.setattr(measure.os, "sched_getaffinity", lambda pid: {0})
    assert measure.thread_counts() == (1,)


def test_operator_count_is_that_of_the_graph_onnx_runtime_runs(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    with no_warnings():
        path = export_onnx(model, torch.zeros(1, 1, 8, 8), tmp_path / "mlp.onnx")
    exported = len(onnx.load(str(path)).graph.node)
    optimized = measure.optimized_op_count(path)
    # ORT fuses MatMul+Add into Gemm-like nodes: never more nodes than exported, at least the
    # two linear layers and the activation's place.
    assert 2 <= optimized <= exported
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "by-hand.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert optimized == len(onnx.load(str(tmp_path / "by-hand.onnx")).graph.node)


def test_measure_onnx_records_thread_counts_and_operators(
    student: tuple[nn.Module, Path], teacher_onnx: Path, data: TaskData, tmp_path: Path
) -> None:
    ctx = Context(data=data, teacher=student[0], workdir=tmp_path, baseline_onnx=teacher_onnx,
                  latency_runs=20, latency_budget_s=0.2, latency_threads=(1, 2))
    result = measure_onnx(student[1], ctx)
    assert result[metrics.LATENCY_THREADS] in (1.0, 2.0)
    assert result[metrics.TEACHER_LATENCY_THREADS] in (1.0, 2.0)
    assert result[metrics.OPS] == measure.optimized_op_count(student[1]) > 0
