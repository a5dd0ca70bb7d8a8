"""``mcaas-search train``: train a teacher model on a dataset and save its state_dict checkpoint.

With no ``--model`` it trains the demo CNN on digits into the cache the search itself uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from objectives import DEFAULT_MAX_DROP
from search.commands import add_workload_arguments, spec_from_args
from search.errors import UserError
from search.workloads import (
    DEFAULT_EPOCHS,
    DEMO_DATASET,
    DEMO_EPOCHS,
    DEMO_MODEL,
    MAX_DEFAULT_EPOCHS,
    MIN_DEFAULT_STEPS,
    OPTIMIZERS,
    available_cores,
    build_for_data,
    check_dataset_name,
    check_model_name,
    check_training_settings,
    checkpoint_info,
    default_epochs,
    demo_cache_path,
    load_grown_task_data,
    metrics_path,
    pick_device,
    recipe_family,
    recipe_for,
    recorded_split,
    save_checkpoint,
    train_teacher,
    weak_teacher,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(
        parser,
        weights_help="optional initial weights (a state_dict checkpoint) to continue training from",
    )
    group = parser.add_argument_group("training")
    group.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write the checkpoint (its folder must exist); metrics go to the same path "
        "with a .json suffix. Without --model: the demo teacher cache under --studies-dir/.cache",
    )
    group.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"training epochs; none means {DEFAULT_EPOCHS}, or on a small training set as many as "
        f"make {MIN_DEFAULT_STEPS:,} optimizer steps (at most {MAX_DEFAULT_EPOCHS}), or {DEMO_EPOCHS} "
        "for the demo CNN",
    )
    group.add_argument(
        "--lr",
        type=float,
        default=None,
        help="peak learning rate; none means the model family's recipe (e.g. 0.1 for resnet with "
        "sgd, 0.004 for mobilenet with adamw, at batch 128), scaled to the batch size (linearly "
        "for sgd, by the square root for adamw)",
    )
    group.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="batch size; none means the recipe's (128), halved down to 16 until an epoch has "
        "at least 32 steps",
    )
    group.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=None,
        help="none means the model family's recipe; sgd: Nesterov momentum with a one-cycle "
        "schedule; adamw: AdamW with cosine decay",
    )
    group.add_argument(
        "--label-smoothing",
        type=float,
        default=None,
        help="label smoothing of the cross-entropy loss; none means the recipe's (0.1)",
    )
    group.add_argument(
        "--studies-dir",
        type=Path,
        default=Path("studies"),
        help="where the demo teacher is cached (in .cache/), as the search expects it",
    )
    group.add_argument(
        "--no-progress", action="store_true", help="print nothing while training"
    )


def run(args: argparse.Namespace) -> int:
    spec = spec_from_args(args)
    device = pick_device(args.device)
    # Cheap checks first, before any data is loaded.
    check_model_name(spec.model_name)
    check_dataset_name(spec.dataset_name)
    demo = spec.model_name == DEMO_MODEL and spec.dataset_name == DEMO_DATASET
    check_training_settings(
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        label_smoothing=args.label_smoothing,
    )
    if args.out is not None:
        out: Path = args.out
        if out.suffix == ".json":
            raise UserError(f"--out {out} ends in .json, which is where the metrics go; use .pt.")
        if not out.parent.is_dir():
            raise UserError(f"output folder {out.parent} does not exist; create it first (--out {out}).")
    elif demo:
        out = demo_cache_path(args.studies_dir, spec)
    else:
        raise UserError(f"--out is required to say where to write the {spec.model_name} checkpoint.")
    if args.val_fraction is None:
        # The search keeps the split its teacher was trained on, so the default split is sized
        # here to vouch for the search's default bound where the data has the images.
        spec = dataclasses.replace(spec, decide_drop=DEFAULT_MAX_DROP)
    # --weights that `train` made continue on their own split, as a search takes them.
    spec = recorded_split(spec)
    asked = spec.val_fraction
    spec, data = load_grown_task_data(spec)
    if spec.val_fraction != asked:
        print(
            f"validation split grown to {spec.val_fraction:g} of the training data "
            f"({len(data.val)} of {len(data.train) + len(data.val)} images) so a search can vouch "
            f"for its default --max-drop {DEFAULT_MAX_DROP:g}",
            file=sys.stderr,
            flush=True,
        )
    model = build_for_data(spec, data, weights=spec.weights)
    out.parent.mkdir(parents=True, exist_ok=True)  # the demo cache folder; only now that all is checked
    progress = not args.no_progress
    recipe = recipe_for(spec.model_name)
    if args.epochs is not None:
        epochs = args.epochs
    elif demo:
        epochs = DEMO_EPOCHS
    else:
        epochs = default_epochs(recipe, len(data.train), batch_size=args.batch_size)
    if progress:
        resized = data.preprocessing.get("resize")
        print(
            f"training {spec.model_name} on {spec.dataset_name} ({len(data.train)} train / "
            f"{len(data.val)} val / {len(data.test)} test"
            f"{f', inputs {resized}' if resized else ''}) for {_epochs(epochs)} on {device}, "
            f"{recipe_family(spec.model_name)} recipe",
            flush=True,
        )
    metrics = train_teacher(
        model,
        data,
        epochs=epochs,
        recipe=recipe,
        lr=args.lr,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        label_smoothing=args.label_smoothing,
        device=device,
        progress=progress,
        seed=spec.seed,
        # The demo CNN on 8x8 digits is too small to gain from more than one thread.
        threads=(1 if demo else available_cores()) if device.type == "cpu" else None,
    )
    save_checkpoint(model, out, checkpoint_info(spec, data, metrics, command=args.command_line))
    print(
        f"val {metrics['val_acc']:.2f} %  test {metrics['test_acc']:.2f} %  "
        f"({_epochs(epochs)}, {metrics['seconds']:.0f} s) -> {out} (metrics: {metrics_path(out)})",
        flush=True,
    )
    weak = weak_teacher(metrics["val_acc"], data.num_classes)
    if weak is not None:
        print(
            f"warning: {weak}. A search would refuse it: train longer (--epochs), with another "
            "learning rate (--lr) or optimizer (--optimizer)",
            file=sys.stderr,
            flush=True,
        )
    return 0


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"
