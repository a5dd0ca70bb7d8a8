"""Fault injection for the search (the "Reliability and security" issue, parts 1, 2 and 4).

- A real search process killed with ``kill -9`` (one job; two jobs: the whole process group),
  then the same command again: no finished trial lost, changed or repeated, the interrupted
  trials failed as "interrupted", the study holds exactly ``--trials`` counted trials, and the
  journal is valid.
- Ctrl-C (SIGINT) to the search, to its process group (a terminal's Ctrl-C reaches the workers
  too) and to the parent alone: exit 130, how to resume on stderr, the running trials failed as
  "interrupted (Ctrl-C)", no worker left behind.
- Trials that raise (a stage error, a NaN loss, an export failure, out of memory) are recorded
  failed with their reason while the study goes on; ``show`` and ``report`` give the reasons.
- The journal survives a writer killed mid-append (a torn last line) or while holding its lock;
  exports and reports are written atomically.

The subprocess searches run ``python -m search.cli`` in ``tmp_path`` on the demo workload with a
tiny space; the demo teacher is trained once per session and copied into each folder.
"""

from __future__ import annotations

import json
import shutil
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from pathlib import Path

import optuna
import pytest
import torch
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import FrozenTrial, TrialState

from search.interrupts import redeliver_lost_interrupts, stops_deferred
from search.study import StudyInfo, TrialRecord, counted, open_storage, trial_record
from search.study.lifecycle import _pid_alive
from search.study.storage import FlockJournalLock, repair_journal_tail
from spaces import PROFILES, is_mcaas_profile
from tests.search.study_fixtures import TINY_SPACE, HandMadeStudy
from tests.support import RunCli, WaitTimeout, wait_until

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[2]
STUDY = "k"
RUN_LIMIT_S = 240  # generous: the machine is shared; a healthy run takes well under a minute

Trials = Sequence[FrozenTrial]


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture
def search_dir(search_folder: Callable[[str], Path]) -> Path:
    """A working folder (also the cwd) holding the cached demo teacher and ``tiny.toml``."""
    return search_folder(TINY_SPACE)


def _command(trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "search.cli", "--space", "tiny.toml", "--study", STUDY,
            "--trials", str(trials), *extra]


def _resume_line(trials: int, *extra: str) -> str:
    """The command the interrupted search tells the user to rerun."""
    return " ".join(["mcaas-search", *_command(trials, *extra)[3:]])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env["COLUMNS"] = "200"  # rich wraps at 80 columns when writing to a file
    return env


def _interruptible() -> None:
    # A test runner started in the background (nohup, some CI runners) passes SIGINT on ignored,
    # and Python then installs no KeyboardInterrupt handler; a user's terminal does not. Start
    # the search as a terminal would.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(folder: Path, command: list[str], *, new_session: bool = False) -> subprocess.Popen[bytes]:
    """The search as a child process, its output in files (a full pipe would block it)."""
    return subprocess.Popen(
        command,
        cwd=folder,
        env=_env(),
        stdout=open(folder / "stdout.txt", "wb"),  # the child holds it; closed with the process
        stderr=open(folder / "stderr.txt", "wb"),
        start_new_session=new_session,
        preexec_fn=_interruptible,
    )


@pytest.fixture
def ctrl_c_handler() -> Iterator[None]:
    """Python's own SIGINT handler in this process, whatever the test runner was started with."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _journal(folder: Path) -> Path:
    return folder / "studies" / "mcaas.journal"


def _trials(folder: Path) -> list[FrozenTrial] | None:
    """The study's trials as plain Optuna reads the journal (None before the study exists)."""
    path = _journal(folder)
    if not path.is_file():
        return None
    try:
        study = optuna.load_study(study_name=STUDY, storage=JournalStorage(JournalFileBackend(str(path))))
    except KeyError:
        return None
    return study.get_trials(deepcopy=True)


def _numbers(trials: Trials, *states: TrialState) -> list[int]:
    return [t.number for t in trials if t.state in states]


def _running_a_while(trials: Trials, seconds: float = 0.5) -> bool:
    """A trial has been running for ``seconds``: a signal now hits it, not the gap between two."""
    now = time.time()
    return any(
        t.state == TrialState.RUNNING and t.datetime_start is not None
        and now - t.datetime_start.timestamp() >= seconds
        for t in trials
    )


def _wait_for(
    proc: subprocess.Popen[bytes], folder: Path, ready: Callable[[Trials], bool], timeout: float = RUN_LIMIT_S
) -> list[FrozenTrial]:
    """Poll the journal until ``ready(trials)``; fail if the search ends or hangs first."""

    def reached() -> list[FrozenTrial] | None:
        if proc.poll() is not None:
            pytest.fail(f"the search ended (exit {proc.returncode}) before the moment to interrupt it:\n"
                        + (folder / "stderr.txt").read_text(errors="replace")[-3000:])
        trials = _trials(folder)
        return trials if trials is not None and ready(trials) else None

    try:
        return wait_until(reached, timeout, "the search did not reach the moment to interrupt it")
    except WaitTimeout:
        proc.kill()
        raise


def _some_done_one_running(trials: Trials) -> bool:
    return bool(_numbers(trials, TrialState.COMPLETE)) and _running_a_while(trials)


def _group_gone(pgid: int) -> bool:
    """No process of group ``pgid`` is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _assert_journal_valid(folder: Path) -> None:
    """Every line is a complete JSON log, and plain Optuna loads the file."""
    data = _journal(folder).read_bytes()
    assert data.endswith(b"\n")
    for line in data.splitlines():
        assert isinstance(json.loads(line), dict)
    assert _trials(folder) is not None


def _assert_rerun_finishes(folder: Path, command: list[str], before: Trials, trials: int) -> None:
    """The same command again: what finished before is untouched, what ran is failed as
    interrupted, and the study ends with exactly ``trials`` counted trials."""
    finished = {t.number: t for t in before if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    cut = _numbers(before, TrialState.RUNNING)
    assert finished and cut, [(t.number, t.state) for t in before]

    done = subprocess.run(
        command, cwd=folder, env=_env(), capture_output=True, text=True, timeout=RUN_LIMIT_S, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr

    _assert_journal_valid(folder)
    after = {t.number: t for t in _trials(folder) or []}
    for number, old in finished.items():
        new = after[number]
        assert (new.state, new.params, new.values) == (old.state, old.params, old.values), number
        assert trial_record(new).config == trial_record(old).config
        assert trial_record(new).metrics == trial_record(old).metrics
    for number in cut:
        assert after[number].state == TrialState.FAIL, number
        assert trial_record(after[number]).reason.startswith("interrupted"), after[number].user_attrs
    assert not _numbers(list(after.values()), TrialState.RUNNING, TrialState.WAITING)
    study = optuna.load_study(study_name=STUDY, storage=open_storage(str(_journal(folder)), create=False))
    assert counted(study) == trials
    # Each fixed profile ran to an end exactly once (an interrupted one is run again, not twice).
    ran = [trial_record(t).profile for t in after.values()
           if is_mcaas_profile(trial_record(t).profile)
           and not str(trial_record(t).reason or "").startswith("interrupted")]
    assert sorted(ran) == sorted(PROFILES)


def _assert_ctrl_c_recorded(folder: Path, proc: subprocess.Popen[bytes], command_line: str) -> None:
    """Exit 130, a clean stderr telling how to resume, and the cut trials failed as Ctrl-C."""
    assert proc.wait(timeout=RUN_LIMIT_S) == 130
    err = (folder / "stderr.txt").read_text(errors="replace")
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    assert "rerun the same command to resume" in err, err[-3000:]
    assert command_line in err
    after = _trials(folder) or []
    assert not _numbers(after, TrialState.RUNNING), [(t.number, t.state) for t in after]
    failed = [t for t in after if t.state == TrialState.FAIL]
    assert failed, [(t.number, t.state) for t in after]
    assert {trial_record(t).reason for t in failed} == {"interrupted (Ctrl-C)"}
    _assert_journal_valid(folder)


# ---------------------------------------------------------------------------------------------
# 1. Interruption: kill -9 and Ctrl-C of a real search process


@pytest.mark.slow
def test_kill_9_then_the_same_command_finishes_the_study(search_dir: Path) -> None:
    command = _command(5)
    proc = _start(search_dir, command)
    _wait_for(proc, search_dir, _some_done_one_running)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _trials(search_dir) or []
    _assert_rerun_finishes(search_dir, command, before, trials=5)


@pytest.mark.slow
def test_kill_9_of_two_jobs_then_the_same_command_finishes_the_study(search_dir: Path) -> None:
    command = _command(5, "--jobs", "2")
    proc = _start(search_dir, command, new_session=True)
    _wait_for(proc, search_dir, _some_done_one_running)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and both worker processes
    proc.wait()
    wait_until(lambda: _group_gone(proc.pid), 30, "a process of the search outlived it")
    before = _trials(search_dir) or []
    _assert_rerun_finishes(search_dir, command, before, trials=5)


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(search_dir: Path) -> None:
    command = _command(4)
    proc = _start(search_dir, command)
    _wait_for(proc, search_dir, _some_done_one_running)
    proc.send_signal(signal.SIGINT)
    _assert_ctrl_c_recorded(search_dir, proc, _resume_line(4))
    out = (search_dir / "stdout.txt").read_text()
    assert "report:" in out  # what is done is summed up before exiting


@pytest.mark.slow
@pytest.mark.parametrize("to_group", [True, False], ids=["terminal-ctrl-c", "parent-only"])
def test_ctrl_c_with_two_jobs_stops_every_worker(search_dir: Path, to_group: bool) -> None:
    """A terminal's Ctrl-C reaches the workers too; a SIGINT to the parent alone is passed on."""
    command = _command(6, "--jobs", "2", "--no-early-stop")
    proc = _start(search_dir, command, new_session=True)
    _wait_for(proc, search_dir, _some_done_one_running)
    if to_group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    _assert_ctrl_c_recorded(search_dir, proc, _resume_line(6, "--jobs", "2", "--no-early-stop"))
    wait_until(lambda: _group_gone(proc.pid), 30, "a worker process outlived the search")


def test_a_trial_killed_before_its_worker_claimed_it_is_failed_on_resume(tmp_path: Path) -> None:
    """kill -9 between creating a trial and recording its worker leaves a RUNNING trial that no
    pid check can clear; the next run fails it, while a live worker's trial stays running."""
    from objectives import Constraint
    from search.study import create_or_resume, worker_id

    journal = str(tmp_path / "x.journal")
    info = StudyInfo(workload={"model": "demo"}, target="size", constraint=Constraint(max_drop=1.0),
                     baseline={"val_acc": 90.0}, baseline_onnx="b.onnx", artifacts_dir=str(tmp_path / "s"))
    study, _ = create_or_resume("s", journal, info, sampler=optuna.samplers.RandomSampler())
    orphan = study.ask()  # the worker died right here
    alive = study.ask()
    TrialRecord(worker=worker_id()).save(alive)  # this very process: alive
    create_or_resume("s", journal, info, sampler=optuna.samplers.RandomSampler())
    trials = optuna.load_study(study_name="s", storage=open_storage(journal, create=False)).trials
    assert trials[orphan.number].state == TrialState.FAIL
    assert trial_record(trials[orphan.number]).reason.startswith("interrupted")
    assert trials[alive.number].state == TrialState.RUNNING


def test_a_ctrl_c_that_lands_in_a_finalizer_is_raised_again(ctrl_c_handler: None) -> None:
    """Python drops a KeyboardInterrupt raised in a finalizer ("Exception ignored in ..."); the
    search would go on as if never stopped. It is delivered again to the main thread."""

    class Finalizer:
        def __del__(self) -> None:
            raise KeyboardInterrupt  # as if Ctrl-C arrived while this ran

    hook = sys.unraisablehook
    with pytest.raises(KeyboardInterrupt), redeliver_lost_interrupts():
        Finalizer()  # dropped at once
        wait_until(lambda: False, 10, "the dropped Ctrl-C was not raised again", interval_s=0.01)
    assert sys.unraisablehook is hook


def test_ctrl_c_waits_for_the_end_of_a_deferred_block(ctrl_c_handler: None) -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), stops_deferred():
        signal.raise_signal(signal.SIGINT)
        done.append("the block ran to its end")
    assert done == ["the block ran to its end"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_killed_workers_zombie_counts_as_gone() -> None:
    """Until its parent reaps it, a killed worker is a zombie that ``kill(pid, 0)`` still finds."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_until(lambda: Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z", 30,
               "the child did not exit", interval_s=0.05)
    try:
        assert not _pid_alive(child.pid)
    finally:
        child.wait()
    assert _pid_alive(os.getpid())


# ---------------------------------------------------------------------------------------------
# 2. Failing trials


class _Faults:
    """Faults injected one per trial, in order: each patched function raises when the fault at
    the head of the queue is its own, and consumes it."""

    def __init__(self, *names: str) -> None:
        self.queue = list(names)

    def take(self, name: str) -> bool:
        if self.queue and self.queue[0] == name:
            self.queue.pop(0)
            return True
        return False


@pytest.mark.slow
def test_failing_trials_are_recorded_with_their_reason_and_the_study_goes_on(
    search_dir: Path, monkeypatch: pytest.MonkeyPatch, run_cli: RunCli
) -> None:
    import stages.distill
    from stages.errors import StageError
    from stages.export import Export
    from stages.prune import Prune

    faults = _Faults("stage", "nan", "export", "oom")
    prune_run, export_run, loss = Prune.run, Export.run, stages.distill.distill_loss

    def prune(self: Prune, model: object, ctx: object) -> object:
        if Path(ctx.workdir).parent.name != "trials":  # the study's pre-flight probe, not a trial
            return prune_run(self, model, ctx)
        if faults.take("stage"):
            raise StageError("prune", "layer features.0 cannot be pruned (injected)")
        if faults.take("oom"):
            raise MemoryError("injected: cannot allocate 3 GiB")
        return prune_run(self, model, ctx)

    def nan_loss(*args: object, **kwargs: object) -> torch.Tensor:
        value = loss(*args, **kwargs)
        return value * float("nan") if faults.take("nan") else value

    def export(self: Export, model: object, ctx: object) -> object:
        if Path(ctx.workdir).parent.name == "trials" and faults.take("export"):  # not the baseline
            raise RuntimeError("injected: the ONNX exporter gave up")
        return export_run(self, model, ctx)

    monkeypatch.setattr(Prune, "run", prune)
    monkeypatch.setattr(stages.distill, "distill_loss", nan_loss)
    monkeypatch.setattr(Export, "run", export)
    # Pruning always runs (ratio >= 0.2) and no trial stops early, so each fault hits one trial.
    (search_dir / "tiny.toml").write_text(TINY_SPACE + '"prune.ratio" = { low = 0.2, high = 0.6 }\n')
    code, out, err = run_cli(["--space", "tiny.toml", "--study", STUDY, "--trials", "5",
                              "--no-profiles", "--no-early-stop"])
    assert code == 0, err
    assert not faults.queue
    trials = _trials(search_dir) or []
    assert [t.state for t in trials] == [TrialState.FAIL] * 4 + [TrialState.COMPLETE]
    reasons = [trial_record(t).reason for t in trials[:4]]
    assert reasons[0].startswith("StageError: prune: layer features.0 cannot be pruned (injected)")
    assert reasons[1].startswith("StageError: distill: loss became NaN at step 0")
    assert reasons[2].startswith("RuntimeError: injected: the ONNX exporter gave up")
    assert reasons[3] == "out of memory: injected: cannot allocate 3 GiB"
    assert "failed trials (4):" in out  # the search's own summary lists them

    for number, reason in enumerate(reasons):
        code, out, err = run_cli(["show", "--study", STUDY, "--trial", str(number)])
        assert code == 0, err
        assert f"failure reason: {reason}" in out
        assert "no model to export: the trial failed" in out
    code, out, err = run_cli(["report", "--study", STUDY])
    assert code == 0, err
    assert "4 failed" in out
    for number, reason in enumerate(reasons):
        assert f"trial {number}: {reason}" in out
    csv = (search_dir / "studies" / STUDY / "trials.csv").read_text()
    assert all(reason.split(" (at ")[0] in csv for reason in reasons)


# ---------------------------------------------------------------------------------------------
# The journal under a writer that dies


def _small_study(path: Path, trials: int = 2) -> optuna.Study:
    study = optuna.create_study(study_name="j", storage=open_storage(str(path), create=True))
    for _ in range(trials):
        trial = study.ask()
        study.tell(trial, trial.suggest_float("x", 0.0, 1.0))
    return study


@pytest.mark.parametrize("keep", [1, 12, 30, 0.5, 0.9])
def test_a_log_cut_short_by_kill_9_is_dropped_and_the_journal_stays_usable(tmp_path: Path, keep: float) -> None:
    journal = tmp_path / "x.journal"
    _small_study(journal)
    intact = journal.read_bytes()
    last = b'{"op_code":5,"worker_id":"w","trial_id":1,"state":1,"values":[0.5]}'
    cut = int(keep * len(last)) if isinstance(keep, float) else keep
    with open(journal, "ab") as f:  # what a writer killed in the middle of its append leaves
        f.write(last[:cut])
    study = optuna.load_study(study_name="j", storage=open_storage(str(journal), create=True))
    assert journal.read_bytes() == intact
    trial = study.ask()
    study.tell(trial, trial.suggest_float("x", 0.0, 1.0))
    plain = optuna.load_study(study_name="j", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert [t.state for t in plain.trials] == [TrialState.COMPLETE] * 3


@pytest.mark.parametrize("keep", [19, 11, 0.5, -1])
def test_a_journal_cut_inside_its_first_record_is_refused_and_left_as_it_is(
    tmp_path: Path, keep: float, run_cli: RunCli
) -> None:
    """A run killed while creating its study (or a file copied half-way) leaves a journal whose
    only record is cut off: one clear line, exit 2, nothing written, the file kept to inspect."""
    from search.errors import UserError

    whole = tmp_path / "whole.journal"
    _small_study(whole)
    first = whole.read_bytes().split(b"\n")[0]
    cut = len(first) + keep if keep < 0 else int(keep * len(first)) if isinstance(keep, float) else keep
    journal = tmp_path / "broken.journal"
    journal.write_bytes(first[:cut])
    damaged = journal.read_bytes()
    with pytest.raises(UserError, match="first record is cut off"):
        open_storage(str(journal), create=True)
    for command in (["list"], ["report", "--study", "j"], ["--trials", "1", "--study", "a6"]):
        code, out, err = run_cli([*command, "--storage", str(journal)])
        assert code == 2 and err.count("\n") == 1 and "first record is cut off" in err, (command, err)
        assert "Traceback" not in err
    assert journal.read_bytes() == damaged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.journal", "whole.journal", "whole.journal.flock"]


def test_a_file_that_is_not_a_journal_is_refused_and_left_alone(tmp_path: Path) -> None:
    from search.errors import UserError

    other = tmp_path / "notes.txt"
    other.write_bytes(b"my notes\nno newline at the end")
    with pytest.raises(UserError, match="not an Optuna journal file"):
        open_storage(str(other), create=True)
    assert other.read_bytes() == b"my notes\nno newline at the end"
    assert not repair_journal_tail(other, FlockJournalLock(str(other)))


def test_a_writer_killed_while_holding_the_journal_lock_blocks_no_one(tmp_path: Path) -> None:
    journal = tmp_path / "x.journal"
    _small_study(journal)
    hold_the_lock = (
        "import sys, time; from search.study.storage import FlockJournalLock; "
        "FlockJournalLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", hold_the_lock, str(journal)],
        env=_env(), stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    holder.kill()
    holder.wait()
    started = time.monotonic()
    study = optuna.load_study(study_name="j", storage=open_storage(str(journal), create=True))
    trial = study.ask()
    study.tell(trial, 0.5)
    assert time.monotonic() - started < 5  # Optuna's own lock file would make this wait 30 s


def test_a_study_record_cut_short_is_saved_again_not_half_read(tmp_path: Path) -> None:
    """The baseline is saved last: a run killed while saving leaves no half record behind."""
    from objectives import Constraint
    from search.errors import UserError

    study = optuna.create_study(study_name="s", storage=open_storage(str(tmp_path / "x.journal"), create=True),
                                directions=["maximize", "maximize"])
    info = StudyInfo(workload={"model": "demo"}, target="size", constraint=Constraint(max_drop=1.0),
                     baseline={"val_acc": 90.0}, baseline_onnx="b.onnx", artifacts_dir=str(tmp_path))
    saved: list[str] = []

    def dies_on_the_fourth(key: str, value: object) -> None:
        if len(saved) == 3:
            raise KeyboardInterrupt
        saved.append(key)
        optuna.Study.set_user_attr(study, key, value)

    study.set_user_attr = dies_on_the_fourth  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        info.save(study)
    assert "baseline" not in study.user_attrs
    with pytest.raises(UserError, match="no baseline"):
        StudyInfo.load(study)
    del study.set_user_attr
    info.save(study)  # what the next run does
    assert StudyInfo.load(study) == info


# ---------------------------------------------------------------------------------------------
# 4. Exports and reports are written atomically


def _die_halfway_through_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file write stops halfway with Ctrl-C, as a crash in the middle of writing would:
    bytes or text written through ``Path``, and files copied with ``shutil.copyfile`` (how an
    export writes a trial's stored model)."""
    real_bytes, real_text = Path.write_bytes, Path.write_text

    def half_bytes_then_interrupt(self: Path, data: bytes) -> int:
        real_bytes(self, data[: len(data) // 2])
        raise KeyboardInterrupt

    def half_text_then_interrupt(self: Path, data: str, *args: Any, **kwargs: Any) -> int:
        real_text(self, data[: len(data) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    def half_copy_then_interrupt(src: str | os.PathLike[str], dst: str | os.PathLike[str], **_: Any) -> str:
        real_bytes(Path(dst), Path(src).read_bytes()[: Path(src).stat().st_size // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", half_bytes_then_interrupt)
    monkeypatch.setattr(Path, "write_text", half_text_then_interrupt)
    monkeypatch.setattr(shutil, "copyfile", half_copy_then_interrupt)


def test_an_export_cut_short_leaves_the_old_file_and_no_partial_one(
    hand: HandMadeStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: RunCli
) -> None:
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the model exported yesterday")
    (tmp_path / "m.onnx.json").write_text("{}")
    _die_halfway_through_writes(monkeypatch)
    code, _, err = run_cli(["export", "--study", hand.name, "--storage", hand.storage,
                            "--trial", str(hand.trials["best"]), "--out", str(out)])
    assert code == 130, err
    monkeypatch.undo()
    assert out.read_bytes() == b"the model exported yesterday"
    assert (tmp_path / "m.onnx.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]  # no temporary file


def test_a_report_cut_short_leaves_the_old_report_and_no_partial_one(
    hand: HandMadeStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli: RunCli
) -> None:
    report = ("report", "--study", hand.name, "--storage", hand.storage, "--out", str(tmp_path))
    code, _, err = run_cli(report)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"report.html", "trials.csv"}
    _die_halfway_through_writes(monkeypatch)
    code, _, err = run_cli(report)
    assert code == 130, err
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
