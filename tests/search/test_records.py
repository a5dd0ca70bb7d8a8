"""The trial record schema (``search.study.records.TrialRecord``): written to a real Optuna trial
and read back, studies made by earlier versions still read, and no other module spells a key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages import InMemoryStorage, JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial

from search.study import TrialRecord, trial_record
from search.study.records import ATTR

ROOT = Path(__file__).resolve().parents[2]

# A value for every stored field, none at its default. A new field must get one here: the
# round trip below refuses a schema with a field it does not cover.
STORED: dict[str, Any] = {
    "profile": "balanced",
    "config": {"prune.ratio": 0.5, "quantize.mode": "int8-static"},
    "metrics": {"val_acc": 95.5, "bytes": 1000.0},
    "ratios": {"size": 4.0},
    "violations": {"accuracy_drop": -0.5},
    "stages": [{"stage": "prune", "seconds": 1.5, "metrics": {"params": 10.0}}],
    "artifact": "/studies/s/trials/3/model.onnx",
    "reason": "stopped at 50% of distillation",
    "saved_s": 12.5,
    "drop": 0.5,
    "test_drop": 0.75,
    "run_seconds": 42.0,
    "torch_artifact": "/studies/s/trials/3/model.pt2",
    "worker": "host:123",
    "ray_run": "run-1",
    "ray_trial": "abc_00001",
    "ray_node": "node-1",
    "rungs": [[120.0, 93.5], [360.0, 95.5]],
    "untrained_ratio": 4.0,
    "resumed_from": 120,
    "resumes": 2,
    "rung_artifact": {"step": 120, "total": 480, "artifact": "a1b2", "sha256": "0" * 64},
    "skipped_by": 5,
}

# The user attributes of a complete trial as mcaas-search wrote them before the schema existed
# (a journal on disk holds exactly these keys), with one optional key left out as older
# versions did (saved_s appeared later; torch_artifact only when a .pt2 file was written).
OLD_ATTRS: dict[str, Any] = {
    "worker": "host:99",
    "profile": "max-compression",
    "config": {"prune.ratio": 0.9},
    "metrics": {"val_acc": 94.0, "test_acc": 93.0},
    "ratios": {"size": 30.0, "latency": 2.0},
    "drop": 1.5,
    "test_drop": None,
    "violations": {"accuracy_drop": 0.5},
    "stages": [{"stage": "export", "seconds": 0.2, "metrics": {}}],
    "artifact": "/old/trials/0/model.onnx",
    "seconds": 31.0,
}


def _stored_fields() -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(TrialRecord) if ATTR in f.metadata]


def _storage(kind: str, tmp_path: Path) -> optuna.storages.BaseStorage:
    if kind == "memory":
        return InMemoryStorage()
    return JournalStorage(JournalFileBackend(str(tmp_path / "journal.log")))


@pytest.mark.parametrize("kind", ["memory", "journal"])
def test_a_record_round_trips_through_a_real_optuna_trial(kind: str, tmp_path: Path) -> None:
    assert set(STORED) == {f.name for f in _stored_fields()}, "give every stored field a value in STORED"
    record = TrialRecord(**STORED)
    storage = _storage(kind, tmp_path)
    study = optuna.create_study(storage=storage, study_name="s", directions=["maximize", "maximize"])
    trial = study.ask()
    # Written as a trial learns it: its worker and config first, the outcome at the end.
    TrialRecord(worker=record.worker, config=record.config).save(trial)
    dataclasses.replace(record, worker=None, config={}).save(trial)
    study.tell(trial, [95.5, 4.0])

    frozen = optuna.load_study(study_name="s", storage=storage).get_trials()[0]
    back = TrialRecord.from_trial(frozen)

    assert back == dataclasses.replace(record, number=0, state="complete", values=(95.5, 4.0), seconds=back.seconds)
    assert back.seconds is not None and back.seconds >= 0
    assert trial_record(frozen) == back


def test_only_what_a_record_names_is_stored() -> None:
    assert TrialRecord(reason="x", saved_s=2.0).to_attrs() == {"reason": "x", "saved_s": 2.0}
    # Optuna's own fields are never stored; a record at its defaults stores nothing.
    assert TrialRecord(number=7, state="complete", seconds=3.0, values=(1.0, 2.0)).to_attrs() == {}
    # Stored fields keep the names studies were made with (run_seconds is stored as "seconds").
    assert set(TrialRecord(**STORED).to_attrs()) == {f.metadata[ATTR] for f in _stored_fields()}
    assert TrialRecord(run_seconds=4.0).to_attrs() == {"seconds": 4.0}


def test_attributes_of_a_study_made_by_an_earlier_version_still_load() -> None:
    old = create_trial(
        state=TrialState.COMPLETE,
        values=[94.0, 30.0],
        params={"prune.ratio": 0.9},
        distributions={"prune.ratio": optuna.distributions.FloatDistribution(0.0, 0.95)},
        user_attrs=OLD_ATTRS,
    )
    record = TrialRecord.from_trial(old)
    assert record.state == "complete" and record.values == (94.0, 30.0)
    assert (record.worker, record.profile, record.config) == ("host:99", "max-compression", {"prune.ratio": 0.9})
    assert record.metrics == OLD_ATTRS["metrics"] and record.ratios == OLD_ATTRS["ratios"]
    assert (record.drop, record.test_drop, record.run_seconds) == (1.5, None, 31.0)
    assert record.violations == {"accuracy_drop": 0.5} and not record.feasible
    assert record.stages == OLD_ATTRS["stages"] and record.artifact == "/old/trials/0/model.onnx"
    # Keys the earlier version did not write read as the defaults.
    assert (record.saved_s, record.torch_artifact, record.reason, record.ray_run) == (0.0, None, None, None)
    # A failed trial of the earliest format: only its config and reason.
    failed = create_trial(state=TrialState.FAIL, user_attrs={"config": {}, "reason": "interrupted (Ctrl-C)"})
    assert TrialRecord.from_trial(failed).interrupted and not TrialRecord.from_trial(failed).counted


def test_no_other_module_spells_a_stored_key() -> None:
    """Trial attributes are written and read through TrialRecord only: no module reads or writes
    one by its literal key (study attributes, which other modules own, are not trial keys)."""
    keys = "|".join(re.escape(f.metadata[ATTR]) for f in _stored_fields())
    spelled = re.compile(rf"""(user_attrs\s*(\.get\(|\[)|set_user_attr\(|user_attrs=\{{)\s*["']({keys})["']""")
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in ("search", "spaces", "stages", "objectives", "tests")
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if spelled.search(line)
    ]
    assert not found, found
