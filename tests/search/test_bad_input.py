"""Bad input and untrusted files (the "Reliability and security" issue, parts 3 and 4).

Every refusal is one line on stderr, exit code 2, no traceback, and writes nothing: no study in
a journal, no cache, no output file. Flags are checked before any work (a property test feeds
every command random bad values for its real flags, with the functions that would train, run a
pipeline, measure a baseline or create a study replaced by tripwires). Checkpoints are read with
``weights_only=True``; a pickled module needs ``--allow-pickle``; a user's model file runs only
when named by path.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from objectives import Constraint
from search.cli import COMMANDS, build_parser, main
from search.errors import UserError
from search.study import StudyInfo, open_storage
from search.study.storage import CONNECT_TIMEOUT_S, rdb_engine_kwargs
from search.workloads import Analysis, DemoCNN, WorkloadSpec, load_workload
from tests.search.study_fixtures import HandMadeStudy
from tests.support import RunCli
from tests.tiny_models import TinyCNN

torch.set_num_threads(1)

# A port nothing listens on: a database there must be refused at once, not waited for.
UNREACHABLE_DB = "postgresql://127.0.0.1:1/x"


class WorkStarted(BaseException):
    """Raised by a tripwire: bad input got as far as real work. A BaseException, so that no
    ``except Exception`` along the way can turn it into a failed trial or a message."""


# Where real work starts, as the modules that start it name it.
TRIPWIRES = (
    "search.workloads.demo.train_teacher",
    "search.commands.train.train_teacher",
    "search.trials.context.teacher_logits",
    "search.trials.context.measure_baseline",
    "search.trials.trial.run_pipeline",
    "search.commands.try_config.run_pipeline",
    "search.backends.running.create_or_resume",
    "search.commands.export.export_trial",
    "search.commands.report.write_report",
    "search.bench.summary.write_summary",
    "search.service.app.create_app",
)


@pytest.fixture
def tripwires(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every function that starts real work raise ``WorkStarted``."""
    import importlib

    # Import every module first: one that does `from a import f` while `a.f` is already patched
    # would keep the tripwire for good (monkeypatch restores only what it set).
    for target in TRIPWIRES:
        importlib.import_module(target.rpartition(".")[0])
    for target in TRIPWIRES:

        def tripped(*args: Any, _target: str = target, **kwargs: Any) -> Any:
            raise WorkStarted(_target)

        monkeypatch.setattr(target, tripped)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder (the cwd): no cached demo teacher, no studies."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _refused(run_cli: RunCli, *argv: str, says: str) -> str:
    """The command exits 2 with ``says`` in one line on stderr, nothing on stdout, no traceback
    (argparse's own refusals included)."""
    code, out, err = run_cli(argv)
    assert code == 2, (argv, code, out, err)
    assert err.count("\n") == 1 and err.startswith("mcaas-search"), err
    assert "Traceback" not in err + out and out == "", (err, out)
    assert says in err, err
    return err


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Files to refuse


def _checkpoints(folder: Path, marker: Path) -> dict[str, Path]:
    """Checkpoint files of every bad kind, in ``folder``."""

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (exec, (f"open({str(marker)!r}, 'w').write('pwned')",))

    files = {name: folder / f"{name}.pt" for name in (
        "garbage", "module", "exploit", "other-model", "three-channels", "five-classes", "list", "not-tensors",
        "empty", "truncated",
    )}
    files["garbage"].write_bytes(b"\x80\xe6 no checkpoint \x00\xff" * 8)  # "pickle protocol 230"
    torch.save(DemoCNN(), files["module"])
    torch.save({"weight": torch.zeros(2), "payload": Exploit()}, files["exploit"])
    torch.save(TinyCNN().state_dict(), files["other-model"])
    torch.save(DemoCNN(in_channels=3).state_dict(), files["three-channels"])
    torch.save(DemoCNN(num_classes=5).state_dict(), files["five-classes"])
    torch.save([torch.zeros(1)], files["list"])
    torch.save({"features.0.weight": 1.0}, files["not-tensors"])
    torch.save({}, files["empty"])
    good = io.BytesIO()
    torch.save(DemoCNN().state_dict(), good)
    files["truncated"].write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    files["folder"] = folder / "a-folder.pt"
    files["folder"].mkdir()
    return files


CHECKPOINT_REFUSALS = {
    "garbage": "cannot read checkpoint",
    "module": "pass --allow-pickle if you trust the file",
    "exploit": "pass --allow-pickle if you trust the file",
    "other-model": "does not fit the model: missing: features.0.weight",
    "three-channels": "shape mismatch: features.0.weight (16, 3, 3, 3) vs (16, 1, 3, 3)",
    "five-classes": "shape mismatch: classifier.weight (5, 64) vs (10, 64)",
    "list": "is not a state_dict (found list)",
    "not-tensors": "is not a state_dict: 1 entries are not tensors",
    "empty": "is not a state_dict (found dict)",
    "truncated": "cannot read checkpoint",
    "folder": "is a folder, not a file",
}


@pytest.mark.parametrize("command", ["run", "try", "train"])
def test_bad_checkpoints_are_refused_before_any_work(
    command: str, workdir: Path, tmp_path: Path, tripwires: None, run_cli: RunCli
) -> None:
    marker = tmp_path / "pwned"
    files = _checkpoints(tmp_path, marker)
    extra = {"run": ["--trials", "2"], "try": [], "train": ["--out", str(tmp_path / "t.pt")]}[command]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may warn the user either
        for kind, says in CHECKPOINT_REFUSALS.items():
            _refused(run_cli, command, "--model", "demo", "--weights", str(files[kind]), *extra, says=says)
    assert not marker.exists()  # the exploit's code never ran
    assert _tree(workdir) == {}  # no study, no cache, nothing


def test_checkpoints_are_read_weights_only_and_a_module_needs_allow_pickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from search.workloads import read_checkpoint

    marker = tmp_path / "pwned"
    files = _checkpoints(tmp_path, marker)
    calls: list[bool] = []
    real_load = torch.load

    def spy(*args: Any, weights_only: bool, **kwargs: Any) -> Any:
        calls.append(weights_only)
        return real_load(*args, weights_only=weights_only, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    state = read_checkpoint(files["three-channels"])
    assert set(state) == set(DemoCNN(in_channels=3).state_dict())
    refusals = {
        "module": "holds more than tensors .* --allow-pickle",
        "exploit": "holds more than tensors .* --allow-pickle",
        "garbage": "cannot read checkpoint .*not a torch checkpoint|cannot read checkpoint",
    }
    for kind, why in refusals.items():
        with pytest.raises(UserError, match=why):
            read_checkpoint(files[kind])
    assert calls == [True] * 4  # never unpickled freely without --allow-pickle
    assert not marker.exists()

    module = read_checkpoint(files["module"], allow_pickle=True)
    assert isinstance(module, DemoCNN)
    assert calls[-2:] == [True, False]  # weights-only first, the free unpickler only when allowed
    workload = load_workload(
        WorkloadSpec(model="demo", weights=files["module"], allow_pickle=True, allow_weak_teacher=True),
        device=torch.device("cpu"),
        studies_dir=tmp_path / "studies", progress=False,
    )
    assert isinstance(workload.teacher, DemoCNN)


def test_a_user_model_file_runs_only_when_named_by_its_path(
    workdir: Path, tmp_path: Path, tripwires: None, run_cli: RunCli
) -> None:
    marker = tmp_path / "ran"
    (workdir / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('imported')\n"
        "from search.workloads import DemoCNN\n"
        "def make(in_channels=1, num_classes=10):\n"
        "    return DemoCNN(in_channels, num_classes)\n"
    )
    weights = tmp_path / "w.pt"
    torch.save(DemoCNN().state_dict(), weights)
    files_before = _tree(workdir)
    _refused(run_cli, "run", "--model", "evil", "--weights", str(weights), "--dataset", "digits",
             says="unknown model 'evil'")
    # Named by path, but refused for another reason before the model is built: not imported.
    _refused(run_cli, "run", "--model", "evil.py:make", "--weights", str(tmp_path / "missing.pt"),
             "--dataset", "digits", says="does not exist")
    _refused(run_cli, "run", "--model", "evil.py:make", "--weights", str(weights), "--dataset", "digits",
             "--space", "missing.toml", says="space file")
    assert not marker.exists()
    assert _tree(workdir) == files_before
    workload = load_workload(WorkloadSpec(model="evil.py:make", weights=weights, dataset="digits", allow_weak_teacher=True),
                             device=torch.device("cpu"), studies_dir=tmp_path / "studies", progress=False)
    assert marker.read_text() == "imported"  # an explicit path runs the file, as documented
    assert isinstance(workload.teacher, DemoCNN)


SPACE_ERRORS = {
    "unknown-key.toml": ('"prune.bogus" = 1\n', "unknown setting 'prune.bogus'"),
    "unknown-top.toml": ("ratio = 0.5\n", "unknown setting 'ratio'"),
    "low-above-high.toml": ('"prune.ratio" = { low = 0.8, high = 0.2 }\n', "`low <= high` must hold"),
    "empty-choices.toml": ('"quantize.mode" = []\n', "empty list of choices"),
    "unknown-criterion.toml": ('"prune.criterion" = ["l2", "bogus"]\n', "prune.criterion must be one of"),
    "unknown-mode.toml": ('"quantize.mode" = "int4"\n', "quantize.mode must be one of"),
    "out-of-range.toml": ('"prune.ratio" = 1.5\n', "prune.ratio must lie in [0.0, 0.95]"),
    "wrong-type.toml": ('"distill.epochs" = "many"\n', "distill.epochs must be a number"),
    "bad-drop.toml": ('drop = ["prune.bogus"]\n', "drop names unknown setting"),
    "syntax.toml": ('"prune.ratio" = \n', "TOML syntax error"),
    "binary.toml": (b"\xff\xfe\x00\x01", "not UTF-8 text"),
}


def test_space_file_errors_are_refused_before_any_work(
    workdir: Path, tmp_path: Path, tripwires: None, run_cli: RunCli
) -> None:
    for name, (text, says) in SPACE_ERRORS.items():
        path = tmp_path / name
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        err = _refused(run_cli, "--space", str(path), "--trials", "2", says=says)
        assert name in err  # the message names the file
    _refused(run_cli, "--space", str(tmp_path / "missing.toml"), says="does not exist")
    _refused(run_cli, "--space", str(tmp_path), says="is a folder")
    assert _tree(workdir) == {}  # the demo teacher was not trained, no study was created


def test_unreadable_data_roots_are_refused(
    workdir: Path, tmp_path: Path, tripwires: None, run_cli: RunCli
) -> None:
    weights = tmp_path / "w.pt"
    torch.save(DemoCNN().state_dict(), weights)
    junk = tmp_path / "junk"
    junk.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (junk / stem).write_bytes(b"not an IDX file at all")
    (junk / "cifar-10-batches-py").mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    base = ("run", "--model", "demo", "--weights", str(weights), "--trials", "2")
    cases = [
        (("--dataset", "fashion-mnist", "--data-root", str(tmp_path / "missing")), "does not exist"),
        (("--dataset", "fashion-mnist", "--data-root", str(a_file)), "fashion-mnist files not found"),
        (("--dataset", "fashion-mnist", "--data-root", str(junk)), "is not an unsigned-byte IDX file"),
        (("--dataset", "cifar10", "--data-root", str(junk)), "cifar10 files not found"),
        (("--dataset", "imagefolder", "--data-root", str(junk)), "class sub-folder"),
        (("--dataset", "digits", "--data-root", str(junk)), "takes no --data-root"),
    ]
    for flags, says in cases:
        _refused(run_cli, *base, *flags, says=says)
    assert _tree(workdir) == {}


# ---------------------------------------------------------------------------------------------
# Flags, storages, studies


PARSE_REFUSALS = [
    (["--target", "accuracy"], "invalid choice: 'accuracy'"),
    (["--sampler", "cmaes"], "invalid choice: 'cmaes'"),
    (["--backend", "dask"], "invalid choice: 'dask'"),
    (["--drop-type", "percent"], "invalid choice: 'percent'"),
    (["--max-drop", "-1"], "must be >= 0 and < 100"),
    (["--max-drop", "100"], "must be >= 0 and < 100"),
    (["--max-drop", "nan"], "must be >= 0 and < 100"),
    (["--trials", "0"], "expected a positive integer"),
    (["--trials", "-3"], "expected a positive integer"),
    (["--trials", "1e3"], "expected a positive integer"),
    (["--trials", "9" * 30], "expected a positive integer up to 100000"),
    (["--jobs", "0"], "expected a positive integer"),
    (["--jobs", "100000"], "up to 1024"),
    (["--timeout", "0"], "expected a positive duration"),
    (["--cpus-per-trial", "-1"], "must be > 0"),
    (["--gpus-per-trial", "nan"], "must be >= 0"),
    (["--study", ""], "--study: expected a name"),
    (["--study", "../outside"], "--study: expected a name"),
    (["--study", ".cache"], "--study: expected a name"),
    (["try", "--set", "prune.criterion=bogus"], "prune.criterion must be one of"),
    (["try", "--set", "quantize.mode=int4"], "quantize.mode must be one of"),
    (["try", "--set", "prune.ratio"], "--set expects STAGE.KEY=VALUE"),
    (["train", "--optimizer", "lion"], "invalid choice: 'lion'"),
    (["train", "--lr", "inf"], "--lr must be > 0 and finite"),
    (["train", "--epochs", "0"], "--epochs must be >= 1"),
    (["--seed", "-1"], "--seed: must lie in [0, 4294967295]"),
    (["--val-fraction", "1"], "--val-fraction must lie strictly between 0 and 1"),
    (["--device", "cuda:99"], "cuda:99"),
    # --study makes a demo run look for that study's stored teacher first: that look once created
    # an empty studies/mcaas.journal before the device was refused.
    (["--study", "s", "--device", "tpu"], "unknown device 'tpu'"),
    (["--model", "resnet-9000"], "unknown model 'resnet-9000'"),
    (["--dataset", "mnist-ish"], "unknown dataset 'mnist-ish'"),
]


@pytest.mark.parametrize(("argv", "says"), PARSE_REFUSALS, ids=[" ".join(a) for a, _ in PARSE_REFUSALS])
def test_bad_flag_values_are_refused(
    argv: list[str], says: str, workdir: Path, tripwires: None, run_cli: RunCli
) -> None:
    _refused(run_cli, *argv, says=says)
    assert _tree(workdir) == {}


# A Python without the `service` extra: every import of fastapi fails as a missing module would.
WITHOUT_FASTAPI = (
    "import sys; sys.modules['fastapi'] = None; from search.cli import main; "
    "raise SystemExit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize("argv", [["--help"]] + [[name, "--help"] for name in COMMANDS if name != "serve"])
def test_every_help_prints(argv: list[str], run_cli: RunCli) -> None:
    # A help text is a %-format: a bare "%" in one (a "95 % interval") made --help a traceback.
    code, out, err = run_cli(argv)
    assert code == 0, err
    assert "usage: mcaas-search" in out and err == ""


@pytest.mark.parametrize("argv", [["serve"], ["serve", "--help"]])
def test_serve_without_the_service_extra_names_it_in_one_line(argv: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_FASTAPI, *argv], cwd=tmp_path, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}, timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "fastapi is missing" in done.stderr
    assert "pip install 'mcaas-search[service]'" in done.stderr
    assert done.stdout == ""


def test_an_unreachable_storage_fails_fast_and_writes_nothing(
    workdir: Path, tripwires: None, run_cli: RunCli
) -> None:
    started = time.monotonic()
    _refused(run_cli, "--storage", UNREACHABLE_DB, "--trials", "2", says=f"cannot open storage '{UNREACHABLE_DB}'")
    assert time.monotonic() - started < CONNECT_TIMEOUT_S + 5
    for storage, says in (
        ("redis://127.0.0.1:1", "unsupported storage URL"),
        (str(workdir / "missing" / "x.journal"), "storage folder"),
        (str(workdir), "is a folder"),
        ("sqlite:////nonexistent-folder/x.db", "cannot open storage"),
    ):
        _refused(run_cli, "--storage", storage, "--trials", "2", says=says)
    for command in (["list"], ["report", "--study", "s"], ["show", "--study", "s", "--trial", "0"]):
        _refused(run_cli, *command, "--storage", UNREACHABLE_DB, says="cannot open storage")
    assert _tree(workdir) == {}


def test_looking_for_a_study_teacher_creates_no_journal(workdir: Path) -> None:
    # A demo worker looks for its study's teacher before anything else is checked; a refusal after
    # that look must find the folder as it was.
    from search.backends import join_with_study_teacher

    assert join_with_study_teacher(WorkloadSpec(), "s", None) is None
    assert _tree(workdir) == {}


def test_database_storages_get_a_connect_timeout() -> None:
    for url in ("postgresql://db/x", "postgresql+psycopg2://db/x", "mysql://db/x", "mysql+pymysql://db/x"):
        assert rdb_engine_kwargs(url)["connect_args"]["connect_timeout"] == CONNECT_TIMEOUT_S
    assert rdb_engine_kwargs("sqlite:///x.db") == {"connect_args": {"timeout": 60}}


def test_a_file_that_is_not_a_journal_is_refused_and_left_untouched(
    workdir: Path, tmp_path: Path, tripwires: None, run_cli: RunCli
) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"not a journal, and no newline at the end")
    for command in (["--trials", "2"], ["list"], ["report", "--study", "s"]):
        _refused(run_cli, *command, "--storage", str(notes), says="is not an Optuna journal file")
    assert notes.read_bytes() == b"not a journal, and no newline at the end"


def _study_for(
    workdir: Path, weights: Path, *, target: str = "size", analysis: dict[str, Any] | None = None,
    space: list[list[str]] | None = None,
) -> Path:
    """Study ``s`` in the default journal, recorded for the workload ``demo + weights`` (with a
    pre-flight ``analysis`` and the ``space`` it searched, where given)."""
    workload = load_workload(WorkloadSpec(model="demo", weights=weights, allow_weak_teacher=True), device=torch.device("cpu"),
                             studies_dir=workdir / "studies", progress=False)
    journal = workdir / "studies" / "mcaas.journal"
    journal.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name="s", storage=open_storage(str(journal), create=True),
                                directions=["maximize", "maximize"])
    StudyInfo(workload=workload.fingerprint, target=target, constraint=Constraint(max_drop=1.0),
              baseline={"val_acc": 90.0, "test_acc": 90.0, "bytes": 1e5, "latency_ms": 0.1},
              baseline_onnx=str(workdir / "b.onnx"), artifacts_dir=str(workdir / "studies" / "s"),
              space=space or [], analysis=analysis or {}).save(study)
    return journal


def test_a_study_name_used_for_another_workload_or_target_is_refused(
    workdir: Path, tmp_path: Path, tripwires: None, run_cli: RunCli
) -> None:
    ours, other = tmp_path / "ours.pt", tmp_path / "other.pt"
    torch.manual_seed(0)
    torch.save(DemoCNN().state_dict(), ours)
    torch.save(DemoCNN().state_dict(), other)
    journal = _study_for(workdir, ours)
    before = _tree(workdir)
    run = ("--model", "demo", "--study", "s", "--trials", "2", "--allow-weak-teacher")
    _refused(run_cli, *run, "--weights", str(other), says="was run for other settings (weights_sha256: stored")
    _refused(run_cli, *run, "--weights", str(ours), "--target", "latency",
             says="(target: stored 'size', given 'latency')")
    _refused(run_cli, *run, "--weights", str(ours), "--max-drop", "2", says="constraint: stored")
    _refused(run_cli, *run, "--weights", str(ours), "--seed", "3", says="seed: stored 0, given 3")
    assert _tree(workdir) == before  # not a byte written: no trial, no teacher logits, no baseline
    assert _digest(journal) == hashlib.sha256(before["studies/mcaas.journal"]).hexdigest()


def test_a_study_resumed_with_another_space_is_refused(
    workdir: Path, tmp_path: Path, tripwires: None, run_cli: RunCli
) -> None:
    weights = tmp_path / "w.pt"
    torch.save(DemoCNN().state_dict(), weights)
    analysis = Analysis(
        structural=True, structural_reason=None, frozen_layers={}, prunable_layers=2, weight_layers=3,
        blocks=[], cuts=[], params=10, macs=100, operators=7, latency_ms={1: 0.1}, epoch_seconds=1.0,
        steps_per_epoch=9, batch_size=128, train_size=1077, val_size=360, test_size=360, seconds=1.0,
    )
    # Created searching 0.5-1 epochs of distillation; the space given now searches the default.
    journal = _study_for(workdir, weights, analysis=analysis.to_dict(),
                         space=[["distill.epochs", "0.5 .. 1.0"], ["prune.ratio", "0.0 .. 0.95"]])
    before = _tree(workdir)
    _refused(run_cli, "--model", "demo", "--weights", str(weights), "--study", "s", "--trials", "2",
             "--allow-weak-teacher", says="searched another space (distill.epochs: stored '0.5 .. 1.0', given")
    assert _tree(workdir) == before
    assert _digest(journal) == hashlib.sha256(before["studies/mcaas.journal"]).hexdigest()


def test_exports_that_cannot_be_made_write_nothing(
    hand: HandMadeStudy, tmp_path: Path, run_cli: RunCli
) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"yesterday's model")
    base = ("export", "--study", hand.name, "--storage", hand.storage, "--out", str(out))
    _refused(run_cli, *base, "--trial", "99", says="has no trial 99")
    _refused(run_cli, *base, "--trial", "-1", says="has no trial -1")
    _refused(run_cli, *base, "--trial", str(hand.trials["failed"]), says="failed, so it has no model to export")
    _refused(run_cli, *base, "--trial", str(hand.trials["pruned"]), says="was stopped early (pruned)")
    _refused(run_cli, "export", "--study", hand.name, "--storage", hand.storage, "--trial", "3",
             "--out", str(tmp_path / "missing" / "m.onnx"), says="--out folder")
    _refused(run_cli, "export", "--study", "nope", "--storage", hand.storage, "--trial", "3",
             "--out", str(out), says="no study named 'nope'")
    assert _tree(tmp_path) == {"m.onnx": b"yesterday's model"}


# ---------------------------------------------------------------------------------------------
# Property: random bad arguments for every command


NUMBER_JUNK = ("", "abc", "1..2", "0x", "one", "--", "1,5")  # not numbers
NOT_FUZZED = {
    # Flags without a value, and values nothing can refuse: any text is a fine folder or address.
    "--download", "--allow-pickle", "--allow-weak-teacher", "--no-profiles", "--no-early-stop", "--json", "--no-progress", "--best", "--report-only", "--quick",
    "--allow-model-code",
    "--address", "--workdir", "--studies-dir",
}


def _bad_values(inputs: Path, hand: HandMadeStudy) -> dict[str, dict[str, st.SearchStrategy[str]]]:
    """command -> flag -> values that flag must refuse (whatever the other flags say)."""
    missing = str(inputs / "missing" / "file")
    junk = st.sampled_from(NUMBER_JUNK) | st.text(st.characters(blacklist_categories=("Nd", "Cs")), max_size=8)
    huge = st.just("9" * 30)
    negative = st.integers(-10**9, -1).map(str)

    def floats(*bad: str) -> st.SearchStrategy[str]:
        return st.sampled_from(bad) | junk

    def ints(*bad: str) -> st.SearchStrategy[str]:
        return st.sampled_from(bad) | negative | junk | st.sampled_from(["1.5", "2e3"])

    choice = st.sampled_from(["", "bogus", "SIZE", "tpe ", "none?"])
    path = st.sampled_from([missing, str(inputs / "garbage.pt"), str(inputs)])
    workload = {
        "--model": st.sampled_from(["no-such-model", "missing.py:make", "", "demo.py"]),
        "--weights": path,
        "--dataset": st.sampled_from(["no-such-data", "", "MNIST"]),
        "--data-root": st.sampled_from([missing, str(inputs)]),  # digits takes none
        "--image-size": ints("0", "3", "1025") | huge,
        "--seed": negative | huge | junk,
        "--val-fraction": floats("0", "1", "-0.1", "nan", "inf", "2"),
        "--device": st.sampled_from(["tpu", "cuda:99", "bogus", "", "meta"]),
    }
    return {
        "run": {
            **workload,
            "--target": choice, "--drop-type": choice, "--backend": choice, "--sampler": choice,
            "--max-drop": floats("-1", "100", "nan", "inf", "1e9"),
            "--select": choice, "--strategy": choice,
            "--max-size": floats("0", "-5", "nan", "inf"),
            "--max-latency": floats("0", "-5", "nan", "inf"),
            "--trials": ints("0") | huge, "--jobs": ints("0") | huge, "--threads": ints("0") | huge,
            "--timeout": floats("0", "-5", "5x", "nan", "1 h"),
            "--study": st.sampled_from(["", "../up", ".hidden", "a/b", "x" * 200, "sp ace"]),
            "--storage": st.sampled_from([missing, str(inputs), str(inputs / "garbage.pt"), "redis://h", UNREACHABLE_DB]),
            "--artifacts": st.sampled_from(["s3://", "s3://b/p", "gs://b", str(inputs / "garbage.pt"),
                                            str(inputs / "garbage.pt" / "sub")]),
            "--space": st.sampled_from([missing, str(inputs), str(inputs / "bad.toml"), str(inputs / "garbage.pt")]),
            "--cpus-per-trial": floats("0", "-1", "nan", "inf"),
            "--gpus-per-trial": floats("-1", "nan", "inf"),
        },
        "try": {
            **workload,
            "--set": st.sampled_from(["bogus", "prune.ratio=2", "=1", "prune.ratio=", "quantize.mode=int4",
                                      "prune.criterion=bogus", "nope.key=1", "distill.lr=-1"]),
            "--threads": ints("0") | huge,
        },
        "train": {
            **workload,
            "--out": st.sampled_from([missing, str(inputs / "metrics.json")]),
            "--epochs": ints("0"),
            "--lr": floats("0", "-1", "nan", "inf"),
            "--batch-size": ints("0", "1"),
            "--optimizer": choice,
            "--label-smoothing": floats("-0.1", "1", "nan"),
        },
        "report": {
            "--study": st.sampled_from(["", "nope", "HAND"]),
            "--storage": st.sampled_from([missing, str(inputs), str(inputs / "garbage.pt"), UNREACHABLE_DB]),
            "--reference": st.sampled_from([missing, str(inputs / "garbage.pt"), str(inputs)]),
            "--out": st.just(hand.storage),  # a file, not a folder
            "--screenshot": st.just(missing),
            "--select": choice,
        },
        "show": {
            "--study": st.sampled_from(["", "nope", "foreign"]),
            "--trial": ints("99", "-1") | huge,
            "--storage": st.sampled_from([missing, str(inputs), UNREACHABLE_DB]),
            "--select": choice,
        },
        "export": {
            "--study": st.sampled_from(["", "nope", "foreign"]),
            "--trial": st.sampled_from(["99", "-1", str(hand.trials["failed"]), str(hand.trials["pruned"])])
            | junk,
            "--out": st.sampled_from([missing, str(inputs)]),
            "--format": choice,
            "--select": choice,
            "--storage": st.sampled_from([missing, str(inputs), UNREACHABLE_DB]),
        },
        "list": {"--storage": st.sampled_from([missing, str(inputs), str(inputs / "garbage.pt"), UNREACHABLE_DB])},
        "inspect": {**workload, "--target": choice},
        "serve": {
            "--host": st.sampled_from(["256.0.0.1", "1.2.3.4", "", "example.org", "::g"]),
            "--port": ints("65536", "99999") | huge,
            "--data-root": path,
            "--storage": st.sampled_from([missing, str(inputs), str(inputs / "garbage.pt"), UNREACHABLE_DB]),
            "--workers": ints("0") | huge,
            "--token-file": path,  # missing, readable by others, a folder
            "--folder": st.just(str(inputs / "garbage.pt")),  # a file, not a folder
            "--max-upload-mb": floats("0", "-5", "nan", "inf"),
        },
        "bench": {
            **workload,
            "--name": st.sampled_from(["", "../up", ".hidden", "a/b", "sp ace"]),
            "--targets": choice, "--methods": choice,
            "--max-drop": floats("-1", "100", "nan", "inf"),
            "--trials": ints("0") | huge, "--round": ints("0") | huge, "--threads": ints("0") | huge,
            "--timeout": floats("0", "-5", "5x", "nan"),
            "--storage": st.sampled_from([missing, str(inputs), str(inputs / "garbage.pt"), UNREACHABLE_DB]),
            "--space": st.sampled_from([missing, str(inputs), str(inputs / "bad.toml"), str(inputs / "garbage.pt")]),
            "--out": st.sampled_from([str(inputs), str(inputs / "no-such-folder" / "B.md")]),
            "--results": st.just(str(inputs / "garbage.pt")),  # a file, not a folder
        },
    }


def _good_values(hand: HandMadeStudy, out: Path) -> dict[str, dict[str, str | None]]:
    """command -> flag -> a valid value (None: a flag without value); mixed in around the bad ones."""
    return {
        "run": {"--target": "size", "--sampler": "random", "--trials": "2", "--max-drop": "1", "--study": "fuzz",
                "--jobs": "1", "--device": "cpu", "--no-profiles": None, "--no-early-stop": None},
        "try": {"--set": "prune.ratio=0.1", "--device": "cpu", "--threads": "1", "--json": None},
        "train": {"--epochs": "1", "--optimizer": "sgd", "--batch-size": "32", "--device": "cpu",
                  "--no-progress": None},
        "report": {"--study": hand.name, "--storage": hand.storage},
        "show": {"--study": hand.name, "--trial": "3", "--storage": hand.storage},
        "export": {"--study": hand.name, "--trial": "3", "--out": str(out), "--storage": hand.storage,
                   "--format": "onnx"},
        "list": {"--storage": hand.storage},
        "inspect": {"--device": "cpu", "--json": None},
        "serve": {"--host": "127.0.0.1", "--port": "0", "--workers": "1", "--max-upload-mb": "5",
                  "--allow-model-code": None, "--storage": hand.storage},
        "bench": {"--trials": "2", "--round": "1", "--name": "fuzz", "--targets": "size", "--methods": "random",
                  "--device": "cpu", "--report-only": None},
    }


def _value_flags(command: str) -> set[str]:
    parser = build_parser(command).commands[command]
    return {a.option_strings[0] for a in parser._actions
            if a.option_strings and not isinstance(a, argparse._HelpAction)}


def test_the_property_covers_every_flag(hand: HandMadeStudy, tmp_path: Path) -> None:
    """A new flag must get bad values in the property below (or a reason to have none)."""
    bad = _bad_values(tmp_path, hand)
    assert set(bad) == set(COMMANDS)
    for command in COMMANDS:
        assert _value_flags(command) - NOT_FUZZED == set(bad[command]), command


@contextlib.contextmanager
def _captured() -> Iterator[tuple[io.StringIO, io.StringIO]]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        yield out, err


def test_random_bad_arguments_are_refused_in_one_line_before_any_work(
    hand: HandMadeStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tripwires: None
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "garbage.pt").write_bytes(b"\x80\x04garbage, not a checkpoint, a journal or a CSV\n\x00")
    (inputs / "bad.toml").write_text('"prune.ratio" = { low = 0.9, high = 0.1 }\n')
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("COLUMNS", "200")
    export_out = tmp_path / "exported" / "m.onnx"
    export_out.parent.mkdir()
    bad_values, good_values = _bad_values(inputs, hand), _good_values(hand, export_out)
    hand_files = _tree(Path(hand.storage).parent)
    inputs_files = _tree(inputs)

    @settings(max_examples=60, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(st.data())
    def refused(data: st.DataObject) -> None:
        command = data.draw(st.sampled_from(sorted(COMMANDS)), label="command")
        bad_flags = data.draw(st.lists(st.sampled_from(sorted(bad_values[command])), min_size=1, max_size=2,
                                       unique=True), label="bad flags")
        pairs: list[tuple[str, ...]] = []
        for flag, value in good_values[command].items():
            if flag not in bad_flags and data.draw(st.booleans(), label=f"with {flag}"):
                pairs.append((flag,) if value is None else (flag, value))
        for flag in bad_flags:
            pairs.append((flag, data.draw(bad_values[command][flag], label=flag)))
        pairs = data.draw(st.permutations(pairs), label="order")
        full = [command, *(part for pair in pairs for part in pair)]
        with _captured() as (out, err):
            try:
                code = main(full)
            except SystemExit as exc:  # argparse's own refusals
                code = exc.code
        text = err.getvalue()
        assert code == 2, (full, code, text, out.getvalue()[-500:])
        assert text.count("\n") == 1 and text.startswith("mcaas-search"), (full, text)
        assert "Traceback" not in text + out.getvalue(), full
        assert out.getvalue() == "", (full, out.getvalue()[-500:])

    refused()
    assert _tree(work) == {}  # no study, no journal, no cache, no report
    assert list(export_out.parent.iterdir()) == []
    assert _tree(Path(hand.storage).parent) == hand_files  # the existing study is untouched
    assert _tree(inputs) == inputs_files
