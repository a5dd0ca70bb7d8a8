"""Distillation stage and teacher-logit cache: loss formula, budget, progress callback, teacher
reuse, label-free alpha = 1 and failure on a diverging loss."""

from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from stages._context import Context, Split, TaskData
from stages._graph import count_params_macs
from stages.config import DistillConfig
from stages.distill import (
    Distill,
    FeatureLoss,
    classifier,
    checkpointed_step,
    cosine_lr,
    distill_loss,
    trained_epochs,
)
from stages.errors import StageError
from stages.teacher import load_logits, save_logits, teacher_logits
from tests.tiny_models import make_tiny_cnn

torch.set_num_threads(1)


def _ctx(data: TaskData, teacher: nn.Module, tmp_path: Path, **kw: object) -> Context:
    return Context(data=data, teacher=teacher, workdir=tmp_path, batch_size=32, **kw)


def _accuracy(model: nn.Module, split: Split) -> float:
    model.eval()
    with torch.inference_mode():
        return 100.0 * float((model(split.x).argmax(1) == split.y).float().mean())


class CountingModule(nn.Module):
    """Counts forward calls of the wrapped module (split by train / eval mode)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.train_calls = 0
        self.eval_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.train_calls += 1
        else:
            self.eval_calls += 1
        return self.inner(x)


@pytest.fixture(scope="module")
def teacher(data: TaskData, tmp_path_factory: pytest.TempPathFactory) -> nn.Module:
    """A tiny CNN trained with labels only (alpha = 0), good enough to teach."""
    model = make_tiny_cnn(seed=1)
    ctx = _ctx(data, nn.Identity(), tmp_path_factory.mktemp("teacher"))
    Distill(DistillConfig(epochs=6, alpha=0.0, lr=0.05)).run(model, ctx)
    assert _accuracy(model, data.val) >= 80.0
    return model


# --- loss -------------------------------------------------------------------------------------

STUDENT = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
TEACHER = torch.tensor([[1.0, 2.0, 0.0], [-1.0, 0.5, 2.5]])
LABELS = torch.tensor([0, 2])


def _hand_kl(temperature: float) -> float:
    """KL(p_teacher || p_student) at temperature T, averaged over the batch, written out."""
    total = 0.0
    for s_row, t_row in zip(STUDENT.tolist(), TEACHER.tolist()):
        zs = sum(math.exp(v / temperature) for v in s_row)
        zt = sum(math.exp(v / temperature) for v in t_row)
        for s, t in zip(s_row, t_row):
            pt = math.exp(t / temperature) / zt
            ps = math.exp(s / temperature) / zs
            total += pt * (math.log(pt) - math.log(ps))
    return total / len(STUDENT)


def _hand_ce() -> float:
    total = 0.0
    for row, label in zip(STUDENT.tolist(), LABELS.tolist()):
        total += -math.log(math.exp(row[label]) / sum(math.exp(v) for v in row))
    return total / len(STUDENT)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_loss_matches_hand_computation(alpha: float, temperature: float) -> None:
    got = distill_loss(STUDENT, TEACHER, LABELS, alpha=alpha, temperature=temperature)
    want = alpha * temperature**2 * _hand_kl(temperature) + (1 - alpha) * _hand_ce()
    assert float(got) == pytest.approx(want, rel=1e-5)


def test_loss_needs_no_teacher_at_alpha_0_and_no_labels_at_alpha_1() -> None:
    assert float(distill_loss(STUDENT, None, LABELS, alpha=0.0, temperature=4.0)) == (
        pytest.approx(_hand_ce(), rel=1e-5)
    )
    assert float(distill_loss(STUDENT, TEACHER, None, alpha=1.0, temperature=2.0)) == (
        pytest.approx(4.0 * _hand_kl(2.0), rel=1e-5)
    )
    with pytest.raises(ValueError, match="needs teacher"):
        distill_loss(STUDENT, None, LABELS, alpha=0.5, temperature=4.0)
    with pytest.raises(ValueError, match="needs labels"):
        distill_loss(STUDENT, TEACHER, None, alpha=0.5, temperature=4.0)


def test_loss_is_zero_when_student_equals_teacher_at_alpha_1() -> None:
    assert float(distill_loss(TEACHER, TEACHER, None, alpha=1.0, temperature=7.0)) == (
        pytest.approx(0.0, abs=1e-6)
    )


def test_cosine_lr_warms_up_then_decays_to_zero() -> None:
    lrs = [cosine_lr(0.1, s, 100) for s in range(100)]
    assert lrs[0] < lrs[4] <= 0.1  # warm-up over the first 5 % of steps
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))
    assert lrs[-1] < 1e-3
    assert cosine_lr(0.1, 0, 3) == pytest.approx(0.1)  # too short for a warm-up


# --- training ---------------------------------------------------------------------------------


def test_plain_fine_tuning_raises_accuracy_from_random_start(
    data: TaskData, tmp_path: Path
) -> None:
    student = make_tiny_cnn(seed=3)
    before = _accuracy(student, data.val)
    ctx = _ctx(data, nn.Identity(), tmp_path)
    out = Distill(DistillConfig(epochs=4, alpha=0.0, lr=0.05)).run(student, ctx)
    assert out is student
    assert not student.training
    assert ctx.teacher_logits is None  # alpha = 0 never needs the teacher
    assert _accuracy(student, data.val) >= before + 40.0


def test_label_free_distillation_raises_accuracy(
    data: TaskData, teacher: nn.Module, tmp_path: Path
) -> None:
    student = make_tiny_cnn(seed=4)
    before = _accuracy(student, data.val)
    ctx = _ctx(data, teacher, tmp_path)
    Distill(DistillConfig(epochs=8, alpha=1.0, temperature=4.0, lr=0.1)).run(student, ctx)
    assert _accuracy(student, data.val) >= before + 30.0


def test_alpha_1_never_reads_the_labels(data: TaskData, teacher: nn.Module, tmp_path: Path) -> None:
    logits = teacher_logits(teacher, data.train, device="cpu")
    cfg = DistillConfig(epochs=1, alpha=1.0, temperature=3.0, lr=0.05)

    right = make_tiny_cnn(seed=5)
    Distill(cfg).run(right, _ctx(data, teacher, tmp_path, teacher_logits=logits))

    # Labels that cross-entropy would reject outright: reading them at all would raise.
    garbage = Split(x=data.train.x, y=torch.full_like(data.train.y, -7))
    bad_data = TaskData(train=garbage, val=data.val, test=data.test, num_classes=10)
    wrong = make_tiny_cnn(seed=5)
    Distill(cfg).run(wrong, _ctx(bad_data, teacher, tmp_path, teacher_logits=logits))

    for a, b in zip(right.state_dict().values(), wrong.state_dict().values()):
        assert torch.equal(a, b)


def test_same_seed_same_result_other_seed_other_result(data: TaskData, tmp_path: Path) -> None:
    cfg = DistillConfig(epochs=0.5, alpha=0.0, lr=0.05)
    runs = []
    for seed in (0, 0, 1):
        model = make_tiny_cnn(seed=6)
        Distill(cfg).run(model, _ctx(data, nn.Identity(), tmp_path, seed=seed))
        runs.append(model.fc.weight.detach().clone())
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_zero_epochs_leaves_weights_untouched(data: TaskData, tmp_path: Path) -> None:
    teacher = CountingModule(make_tiny_cnn(seed=1))
    student = make_tiny_cnn(seed=7)
    before = copy.deepcopy(student.state_dict())
    ctx = _ctx(data, teacher, tmp_path)
    assert Distill(DistillConfig(epochs=0.0, alpha=0.7), qat=True).run(student, ctx) is student
    for key, value in student.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert teacher.eval_calls == 0 and ctx.teacher_logits is None


def test_fractional_epochs_set_the_number_of_steps(data: TaskData, tmp_path: Path) -> None:
    student = CountingModule(make_tiny_cnn(seed=8))
    # 256 samples / batch 32 = 8 steps per epoch; 1.5 epochs = 12 steps.
    Distill(DistillConfig(epochs=1.5, alpha=0.0)).run(student, _ctx(data, nn.Identity(), tmp_path))
    assert student.train_calls == 12


def _narrow_student() -> nn.Module:
    """Far fewer MACs than ``make_tiny_cnn``: two channels, then a linear classifier."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32, 10)
    ).eval()


@pytest.mark.parametrize("boost", [1.0, 3.0, 1000.0])
def test_a_smaller_student_trains_longer_up_to_its_size_boost(
    data: TaskData, tmp_path: Path, boost: float
) -> None:
    teacher = make_tiny_cnn(seed=1)
    x = data.example_input()
    ratio = count_params_macs(teacher, x)[1] / count_params_macs(_narrow_student(), x)[1]
    assert ratio > 3  # the boost of 3 is the cap, 1000 is not
    student = CountingModule(_narrow_student())
    cfg = DistillConfig(epochs=1.0, alpha=0.0, size_boost=boost)
    ctx = _ctx(data, teacher, tmp_path)
    assert trained_epochs(cfg, student, ctx) == pytest.approx(min(boost, ratio))
    Distill(cfg).run(student, ctx)
    # 256 samples / batch 32 = 8 steps per epoch, times min(boost, ratio).
    assert student.train_calls == round(8 * min(boost, ratio))


def test_a_student_the_teachers_size_trains_its_epochs_whatever_the_boost(
    data: TaskData, tmp_path: Path
) -> None:
    teacher = make_tiny_cnn(seed=1)
    student = CountingModule(copy.deepcopy(teacher))
    cfg = DistillConfig(epochs=1.5, alpha=0.0, size_boost=50.0)
    Distill(cfg).run(student, _ctx(data, teacher, tmp_path))
    assert student.train_calls == 12


def test_callback_reports_increasing_fractions(data: TaskData, tmp_path: Path) -> None:
    calls: list[tuple[str, float, float]] = []
    ctx = _ctx(data, nn.Identity(), tmp_path, on_progress=lambda *a: calls.append(a))
    Distill(DistillConfig(epochs=2, alpha=0.0, lr=0.05)).run(make_tiny_cnn(seed=9), ctx)
    assert 2 <= len(calls) <= 5
    assert all(stage == "distill" for stage, _, _ in calls)
    fractions = [f for _, f, _ in calls]
    assert fractions == sorted(set(fractions)) and fractions[-1] == 1.0 and fractions[0] > 0
    assert all(0.0 <= acc <= 100.0 for _, _, acc in calls)
    assert calls[-1][2] > calls[0][2]  # still learning: the last report beats the first


def test_callback_exception_stops_training(data: TaskData, tmp_path: Path) -> None:
    class Hopeless(Exception):
        pass

    def stop(stage: str, fraction: float, val_acc: float) -> None:
        raise Hopeless(f"{stage} at {fraction}")

    student = CountingModule(make_tiny_cnn(seed=10))
    ctx = _ctx(data, nn.Identity(), tmp_path, on_progress=stop)
    with pytest.raises(Hopeless, match="distill at 0.25"):
        Distill(DistillConfig(epochs=2, alpha=0.0)).run(student, ctx)
    assert student.train_calls == 4  # 16 steps budgeted, stopped after the first quarter


def test_teacher_logits_computed_when_missing_and_reused_when_given(data: TaskData, tmp_path: Path) -> None:
    # The context is frozen: a stage computes missing logits for its own run, and the pipeline /
    # the search put them in the context once so that every later run reuses them.
    teacher = CountingModule(make_tiny_cnn(seed=1)).eval()
    ctx = _ctx(data, teacher, tmp_path, eval_batch_size=100)
    cfg = DistillConfig(epochs=0.5, alpha=0.5)
    Distill(cfg).run(make_tiny_cnn(seed=11), ctx)
    assert teacher.eval_calls == 3 and teacher.train_calls == 0  # 256 rows in batches of 100
    logits = teacher_logits(teacher, data.train, device=torch.device("cpu"), batch_size=100)
    assert logits.shape == (256, 10)
    with torch.no_grad():
        assert torch.allclose(logits, teacher.inner(data.train.x), atol=1e-5)
    calls = teacher.eval_calls
    given = dataclasses.replace(ctx, teacher_logits=logits)
    Distill(cfg).run(make_tiny_cnn(seed=12), given)
    Distill(cfg, qat=True).run(make_tiny_cnn(seed=13), given)
    assert teacher.eval_calls == calls


def test_misaligned_teacher_logits_are_rejected(data: TaskData, tmp_path: Path) -> None:
    ctx = _ctx(data, nn.Identity(), tmp_path, teacher_logits=torch.zeros(100, 10))
    with pytest.raises(StageError, match="100 rows but the training split has 256"):
        Distill(DistillConfig(epochs=1, alpha=0.5)).run(make_tiny_cnn(), ctx)


def test_nan_loss_raises_stage_error(data: TaskData, tmp_path: Path) -> None:
    student = make_tiny_cnn(seed=14)
    with torch.no_grad():
        student.fc.bias.fill_(float("nan"))
    with pytest.raises(StageError, match=r"distill: loss became NaN at step 0 \(lr="):
        Distill(DistillConfig(epochs=1, alpha=0.0)).run(
            student, _ctx(data, nn.Identity(), tmp_path)
        )


def test_diverging_lr_raises_stage_error(data: TaskData, tmp_path: Path) -> None:
    class Cubic(nn.Module):
        """Cubed logits: gradients grow with the weights, so a large lr runs away."""

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1)) ** 3

    torch.manual_seed(0)
    with pytest.raises(StageError, match=r"distill: loss became (NaN|inf) at step [1-9]\d* \(lr="):
        Distill(DistillConfig(epochs=5, alpha=0.0, lr=1.0)).run(
            Cubic(), _ctx(data, nn.Identity(), tmp_path)
        )


# --- teacher logits and their cache -----------------------------------------------------------


def test_teacher_logits_match_eval_forward_and_restore_mode(data: TaskData) -> None:
    teacher = make_tiny_cnn(seed=1).train()
    bn = teacher.features[0][1]
    running_mean = bn.running_mean.clone()
    logits = teacher_logits(teacher, data.train, device=torch.device("cpu"), batch_size=7)
    assert logits.dtype == torch.float32 and logits.device.type == "cpu"
    assert logits.shape == (256, 10) and not logits.requires_grad
    assert teacher.training  # mode restored
    assert torch.equal(bn.running_mean, running_mean)  # computed in eval mode: stats untouched
    with torch.no_grad():
        want = teacher.eval()(data.train.x)
    assert torch.allclose(logits, want, atol=1e-5)
    # Usable in autograd afterwards (not an inference tensor).
    (logits * torch.ones(1, requires_grad=True)).sum().backward()


def test_logits_cache_roundtrip_and_rejects_stale_files(tmp_path: Path) -> None:
    logits = torch.randn(12, 3)
    path = tmp_path / "cache" / "teacher_logits.pt"
    assert load_logits(path, 12) is None  # nothing cached yet
    save_logits(path, logits)
    assert [p.name for p in path.parent.iterdir()] == ["teacher_logits.pt"]  # no temp file left
    loaded = load_logits(path, 12)
    assert loaded is not None and torch.equal(loaded, logits)
    assert load_logits(path, 13) is None  # another split: recompute
    path.write_bytes(b"not a torch file")
    assert load_logits(path, 12) is None
    torch.save({"logits": logits}, path)
    assert load_logits(path, 12) is None


# --- feature term (distill.features) ------------------------------------------------------------


class UnusedLinearFirst(nn.Module):
    """A TinyCNN whose classifier is registered after a linear layer forward never reaches and
    before a projection of the same output size that runs first: the classifier is found by what
    runs last, not by registration order."""

    def __init__(self) -> None:
        super().__init__()
        self.body = make_tiny_cnn(seed=5)
        self.spare = nn.Linear(32, 10)  # never called
        self.head = nn.Linear(10, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class ConvHead(nn.Module):
    """Logits from a 1x1 convolution: no linear classifier to read features from."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean((2, 3))


def test_the_classifier_is_the_last_linear_layer_run_with_the_output_shape(data: TaskData) -> None:
    model = UnusedLinearFirst()
    assert classifier(model, data.train.x[:2]) is model.head
    assert classifier(ConvHead(), data.train.x[:2]) is None
    tiny = make_tiny_cnn().train()
    assert classifier(tiny, data.train.x[:2]) is tiny.fc and tiny.training  # its mode is kept


def test_the_feature_term_pulls_a_narrower_students_features_to_the_teachers(
    data: TaskData, teacher: nn.Module, tmp_path: Path
) -> None:
    from tests.tiny_models import TinyCNN

    torch.manual_seed(6)
    student = TinyCNN(width=8).eval()  # classifier input 16 wide, the teacher's 32
    probe = data.val.x[:256]

    def feature_error(projection: nn.Module) -> float:
        with FeatureLoss(teacher, student, probe[:2]) as loss:
            loss.projection.load_state_dict(projection.state_dict())
            with torch.no_grad():
                student(probe)
                return float(loss(probe))

    teacher.train()  # put back as found (the trials' baseline must not change mode)
    ctx = _ctx(data, teacher, tmp_path)
    with FeatureLoss(teacher, student, probe[:2]) as loss:
        assert tuple(loss.projection.weight.shape) == (32, 16)
        untrained = copy.deepcopy(loss.projection)
    assert teacher.training
    before = feature_error(untrained)
    # alpha = 0: the labels and the feature term only, no logits.
    cfg = DistillConfig(epochs=4, alpha=0.0, lr=0.05, features=5.0)
    trained: list[nn.Module] = []
    original = FeatureLoss.__exit__

    def keep_projection(self: FeatureLoss, *exc: object) -> None:
        trained.append(copy.deepcopy(self.projection))
        original(self, *exc)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FeatureLoss, "__exit__", keep_projection)
        Distill(cfg).run(student, ctx)
    teacher.eval()
    assert teacher.training is False and not student.training
    assert feature_error(trained[0]) < 0.5 * before


def test_the_feature_term_needs_a_linear_classifier_and_says_so(data: TaskData, tmp_path: Path) -> None:
    teacher = ConvHead().train()
    ctx = _ctx(data, teacher, tmp_path)
    with pytest.raises(StageError, match="distill.features needs a model whose output comes from an nn.Linear"):
        Distill(DistillConfig(epochs=1, alpha=0.5, features=1.0)).run(make_tiny_cnn(), ctx)
    assert teacher.training  # put back as found


def test_the_feature_term_runs_on_a_transformer_under_qat_and_leaves_no_hook(tmp_path: Path) -> None:
    from tests.tiny_models import make_tiny_vit, tiny_task_data

    data = tiny_task_data(n_train=64, n_val=16, n_test=16, size=8)
    teacher, student = make_tiny_vit(seed=1), make_tiny_vit(seed=2)
    Distill(DistillConfig(epochs=1, alpha=0.5, features=1.0), qat=True).run(student, _ctx(data, teacher, tmp_path))
    for model in (teacher, student):
        assert all(not module._forward_hooks for module in model.modules())
    assert not teacher.training and not student.training
    assert all(torch.isfinite(p).all() for p in student.parameters())


# --- rungs (successive halving) ---------------------------------------------------------------


class StopAtRung(Exception):
    pass


def _stop_at(rung: int, heard: list[tuple[int, int, float]]):  # type: ignore[no-untyped-def]
    def on_rung(stage: str, done: int, total: int, val_acc: float) -> None:
        heard.append((done, total, val_acc))
        if done == rung:
            raise StopAtRung

    return on_rung


def test_a_run_stopped_at_a_rung_continues_exactly_as_a_straight_run(
    data: TaskData, teacher: nn.Module, tmp_path: Path
) -> None:
    """Stop at rung 24, resume from its checkpoint with a fresh student: the final weights are the
    straight run's (same schedule, data order, optimizer state), and the resumed run trains only
    the steps after the rung (no step twice)."""
    cfg = DistillConfig(epochs=6, alpha=0.5, lr=0.05)  # 256 / 32 = 8 steps an epoch: 48 steps
    straight = make_tiny_cnn(seed=3)
    Distill(cfg).run(straight, _ctx(data, teacher, tmp_path / "a", report_fractions=()))

    checkpoint = tmp_path / "rungs" / "rung.pt"
    heard: list[tuple[int, int, float]] = []
    ctx = _ctx(data, teacher, tmp_path / "b", report_fractions=(), rungs=(8, 24),
               on_rung=_stop_at(24, heard), rung_checkpoint=checkpoint)
    with pytest.raises(StopAtRung):
        Distill(cfg).run(make_tiny_cnn(seed=3), ctx)
    assert [(d, t) for d, t, _ in heard] == [(8, 48), (24, 48)]
    assert all(0.0 <= acc <= 100.0 for _, _, acc in heard)
    assert checkpointed_step(checkpoint, 48) == 24
    assert checkpointed_step(checkpoint, 96) == 0  # another budget: not resumed

    heard.clear()
    moved = tmp_path / "elsewhere" / "rung.pt"  # a replacement worker's copy (artifact store)
    moved.parent.mkdir()
    for suffix in (".pt", ".json"):
        checkpoint.with_suffix(suffix).rename(moved.with_suffix(suffix))
    resumed = make_tiny_cnn(seed=3)
    Distill(cfg).run(resumed, dataclasses.replace(ctx, on_rung=_stop_at(-1, heard), rung_checkpoint=moved))
    assert [(d, t) for d, t, _ in heard] == [(48, 48)]  # rungs up to the checkpoint are not heard again
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_a_resumed_run_trains_only_the_steps_after_its_rung(
    data: TaskData, teacher: nn.Module, tmp_path: Path
) -> None:
    cfg = DistillConfig(epochs=4, alpha=0.5, lr=0.05)  # 32 steps
    checkpoint = tmp_path / "rung.pt"
    first = CountingModule(make_tiny_cnn(seed=3))
    ctx = _ctx(data, teacher, tmp_path, report_fractions=(), rungs=(8,),
               on_rung=_stop_at(8, []), rung_checkpoint=checkpoint)
    with pytest.raises(StopAtRung):
        Distill(cfg).run(first, ctx)
    assert first.train_calls == 8
    second = CountingModule(make_tiny_cnn(seed=3))
    Distill(cfg).run(second, dataclasses.replace(ctx, on_rung=None))
    assert second.train_calls == 32 - 8
    # a student of another shape (another config) does not take the checkpoint: it trains all
    other = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(data.input_shape).prod()), data.num_classes))
    counted = CountingModule(other)
    Distill(cfg).run(counted, dataclasses.replace(ctx, on_rung=None))
    assert counted.train_calls == 32
