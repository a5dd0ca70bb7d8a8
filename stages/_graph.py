"""Finding layers in an arbitrary model: the weight layers stages compress, the classifier head
that must keep its width, the layer a broken forward fails in, the params/MACs counter, and a
module's structure (what it computes, weights aside), by which costly results are reused."""

from __future__ import annotations

import contextlib
import io
import threading
from collections import OrderedDict
from collections.abc import Iterator

import torch
import torch_pruning as tp
from torch import nn

from stages._transformer import HeadAttention
from stages.errors import StageError

# The layers whose weights prune (unstructured) and cluster rewrite.
WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.modules.conv._ConvNd, nn.Linear)


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Conv/Linear layer with a weight tensor, as ``(qualified name, module)`` in
    registration order."""
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, WEIGHT_LAYER_TYPES) and isinstance(module.weight, torch.Tensor)
    ]


def out_width(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return module.out_channels
    return module.out_channels  # type: ignore[return-value]


def head_layers(model: nn.Module, num_classes: int) -> list[nn.Module]:
    """Every Conv/Linear whose output width is ``num_classes``: the classifier and any auxiliary
    head. Their outputs are the model's logits, so structured pruning must leave them whole.

    Matching by width may also catch a hidden layer that happens to be ``num_classes`` wide;
    leaving that one unpruned costs a little compression and never breaks the model.
    """
    return [m for _, m in weight_layers(model) if out_width(m) == num_classes]


def find_classifier(model: nn.Module, num_classes: int, *, stage: str) -> nn.Module:
    """The classifier head: the last registered Conv/Linear whose output width is
    ``num_classes``. Raises ``StageError`` for ``stage`` when the model has none."""
    heads = head_layers(model, num_classes)
    if not heads:
        widths = sorted({out_width(m) for _, m in weight_layers(model)})
        raise StageError(
            stage,
            f"found no classifier: no Conv/Linear layer has {num_classes} outputs "
            f"(the task's number of classes); output widths present: {widths}."
        )
    return heads[-1]


def module_name(model: nn.Module, module: nn.Module) -> str:
    """Qualified name of ``module`` inside ``model`` (``"<root>"`` for the model itself)."""
    for name, candidate in model.named_modules():
        if candidate is module:
            return name or "<root>"
    return type(module).__name__


def device_of(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without any)."""
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextlib.contextmanager
def on_device_in_eval(model: nn.Module, device: torch.device | str) -> Iterator[nn.Module]:
    """``model`` on ``device`` in eval mode for the block; its device and train/eval mode are put
    back afterwards (the teacher a stage borrows is also the baseline the trials are measured
    against; a student is exported on the CPU and goes back to its device)."""
    home, was_training = device_of(model), model.training
    model.to(device).eval()
    try:
        yield model
    finally:
        model.to(home).train(was_training)


def check_forward(
    model: nn.Module, example_input: torch.Tensor, num_classes: int, stage: str
) -> None:
    """Run one forward pass and raise ``StageError`` naming the failing layer if the model no
    longer runs or no longer produces ``num_classes`` finite logits: a stage must never hand on
    a silently broken model."""
    entered: list[str] = []
    handles = []

    def enter(name: str):  # noqa: ANN202 - hook factory
        return lambda module, args: entered.append(name)

    def leave(module: nn.Module, args: object, output: object) -> None:
        entered.pop()

    for name, module in model.named_modules():
        if name and not any(True for _ in module.children()):
            handles.append(module.register_forward_pre_hook(enter(name)))
            handles.append(module.register_forward_hook(leave))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(example_input)
    except Exception as exc:  # any failure inside the user's forward means a broken model
        where = entered[-1] if entered else "the model's forward (outside any layer)"
        raise StageError(
            stage, f"the model no longer runs after {stage}; it fails in layer {where!r}: {exc}"
        ) from exc
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or output.shape[1] != num_classes:
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise StageError(
            stage,
            f"the model must output N x {num_classes} logits after {stage}, but it "
            f"outputs {shape}."
        )
    if not torch.isfinite(output).all():
        raise StageError(stage, f"the model outputs non-finite logits after {stage}.")


def count_params_macs(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """``(params, MACs)`` of one forward pass on ``example_input``, as torch-pruning counts them
    (its "ops" are multiply-accumulates). The model is not changed (the counter works on a copy).
    Both follow from the structure and the input's shape alone, so the last structures counted
    are not counted again: a trial counts its student after each stage and with each file it
    writes, and the counter took 1.4 s of CPU a call on MobileNetV2 here."""
    key = (structure_of(model), tuple(example_input.shape), example_input.dtype)
    with _COUNTS_LOCK:
        known = _COUNTS.get(key)
    if known is not None:
        return known
    # The counter prints notes about unknown modules to stdout; keep them from the user.
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model, example_input)
    counts = int(params), int(macs) + _head_attention_macs(model, example_input)
    with _COUNTS_LOCK:
        _COUNTS[key] = counts
        while len(_COUNTS) > _COUNTS_KEPT:
            _COUNTS.popitem(last=False)
    return counts


# (params, MACs) of the structures counted last (the teacher, the stages of a trial), oldest first.
_COUNTS: OrderedDict[tuple[str, tuple[int, ...], torch.dtype], tuple[int, int]] = OrderedDict()
_COUNTS_KEPT = 8
_COUNTS_LOCK = threading.Lock()  # a service may run trials in threads


def named_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name (non-persistent buffers too: a trace lifts them)."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def structure_of(model: nn.Module) -> str:
    """The module tree as printed (every module's type and settings), then each parameter's and
    buffer's name, shape and dtype: what a module computes, its weights' values aside."""
    tensors = (f"{name} {tuple(t.shape)} {t.dtype}" for name, t in named_weights(model).items())
    return "\n".join([repr(model), *tensors])


def _head_attention_macs(model: nn.Module, example_input: torch.Tensor) -> int:
    """The attention products (QK^T and AV) of ``HeadAttention`` layers, which the counter does
    not see inside a module it does not know (its projections it counts as ``nn.Linear``);
    counted as its ``nn.MultiheadAttention`` hook counts them."""
    layers = [m for m in model.modules() if isinstance(m, HeadAttention)]
    if not layers:
        return 0
    total = 0

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...], _output: object) -> None:
        nonlocal total
        batch, length = args[0].shape[:2]
        assert isinstance(module, HeadAttention)
        total += batch * module.num_heads * length * length * (2 * module.head_dim + 1)

    handles = [layer.register_forward_hook(hook) for layer in layers]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return total
