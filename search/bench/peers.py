"""Peers: what other tools give a user by default, run once per benchmark on the same teacher and
data as the search, and measured exactly like a trial (the same pipeline, export and ONNX Runtime
measurement, scored against the same baseline).

Each peer is one fixed config, so it runs once per benchmark, not per round. The runs are ordinary
trials of the study ``NAME-peers`` (its ``profile`` attribute names the peer), so a rerun finds
them done, and ``report``, ``show`` and ``export`` work on them.

- ``ort-int8``: ONNX Runtime's static int8 quantization alone on the teacher, what Olive or Intel
  Neural Compressor give a PyTorch model by default: no pruning, no training.
- ``torch-pruning``: Torch-Pruning as its README's quick start does it: ``MetaPruner`` with
  ``GroupMagnitudeImportance(p=2)`` (L2 group importance), ``pruning_ratio=0.5``, per layer
  (``global_pruning=False``), one step, no rounding, the classifier left whole; then plain
  fine-tuning on the labels (cross-entropy: ``distill.alpha`` 0) for the profiles' budget at the
  stages' default SGD learning rate, and an fp32 export (Torch-Pruning quantizes nothing).
- ``nncf``: OpenVINO NNCF's accuracy-aware post-training quantization
  (``nncf.quantize_with_accuracy_control``) of the teacher's ONNX file, its maximum absolute drop
  on the validation split set to the benchmark's bound (1 point by default), calibrated on 256
  training images as ONNX Runtime's int8 is; needs the ``nncf`` extra and is skipped with one
  line without it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from objectives import Constraint
from search.backends import SearchSettings
from search.backends.running import open_study
from search.study import trial_records
from search.study.lifecycle import worker_id
from search.study.records import INTERRUPTED, TrialRecord
from search.trials.trial import score
from search.trials.worker import (
    WorkerSetup,
    failure_reason,
    record_outcome,
    run_and_record,
    worker_setup,
)
from search.workloads import Workload
from spaces import SearchSpace
from stages import Context, timed
from stages.config import PipelineConfig
from stages.measure import OnnxRunner, measure_onnx
from stages.quant_modes import TrainingCalibration

# Peers are scored on every target from their stored ratios: the study's own target only names
# its second objective, fixed so that any --targets resumes the same study.
PEERS_STUDY_TARGET = "size"
NNCF_MAX_DROP = 0.01  # NNCF counts accuracy in [0, 1]: 1 point (the bench passes its own bound)


@dataclasses.dataclass(frozen=True)
class Peer:
    """One peer method: the flat pipeline settings it runs (on top of the space's fixed values,
    with the profiles' distillation budget), or ``run`` for one the pipeline cannot express, with
    ``described``, what its trial records as its config (``report`` and ``show`` read it);
    ``module`` / ``extra``: the optional package it needs and the extra that installs it."""

    name: str
    label: str
    settings: Mapping[str, Any] | None = None
    run: Callable[[Context, float], Path] | None = None
    described: Mapping[str, Any] | None = None
    module: str | None = None
    extra: str | None = None

    def missing(self) -> str | None:
        """The line saying why this peer cannot run here, or None when it can."""
        if self.module is None or importlib.util.find_spec(self.module) is not None:
            return None
        return f"{self.name} row skipped: pip install 'mcaas-search[{self.extra}]'"

    def config(self, space: SearchSpace) -> PipelineConfig:
        assert self.settings is not None, f"{self.name} is not a pipeline config"
        return PipelineConfig.from_flat({**space.fixed_values(), "distill.epochs": space.profile_epochs, **self.settings})


_NO_STRUCTURE_CHANGE = {"depth.fraction": 0.0, "depth.cut": 0, "cluster.k": 0}


def nncf_quantize(ctx: Context, max_drop: float = NNCF_MAX_DROP) -> Path:
    """The teacher's ONNX file quantized by NNCF with accuracy control (``max_drop``: absolute,
    accuracy in [0, 1]); calibrated on training images (``TrainingCalibration``'s sample and
    seed), judged on the validation split. Returns the new file."""
    import nncf
    import onnx

    assert ctx.baseline_onnx is not None
    model = onnx.load(str(ctx.baseline_onnx))
    name = model.graph.input[0].name
    samples = TrainingCalibration(ctx.data.train, PipelineConfig().quantize.calibration_samples, ctx.seed,
                                  input_name=name, batch_size=1)
    calibration = nncf.Dataset(list(iter(samples.get_next, None)))
    validation = nncf.Dataset(list(ctx.data.val.batches(1)), lambda item: {name: item[0].numpy()})
    candidate_path = ctx.workdir / "nncf-candidate.onnx"

    def validate(candidate: Any, items: Iterable[tuple[Any, Any]]) -> tuple[float, list[float]]:
        # The per-image hits go back with the accuracy: given the accuracy alone, NNCF calls this
        # once per validation image to rank its quantizers (a session built 6,000 times).
        onnx.save(candidate, str(candidate_path))
        runner = OnnxRunner(candidate_path, ctx.threads)
        hits = [float((runner.predict(x.numpy()).argmax(axis=1) == y.numpy()).all()) for x, y in items]
        return sum(hits) / max(len(hits), 1), hits

    quantized = nncf.quantize_with_accuracy_control(
        model, calibration, validation, validation_fn=validate, max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE
    )
    candidate_path.unlink(missing_ok=True)
    out = ctx.workdir / "model.onnx"
    onnx.save(quantized, str(out))
    return out


PEERS: dict[str, Peer] = {
    "ort-int8": Peer(
        "ort-int8",
        "ONNX Runtime int8 alone (Olive / INC default)",
        settings={**_NO_STRUCTURE_CHANGE, "prune.ratio": 0.0, "distill.epochs": 0.0, "quantize.mode": "int8-static"},
    ),
    "torch-pruning": Peer(
        "torch-pruning",
        "Torch-Pruning 50 % L2 + fine-tuning",
        settings={
            **_NO_STRUCTURE_CHANGE,
            "prune.ratio": 0.5,
            "prune.criterion": "l2",
            "prune.method": "structured",
            "prune.scope": "uniform",
            "prune.steps": 1,
            "prune.round_to": 1,
            "distill.alpha": 0.0,
            "quantize.mode": "none",
        },
    ),
    "nncf": Peer(
        "nncf",
        "NNCF accuracy-aware int8",
        run=nncf_quantize,
        described={**_NO_STRUCTURE_CHANGE, "prune.ratio": 0.0, "distill.epochs": 0.0, "quantize.mode": "nncf int8 (accuracy-aware)"},
        module="nncf",
        extra="nncf",
    ),
}


def peers_study(bench_name: str) -> str:
    return f"{bench_name}-peers"


def run_peers(
    names: tuple[str, ...],
    settings: SearchSettings,
    workload: Workload,
    constraint: Constraint,
    *,
    baseline: tuple[Path, dict[str, float]],
    say: Callable[[str], None],
) -> None:
    """Run each peer of ``names`` that has no finished trial in ``settings.study`` yet (a rerun
    skips them); a peer whose package is missing is skipped with one line."""
    runnable = []
    for name in names:
        why = PEERS[name].missing()
        if why is None:
            runnable.append(PEERS[name])
        else:
            say(why)
    if not runnable:
        return
    study, info, settings = open_study(settings, workload, PEERS_STUDY_TARGET, constraint, baseline=baseline)
    done = {r.profile for r in trial_records(study) if r.counted and r.state != "running"}
    todo = [p for p in runnable if p.name not in done]
    if not todo:
        return
    setup = worker_setup(study, info, workload, threads=settings.threads, seed=settings.seed or 0,
                         early_stop=False, skip_dominated=False)
    for peer in todo:
        say(f"peer: {peer.name} ({peer.label})")
        trial = study.ask()
        TrialRecord(worker=worker_id(), profile=peer.name).save(trial)
        if peer.run is None:
            run_and_record(trial, setup, lambda p=peer: p.config(settings.space), profile=peer.name)
        else:
            _run_and_record_file(trial, setup, peer)


def _run_and_record_file(trial: Any, setup: WorkerSetup, peer: Peer) -> None:
    """Record a peer that makes its ONNX file itself, measured and scored as a trial is."""
    assert peer.run is not None
    folder = setup.artifacts / "trials" / str(trial.number)
    folder.mkdir(parents=True, exist_ok=True)
    ctx = dataclasses.replace(setup.base, workdir=folder)
    TrialRecord(config=dict(peer.described or {})).save(trial)
    started = time.perf_counter()
    try:
        path, quant_s = timed(lambda: peer.run(ctx, setup.scoring.constraint.max_drop / 100.0))  # type: ignore[misc]
        final, measure_s = timed(lambda: measure_onnx(path, ctx))
        outcome = score(final, setup.scoring, artifact=path, seconds=time.perf_counter() - started, stages=[
            {"stage": "quantize", "seconds": quant_s, "metrics": {}},
            {"stage": "measure", "seconds": measure_s, "metrics": {}},
        ])
    except KeyboardInterrupt:
        TrialRecord(reason=f"{INTERRUPTED} (Ctrl-C)").save(trial)
        setup.study.tell(trial, state=TrialState.FAIL)
        raise
    except Exception as exc:  # a failing peer is recorded with its reason; the bench goes on
        TrialRecord(reason=failure_reason(exc)).save(trial)
        setup.study.tell(trial, state=TrialState.FAIL)
        return
    record_outcome(setup.study, trial, outcome)
