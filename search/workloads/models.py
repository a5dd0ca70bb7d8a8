"""Teacher architectures by name and the checks that a model fits a dataset (checkpoints are read
by ``search.workloads.checkpoints``).

A model name is ``demo`` (a small CNN for the built-in digits workload), ``vit_tiny`` (a small
Vision Transformer sized to the images, ``search.workloads.vit``), any torchvision
classification model (``resnet18``, ``mobilenet_v2``, ...; built with ``weights=None`` and adapted
to the dataset's channels and classes), or ``path/to/file.py:factory`` (the user's own code,
imported from that explicit path: this executes it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import inspect
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.errors import UserError, first_line
from search.workloads.checkpoints import file_sha256

# Shown in error messages; any name from ``torchvision_models()`` works.
TORCHVISION_EXAMPLES = ("resnet18", "resnet50", "mobilenet_v2", "vgg11_bn", "efficientnet_b0")
# Tried in order when a model rejects the dataset's input size, to tell the user what works.
PROBE_SIZES = (32, 64, 96, 128, 160, 224, 299)
# Constructor arguments some torchvision builders need to return plain logits without warnings.
TORCHVISION_KWARGS: dict[str, dict[str, Any]] = {
    "googlenet": {"aux_logits": False, "init_weights": True},
    "inception_v3": {"aux_logits": False, "init_weights": True},
}


class DemoCNN(nn.Module):
    """Three conv-BN-ReLU blocks, global average pooling and a linear classifier (~24k params).

    Small enough to train on digits in seconds, and a plain chain that torch-pruning's dependency
    graph prunes structurally. Global pooling makes it work at any input size >= 2 px.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _build_demo(*, in_channels: int, num_classes: int, image_size: int | None) -> nn.Module:
    return DemoCNN(in_channels=in_channels, num_classes=num_classes)


def _build_vit_tiny(*, in_channels: int, num_classes: int, image_size: int | None) -> nn.Module:
    from search.workloads.vit import build_vit_tiny

    return build_vit_tiny(in_channels=in_channels, num_classes=num_classes, image_size=image_size)


# Built-in architectures besides torchvision's; keyword-only (in_channels, num_classes,
# image_size: the side of the square inputs, None when unknown) factories.
BUILTIN_MODELS: dict[str, Callable[..., nn.Module]] = {
    "demo": _build_demo,
    "vit_tiny": _build_vit_tiny,
}


def torchvision_models() -> list[str]:
    """Names of torchvision's classification models (not detection, video, quantized...)."""
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """A model named ``path/to/file.py:factory``: the user's own factory function in that file.

    The one parser of such names, so the fingerprint, the display name and the loader agree.
    """

    path: str
    factory: str

    @classmethod
    def parse(cls, name: str) -> ModelFile | None:
        """The reference in ``name``, or None when ``name`` is no ``file.py:factory``."""
        path, sep, factory = name.rpartition(":")
        if sep and path.endswith(".py") and factory:
            return cls(path, factory)
        return None

    @property
    def resolved_path(self) -> Path:
        """The file, absolute (``~`` expanded): the same file whatever the working directory."""
        return Path(self.path).expanduser().resolve()

    def absolute(self) -> str:
        """``/abs/path/file.py:factory``, as stored in a study's workload fingerprint."""
        return f"{self.resolved_path}:{self.factory}"

    @property
    def display_name(self) -> str:
        """``file.factory``: short enough for a study name."""
        return f"{Path(self.path).stem}.{self.factory}"


def canonical_model_name(name: str) -> str:
    """``name``, with a ``file.py:factory``'s file made absolute: the same model however its path
    was spelled (``train`` and a later search may run from different folders)."""
    ref = ModelFile.parse(name)
    return ref.absolute() if ref is not None else name


def is_user_model(name: str) -> bool:
    """``path/to/file.py:factory`` names the user's own factory function."""
    return ModelFile.parse(name) is not None


def known_models_text() -> str:
    return (
        f"{', '.join(BUILTIN_MODELS)}, any torchvision classification model "
        f"(e.g. {', '.join(TORCHVISION_EXAMPLES)}, ...), or path/to/file.py:factory"
    )


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The first ``Conv2d`` in registration order: the stem that sees the input channels."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    return None


def _replace_first_conv(model: nn.Module, in_channels: int) -> None:
    """Swap the stem conv for one taking ``in_channels`` (same kernel, stride, padding, bias)."""
    found = first_conv(model)
    if found is None or found[1].in_channels == in_channels:
        return
    name, old = found
    if old.groups != 1:
        raise UserError(
            f"cannot adapt the first conv {name!r} (groups={old.groups}) to {in_channels} "
            "input channels; expected a plain conv stem."
        )
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    )
    # torchvision's CNNs initialise convs this way; the default init would differ from the rest.
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    model.set_submodule(name, new)


def _build_torchvision(name: str, *, in_channels: int, num_classes: int) -> nn.Module:
    import torchvision

    kwargs = {"weights": None, "num_classes": num_classes, **TORCHVISION_KWARGS.get(name, {})}
    with warnings.catch_warnings():
        # weights=None is deliberate: checkpoints come from --weights, never from the network.
        warnings.simplefilter("ignore", UserWarning)
        model = torchvision.models.get_model(name, **kwargs)
    _replace_first_conv(model, in_channels)
    return model


def _import_user_file(path: Path) -> Any:
    """Import ``path`` as a module (from that path only; nothing is added to ``sys.path``)."""
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module_name = f"mcaas_user_model_{path.stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"cannot import {path}: not a Python file.")
    module = importlib.util.module_from_spec(spec)
    # Registered so that models defined there can be pickled and deep-copied by reference.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: report it in one line, whatever it raised
        del sys.modules[module_name]
        raise UserError(f"importing {path} failed: {type(exc).__name__}: {exc}") from None
    return module


def _build_user(ref: ModelFile, *, in_channels: int, num_classes: int) -> nn.Module:
    name, factory_name, path = f"{ref.path}:{ref.factory}", ref.factory, ref.resolved_path
    module = _import_user_file(path)
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise UserError(
            f"{path} has no callable {factory_name!r}; callables there: "
            f"{', '.join(names) or 'none'}."
        )
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    offered = {"num_classes": num_classes, "in_channels": in_channels}
    kwargs = {k: v for k, v in offered.items() if takes_any or k in params}
    try:
        model = factory(**kwargs)
    except Exception as exc:  # the user's code
        raise UserError(f"{name} failed: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{name} returned {type(model).__name__}; expected a torch.nn.Module.")
    return model


def check_model_name(name: str) -> None:
    """Raise a one-line ``UserError`` unless ``name`` is built in, torchvision's, or an existing
    ``file.py:factory`` (cheap: builds nothing, imports no user code)."""
    if name in BUILTIN_MODELS:
        return
    ref = ModelFile.parse(name)
    if ref is not None:
        path = ref.resolved_path
        if not path.is_file():
            raise UserError(f"model file {path} does not exist (from --model {name}).")
        return
    if name not in torchvision_models():
        raise UserError(f"unknown model {name!r}; expected {known_models_text()}.")


def build_model(
    name: str, *, in_channels: int, num_classes: int, image_size: int | None = None
) -> nn.Module:
    """A freshly initialised model ``name`` for inputs with ``in_channels`` and ``num_classes``;
    ``image_size`` (the side of square inputs) sizes models that depend on it (``vit_tiny``)."""
    check_model_name(name)
    if name in BUILTIN_MODELS:
        return BUILTIN_MODELS[name](
            in_channels=in_channels, num_classes=num_classes, image_size=image_size
        )
    ref = ModelFile.parse(name)
    if ref is not None:
        return _build_user(ref, in_channels=in_channels, num_classes=num_classes)
    return _build_torchvision(name, in_channels=in_channels, num_classes=num_classes)


def model_file_sha256(name: str) -> str | None:
    """sha256 of a user model's source file (part of the workload fingerprint), else None."""
    ref = ModelFile.parse(name)
    if ref is None:
        return None
    path = ref.resolved_path
    return file_sha256(path) if path.is_file() else None


# ---------------------------------------------------------------------------------------------
# Fit checks


def check_fits(
    model: nn.Module,
    example: torch.Tensor,
    num_classes: int,
    *,
    model_name: str,
    dataset: str,
) -> None:
    """Check the model takes the dataset's inputs and returns one logit per class.

    ``example`` is a 1 x C x H x W input. The model is run once in eval mode on CPU.
    """
    in_channels = int(example.shape[1])
    stem = first_conv(model)
    if stem is not None and stem[1].in_channels != in_channels:
        raise UserError(
            f"model {model_name} expects {stem[1].in_channels}-channel inputs (first conv "
            f"{stem[0]!r}) but dataset {dataset} has {in_channels} channel(s)."
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            try:
                out = model(example)
            except Exception as exc:  # any failure here means: cannot take this input size
                raise UserError(_size_message(model, example, model_name, dataset, exc)) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        kind = type(out).__name__ if not isinstance(out, torch.Tensor) else f"shape {tuple(out.shape)}"
        raise UserError(
            f"model {model_name} returned {kind}; expected logits of shape batch x {num_classes}."
        )
    if out.shape[1] != num_classes:
        raise UserError(
            f"model {model_name} outputs {out.shape[1]} classes but dataset {dataset} has "
            f"{num_classes}."
        )


def _size_message(
    model: nn.Module, example: torch.Tensor, model_name: str, dataset: str, exc: Exception
) -> str:
    c, h, w = example.shape[1:]
    for size in PROBE_SIZES:
        if size <= min(h, w):
            continue
        try:
            model(example.new_zeros((1, c, size, size)))
        except Exception:  # noqa: S112 - probing: a failure just means "try the next size"
            continue
        return (
            f"model {model_name} cannot take {dataset}'s {c}x{h}x{w} inputs (the smallest size "
            f"that works is {size}x{size}); pass --image-size {size}."
        )
    return f"model {model_name} failed on {dataset}'s {c}x{h}x{w} inputs: {first_line(exc, typed=True)}"
