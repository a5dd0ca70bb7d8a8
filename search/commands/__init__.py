"""One module per ``mcaas-search`` subcommand, each with ``add_arguments(parser)`` and
``run(args) -> int``; the flags several commands share are defined here once (the library in
``search.workloads`` and ``search.study`` defines no flags)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from search.study import storage_url

if TYPE_CHECKING:
    from search.workloads import WorkloadSpec

__all__ = [
    "add_json_argument",
    "add_select_argument",
    "add_storage_argument",
    "add_workload_arguments",
    "checked",
    "count_arg",
    "float_or_text",
    "int_or_text",
    "spec_from_args",
]

T = TypeVar("T")


def add_storage_argument(parser: argparse.ArgumentParser) -> None:
    """``--storage``, as every command that reads existing studies takes it."""
    parser.add_argument(
        "--storage",
        default=None,
        help=f"study storage: journal file or RDB URL (default: {storage_url(None)})",
    )


def add_select_argument(parser: argparse.ArgumentParser) -> None:
    """``--select``, the rule for the recommended trial, as every command that names it takes it."""
    from objectives import DEFAULT_SELECTION, SELECTIONS

    text = (
        "which feasible trial is recommended: "
        + "; ".join(f"{s.name}: {s.describe}" for s in SELECTIONS.values())
        + f" (default {DEFAULT_SELECTION}: on a small validation split the most compressed "
        "trial on its point estimate is often one that got lucky on those images)"
    )
    # argparse %-formats help text: the rules' "95 %" would read as a conversion ("% i").
    parser.add_argument(
        "--select", choices=tuple(SELECTIONS), default=DEFAULT_SELECTION, help=text.replace("%", "%%")
    )


def add_json_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--json``: ``what`` as JSON alone on stdout, messages and progress on stderr, for scripts."""
    parser.add_argument(
        "--json", action="store_true", help=f"print {what} as JSON alone on stdout (messages go to stderr)"
    )


def add_workload_arguments(
    parser: argparse.ArgumentParser, *, weights_help: str | None = None
) -> None:
    """Add the flags that choose the teacher model, its weights, the dataset and the device."""
    from search.workloads import DATASETS  # here: `list` and `show` need no torch

    group = parser.add_argument_group("workload")
    group.add_argument(
        "--model",
        default=None,
        help="teacher architecture: demo, any torchvision classification model (resnet18, "
        "mobilenet_v2, vgg11_bn, efficientnet_b0, ...), or path/to/file.py:factory (imports "
        "that file, which executes its code); none means the demo CNN on digits",
    )
    group.add_argument(
        "--weights",
        type=Path,
        default=None,
        help=weights_help
        or "teacher checkpoint: a state_dict (plain or under 'state_dict'/'model'); "
        "required for every model except the demo",
    )
    group.add_argument(
        "--dataset",
        default=None,
        help=f"dataset: {', '.join(DATASETS)}; none means digits with the demo model",
    )
    group.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="dataset folder: fashion-mnist IDX files (e.g. /usr/share/datasets/fashion-mnist "
        "or torchvision's ROOT/FashionMNIST/raw), ROOT/cifar-10-batches-py, or an image folder",
    )
    group.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resize inputs to this many pixels square; none means the size recorded beside "
        "--weights by `train`, else the model family's minimum (28 px for resnet, mobilenet and "
        "efficientnet, 32 for vgg) for smaller images, else the dataset's own (image folders: 32)",
    )
    group.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download fashion-mnist or cifar10 into --data-root if missing",
    )
    group.add_argument(
        "--allow-pickle",
        action="store_true",
        help="accept a checkpoint holding a whole pickled module (runs code from that file: "
        "only for files you trust)",
    )
    group.add_argument(
        "--allow-weak-teacher",
        action="store_true",
        help="go on with a teacher whose validation accuracy is near chance level (refused "
        "otherwise: every ratio against it would be meaningless)",
    )
    group.add_argument(
        "--seed", type=checked(int_or_text, _seed), default=0, help="seed of the validation split and of training"
    )
    group.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="fraction of the training data held out for validation (the accuracy constraint); "
        "none means 0.25 for digits (1437 images: a larger split makes its accuracy less noisy) "
        "and 0.1 otherwise, which a search grows (up to 0.3) until the split can vouch for "
        "--max-drop (`train`: for the default 1 pt), unless --weights were trained by `train` on "
        "the rest of their own split (their recorded fraction is taken)",
    )
    group.add_argument(
        "--device", default="auto", help="torch device: auto (cuda if available), cpu, cuda:N"
    )


def checked(parse: Callable[[str], object], check: Callable[[object], T]) -> Callable[[str], T]:
    """An argparse type: ``parse`` the flag's text, then apply the search request's own ``check``
    (``search.request``), so a flag and the service's field are refused alike."""

    def convert(text: str) -> T:
        # Imported when a flag is parsed: the module pulls in torch and Optuna.
        from search.request import RequestError

        try:
            return check(parse(text))
        except RequestError as exc:
            raise argparse.ArgumentTypeError(exc.message) from None

    return convert


def int_or_text(text: str) -> object:
    """``text`` as an int, or as it is when it is none (the check then echoes it)."""
    try:
        return int(text)
    except ValueError:
        return text


def float_or_text(text: str) -> object:
    """``text`` as a float, or as it is when it is none."""
    try:
        return float(text)
    except ValueError:
        return text


def count_arg(field: str, high: int) -> Callable[[str], int]:
    """An argparse type for a count in [1, ``high``] (``search.request.check_count``)."""

    def check(value: object) -> int:
        from search.request import check_count

        return check_count(field, value, high)

    return checked(int_or_text, check)


def _seed(value: object) -> int:
    from search.request import check_seed

    return check_seed(value)


def spec_from_args(args: argparse.Namespace) -> WorkloadSpec:
    """The workload flags of parsed ``args`` as a ``WorkloadSpec``, its input size resolved
    (``with_input_size``)."""
    from search.workloads import WorkloadSpec, with_input_size

    return with_input_size(WorkloadSpec(
        model=args.model,
        weights=args.weights,
        dataset=args.dataset,
        data_root=args.data_root,
        image_size=args.image_size,
        download=args.download,
        allow_pickle=args.allow_pickle,
        allow_weak_teacher=getattr(args, "allow_weak_teacher", False),
        seed=args.seed,
        val_fraction=args.val_fraction,
    ))
