"""A small hand-made study for the report / show / export / list tests.

Trials are built with ``optuna.trial.create_trial`` and ``study.add_trials`` (nothing is searched),
in a journal file under a temporary folder, with the record format the search writes: StudyInfo in
the study's user attributes, and per trial its config, profile, metrics, ratios, violations,
per-stage records, artifact path and failure reason. The exportable trials point at real ONNX
files of two tiny CNNs trained for a moment on scikit-learn's digits, and their stored test
accuracy is measured on those files in ONNX Runtime, as the search measures it, so an export can
be verified against it.
"""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from objectives import Constraint, ratios
from search.study import StudyInfo, TrialRecord
from search.workloads import DatasetRequest, load_dataset
from stages.export import export_onnx, export_pt2
from stages.measure import OnnxRunner, onnx_accuracy
from tests.support import RunCli
from tests.tiny_models import TinyCNN

# A space in which a demo trial takes seconds: for the tests of the machinery around trials (the
# reliability tests, the service), not of the compression.
TINY_SPACE = """
"distill.epochs" = 2
"prune.steps" = 1
"quantize.mode" = ["none", "int8-static"]
drop = ["cluster.k"]
profile_epochs = 2
"""
TARGET = "size"
MAX_DROP = 1.0
# The demo workload as the search stores it (digits needs no data root).
WORKLOAD: dict[str, Any] = {
    "model": "demo",
    "dataset": "digits",
    "data_root": None,
    "image_size": None,
    "seed": 0,
    "val_fraction": 0.1,
    "weights": None,
    "weights_sha256": None,
}
BASELINE: dict[str, float] = {
    "val_acc": 96.0,
    "test_acc": 95.5,
    "bytes": 400_000.0,
    "gzip_bytes": 370_000.0,
    "params": 100_000.0,
    "macs": 2_000_000.0,
    "latency_ms": 0.40,
    # A validation split large enough to vouch for the 0.9-point drop of the recommended trial
    # (the upper end of its paired 95 % interval is 0.98 pt); ``make_study(n_val=...)`` builds
    # the same trials on a smaller split.
    "n_val": 60_000.0,
    "n_test": 360.0,
}
DISTRIBUTIONS = {
    "prune.ratio": FloatDistribution(0.0, 0.95),
    "distill.epochs": FloatDistribution(0.0, 5.0),
    "quantize.mode": CategoricalDistribution(("none", "fp16", "int8-dynamic", "int8-static")),
}


@dataclasses.dataclass(frozen=True)
class TinyArtifacts:
    """Two real ONNX models (and a torch.export copy of the first) with their measured accuracy."""

    good_onnx: Path
    good_ts: Path
    good_test_acc: float
    weak_onnx: Path
    weak_test_acc: float
    n_test: int


@dataclasses.dataclass(frozen=True)
class HandMadeStudy:
    """Where the hand-made study lives and which trial plays which part."""

    storage: str
    name: str
    artifacts_dir: Path
    info: StudyInfo
    trials: dict[str, int]  # role -> trial number


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.nn.Module:
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(y), (64,))
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def build_artifacts(folder: Path) -> TinyArtifacts:
    """Train two tiny CNNs briefly on digits (one well, one barely), export them to ONNX with the
    pipeline's exporter, save a torch.export (.pt2) copy of the first, and measure test accuracy in ONNX
    Runtime. A few seconds on one core."""
    torch.set_num_threads(1)
    data = load_dataset("digits", DatasetRequest(seed=0, val_fraction=0.1))
    example = data.example_input(2)
    paths = {}
    for name, steps, seed in (("good", 150, 0), ("weak", 4, 1)):
        torch.manual_seed(seed)
        model = _train(TinyCNN(1, 10, width=8), data.train.x, data.train.y, steps)
        paths[name] = export_onnx(model, example, folder / f"{name}.onnx")
        if name == "good":
            export_pt2(model, example, folder / "good.pt2")
    acc = {k: onnx_accuracy(OnnxRunner(p, threads=1), data.test, 512) for k, p in paths.items()}
    return TinyArtifacts(
        good_onnx=paths["good"],
        good_ts=folder / "good.pt2",
        good_test_acc=acc["good"],
        weak_onnx=paths["weak"],
        weak_test_acc=acc["weak"],
        n_test=len(data.test),
    )


_ARTIFACTS: dict[str, TinyArtifacts] = {}


def tiny_artifacts(tmp_path_factory: Any) -> TinyArtifacts:
    """Build the tiny models once per test session (``tmp_path_factory`` lives that long)."""
    if "tiny" not in _ARTIFACTS:
        _ARTIFACTS["tiny"] = build_artifacts(tmp_path_factory.mktemp("tiny-models"))
    return _ARTIFACTS["tiny"]


def _config(ratio: float, epochs: float, mode: str) -> dict[str, Any]:
    return {
        "prune.ratio": ratio,
        "prune.criterion": "l2",
        "prune.method": "structured",
        "prune.scope": "global",
        "prune.steps": 1,
        "prune.round_to": 8,
        "distill.epochs": epochs,
        "distill.temperature": 4.0,
        "distill.alpha": 0.7,
        "distill.lr": 0.01,
        "cluster.k": 0,
        "quantize.mode": mode,
        "export.opset": 18,
    }


def _stages(final: dict[str, float], mode: str) -> list[dict[str, Any]]:
    torch_metrics = {"val_acc": final["val_acc"] - 0.5, "bytes": final["bytes"] * 3.5,
                     "params": final["params"], "macs": final["macs"]}
    stages = [
        {"stage": "prune", "seconds": 0.4,
         "metrics": {**torch_metrics, "val_acc": final["val_acc"] - 6}},
        {"stage": "distill", "seconds": 3.2, "metrics": {**torch_metrics, "samples_seen": 2560.0}},
    ]
    if mode != "none":
        stages.append({"stage": "export", "seconds": 0.6,
                       "metrics": {**final, "bytes": final["bytes"] * 3.6,
                                   "latency_ms": final["latency_ms"] * 2}})
        stages.append({"stage": "quantize", "seconds": 0.9, "metrics": final})
    else:
        stages.append({"stage": "export", "seconds": 0.6, "metrics": final})
    stages.append({"stage": "measure", "seconds": 0.3, "metrics": {}})
    return stages


def _complete(
    info: StudyInfo,
    folder: Path,
    number: int,
    *,
    drop: float,
    size_ratio: float,
    config: dict[str, Any],
    onnx: Path,
    test_acc: float,
    n_test: int,
    profile: str | None = None,
    torch_file: Path | None = None,
) -> optuna.trial.FrozenTrial:
    trial_dir = folder / "trials" / str(number)
    trial_dir.mkdir(parents=True)
    artifact = shutil.copyfile(onnx, trial_dir / "model.onnx")
    base = info.baseline
    metrics = {
        "val_acc": base["val_acc"] - drop,
        "test_acc": test_acc,
        "bytes": base["bytes"] / size_ratio,
        "gzip_bytes": base["gzip_bytes"] / size_ratio / 1.1,
        "params": base["params"] / (1 + config["prune.ratio"] * 3),
        "macs": base["macs"] / (1 + config["prune.ratio"] * 3),
        "latency_ms": base["latency_ms"] / (1 + size_ratio / 10),
        "teacher_latency_ms": base["latency_ms"],
        "n_val": base["n_val"],
        # Paired counts behind the drop: only the teacher right on drop % of the images.
        "val_lost": float(round(drop * base["n_val"] / 100)),
        "val_gained": 0.0,
        "n_test": float(n_test),
    }
    violations = info.constraint.violations(info.teacher_acc, metrics)
    trial_ratios = ratios(base, metrics)
    record = TrialRecord(
        profile=profile,
        config=config,
        metrics=metrics,
        ratios=trial_ratios,
        drop=drop,
        test_drop=base["test_acc"] - test_acc,
        violations=violations,
        stages=_stages(metrics, config["quantize.mode"]),
        artifact=str(Path(artifact).resolve()),
        torch_artifact=str(shutil.copyfile(torch_file, trial_dir / "model.pt2")) if torch_file is not None else None,
    )
    return create_trial(
        state=TrialState.COMPLETE,
        values=[metrics["val_acc"], trial_ratios[TARGET]],
        params={k: config[k] for k in DISTRIBUTIONS},
        distributions=DISTRIBUTIONS,
        user_attrs=record.to_attrs(),
        constraints=violations,
    )


def _stopped(state: TrialState, config: dict[str, Any], reason: str) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=state,
        params={k: config[k] for k in DISTRIBUTIONS},
        distributions=DISTRIBUTIONS,
        user_attrs=TrialRecord(config=config, reason=reason).to_attrs(),
    )


@dataclasses.dataclass(frozen=True)
class Finished:
    """A completed trial: its drop (points), size ratio, settings, which tiny model it ships."""

    drop: float
    size_ratio: float
    config: dict[str, Any]
    model: str = "weak"
    profile: str | None = None
    torchscript: bool = False


@dataclasses.dataclass(frozen=True)
class Stopped:
    """A pruned or failed trial: no metrics, a reason."""

    state: TrialState
    config: dict[str, Any]
    reason: str


# role -> trial, in trial-number order. Front: 0 (3.9x), 1 (8x), 3 (12x, recommended);
# 7 is dominated by 1; 2 and 4 break the 1-point drop limit.
FEASIBLE_TRIALS: dict[str, Finished | Stopped] = {
    "high-accuracy": Finished(0.2, 3.9, _config(0.3, 0.0, "int8-static"), "good", "high-accuracy"),
    "balanced": Finished(0.6, 8.0, _config(0.5, 2.0, "int8-static"), profile="balanced"),
    "max-compression": Finished(
        3.5, 40.0, _config(0.9, 2.0, "int8-static"), profile="max-compression"
    ),
    "best": Finished(0.9, 12.0, _config(0.75, 3.0, "none"), "good", torchscript=True),
    "infeasible": Finished(1.4, 15.0, _config(0.8, 1.0, "fp16")),
    "pruned": Stopped(
        TrialState.PRUNED,
        _config(0.85, 2.0, "int8-dynamic"),
        "stopped at 40% of distillation: validation accuracy 61.00 % cannot plausibly reach "
        "the required 95.00 %",
    ),
    "failed": Stopped(
        TrialState.FAIL,
        _config(0.6, 1.0, "int8-static"),
        "StageError: prune: layer features.0.0 cannot be pruned",
    ),
    "dominated": Finished(0.8, 5.0, _config(0.4, 1.0, "none"), "good"),
}
# Every completed trial breaks the limit; trial 0 by the least.
INFEASIBLE_TRIALS: dict[str, Finished | Stopped] = {
    "closest": Finished(1.7, 6.0, _config(0.5, 1.0, "int8-static")),
    "worse": Finished(2.5, 20.0, _config(0.85, 1.0, "int8-static")),
    "failed": Stopped(TrialState.FAIL, _config(0.6, 1.0, "int8-static"), "out of memory"),
}


def make_study(
    root: Path,
    artifacts: TinyArtifacts,
    *,
    name: str = "hand",
    storage: Path | None = None,
    feasible: bool = True,
    n_val: int | None = None,
) -> HandMadeStudy:
    """Add study ``name`` to the journal ``storage`` (default ``root / "mcaas.journal"``),
    its validation split ``n_val`` images (default ``BASELINE["n_val"]``).

    With ``feasible`` (default) it has three fixed-profile trials, a recommended trial with a
    torch.export copy, an infeasible, a dominated, a pruned and a failed trial. Without, every
    completed trial breaks the drop limit (and one trial failed).
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = storage or root / "mcaas.journal"
    folder = root / name
    folder.mkdir(parents=True)
    info = StudyInfo(
        workload=dict(WORKLOAD),
        target=TARGET,
        constraint=Constraint(max_drop=MAX_DROP),
        baseline={**BASELINE, **({} if n_val is None else {"n_val": float(n_val)})},
        baseline_onnx=str(artifacts.good_onnx),
        artifacts_dir=str(folder),
    )
    study = optuna.create_study(
        study_name=name,
        storage=JournalStorage(JournalFileBackend(str(storage))),
        directions=["maximize", "maximize"],
    )
    info.save(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(["val_acc", f"{TARGET}_ratio"])
    n_test = artifacts.n_test
    models = {
        "good": dict(onnx=artifacts.good_onnx, test_acc=artifacts.good_test_acc, n_test=n_test),
        "weak": dict(onnx=artifacts.weak_onnx, test_acc=artifacts.weak_test_acc, n_test=n_test),
    }
    trials: list[optuna.trial.FrozenTrial] = []
    roles: dict[str, int] = {}
    for role, spec in (FEASIBLE_TRIALS if feasible else INFEASIBLE_TRIALS).items():
        number = len(trials)  # add_trials numbers trials in order, from 0
        roles[role] = number
        if isinstance(spec, Stopped):
            trials.append(_stopped(spec.state, spec.config, spec.reason))
            continue
        trials.append(
            _complete(
                info,
                folder,
                number,
                drop=spec.drop,
                size_ratio=spec.size_ratio,
                config=spec.config,
                profile=spec.profile,
                torch_file=artifacts.good_ts if spec.torchscript else None,
                **models[spec.model],
            )
        )
    study.add_trials(trials)
    return HandMadeStudy(str(storage), name, folder, info, roles)


def make_foreign_study(storage: Path, name: str = "foreign") -> None:
    """A study in the same storage that mcaas-search did not make (no StudyInfo)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=JournalStorage(JournalFileBackend(str(storage)))
    )
    study.add_trial(create_trial(value=1.0))


def hand_made_storage(tmp_path_factory: Any) -> tuple[HandMadeStudy, HandMadeStudy]:
    """One journal with three studies: ``hand`` (feasible trials), ``hopeless`` (none feasible)
    and ``foreign`` (not made by mcaas-search). Tests must not write into their folders."""
    root = tmp_path_factory.mktemp("studies")
    artifacts = tiny_artifacts(tmp_path_factory)
    hand = make_study(root, artifacts)
    hopeless = make_study(root, artifacts, name="hopeless", feasible=False)
    make_foreign_study(Path(hand.storage))
    return hand, hopeless


def assert_refused(run_cli: RunCli, *argv: str, says: str) -> str:
    """The command exits 2 with one line on stderr, containing ``says``, and no traceback."""
    code, out, err = run_cli(argv)
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert err.count("\n") == 1 and err.startswith("mcaas-search: error: "), err
    assert says in err, err
    return err


def load_hand_made(made: HandMadeStudy) -> tuple[optuna.Study, list[Any]]:
    """``(study, trial records)`` of a hand-made study, read back from its storage."""
    from search.study import load_study, open_storage, trial_records

    study = load_study(made.name, open_storage(made.storage, create=False))
    return study, trial_records(study)
