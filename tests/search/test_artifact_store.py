"""The artifact store: a trial's files uploaded through Optuna's artifact API and fetched back on
a machine that lacks them, from a folder store and from an S3 bucket (moto's in-process S3);
bad store URLs refused in one line; the study's teacher fetched by a worker joining from another
folder, checked against the study's hash."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
import torch

from search.errors import UserError
from search.study import open_storage
from search.study.artifacts import (
    STORE_ATTR,
    TEACHER_ATTR,
    fetch_teacher,
    fetch_trial_file,
    open_store,
    record_store,
    store_url,
    upload_folder,
    upload_teacher,
)
from search.workloads import file_sha256


def _trial_with_files(tmp_path: Path, url: str) -> tuple[optuna.Study, Path]:
    """A study recording ``url`` as its store, whose trial 0 uploaded two files from its folder
    (then deleted, as on the machine that did not run it)."""
    study = optuna.create_study(directions=["maximize", "maximize"])
    record_store(study, url)
    folder = tmp_path / "worker" / "trials" / "0"
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"onnx bytes \x00\x01")
    (folder / "model.fp32.onnx").write_bytes(b"fp32")
    trial = study.ask()
    assert upload_folder(trial, folder, open_store(url)) == 2
    study.tell(trial, [1.0, 2.0])
    recorded = folder / "model.onnx"
    for path in folder.iterdir():
        path.unlink()
    return study, recorded


def test_a_folder_store_gives_back_a_trial_file_another_machine_wrote(tmp_path: Path) -> None:
    study, recorded = _trial_with_files(tmp_path, str(tmp_path / "store"))
    assert study.user_attrs[STORE_ATTR] == str((tmp_path / "store").resolve())
    local = fetch_trial_file(study, 0, recorded, tmp_path / "here")
    assert local == tmp_path / "here" / "model.onnx"
    assert local.read_bytes() == b"onnx bytes \x00\x01"
    assert fetch_trial_file(study, 0, recorded, tmp_path / "here") == local  # kept, not fetched again
    assert not list((tmp_path / "here").glob("*.part"))


def test_an_s3_store_gives_back_a_trial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    moto = pytest.importorskip("moto")
    boto3 = pytest.importorskip("boto3")
    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    with moto.mock_aws():
        boto3.client("s3").create_bucket(Bucket="trials")
        study, recorded = _trial_with_files(tmp_path, "s3://trials/")
        assert study.user_attrs[STORE_ATTR] == "s3://trials"
        assert fetch_trial_file(study, 0, recorded, tmp_path / "here").read_bytes() == b"onnx bytes \x00\x01"


def test_a_file_on_disk_is_used_as_it_is_and_a_missing_one_is_named(tmp_path: Path) -> None:
    study, recorded = _trial_with_files(tmp_path, str(tmp_path / "store"))
    on_disk = tmp_path / "model.onnx"
    on_disk.write_bytes(b"x")
    assert fetch_trial_file(study, 0, on_disk, tmp_path / "here") == on_disk
    with pytest.raises(UserError, match="neither at .* nor in the artifact store"):
        fetch_trial_file(study, 0, recorded.with_name("model.pt2"), tmp_path / "here")


@pytest.mark.parametrize(
    ("url", "message"),
    [("s3://", "expected s3://BUCKET"), ("s3://b/prefix", "expected s3://BUCKET"), ("gs://b", "unsupported --artifacts")],
)
def test_bad_store_urls_are_refused_in_one_line(url: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        store_url(url)


def test_a_study_keeps_its_store(tmp_path: Path) -> None:
    study = optuna.create_study(directions=["maximize", "maximize"])
    record_store(study, str(tmp_path / "a"))
    assert record_store(study, None) == str((tmp_path / "a").resolve())
    with pytest.raises(UserError, match="keeps its trial files in"):
        record_store(study, str(tmp_path / "b"))


def test_the_studys_teacher_is_fetched_checked_and_a_local_one_kept_aside(tmp_path: Path) -> None:
    study = optuna.create_study()
    record_store(study, str(tmp_path / "store"))
    teacher = tmp_path / "first" / "teacher.pt"
    teacher.parent.mkdir()
    teacher.write_bytes(b"the study's teacher")
    upload_teacher(study, teacher, open_store(str(tmp_path / "store")))
    assert TEACHER_ATTR in study.user_attrs
    cache = tmp_path / "second" / ".cache" / "demo.pt"
    cache.parent.mkdir(parents=True)
    cache.write_bytes(b"a teacher trained here")
    with pytest.raises(UserError, match="has sha256 .* not the 000000000000 the study recorded"):
        fetch_teacher(study, "0" * 64, cache)
    assert cache.read_bytes() == b"a teacher trained here"  # a refused download changes nothing
    assert fetch_teacher(study, file_sha256(teacher), cache)
    assert cache.read_bytes() == b"the study's teacher"
    [aside] = [p for p in cache.parent.iterdir() if p != cache]
    assert aside.read_bytes() == b"a teacher trained here" and not list(cache.parent.glob("*.part"))
    assert not fetch_teacher(optuna.create_study(), file_sha256(teacher), cache)  # no stored teacher


SHARED_SPACE = """
"distill.epochs" = 1
"prune.steps" = 1
"quantize.mode" = ["none"]
drop = ["cluster.k"]
profile_epochs = 1
"""


@pytest.mark.slow
def test_a_worker_joining_from_another_folder_runs_with_the_studys_teacher(
    tmp_path: Path,
    search_folder: Callable[[str], Path],
    run_cli: Callable[[list[str]], tuple[int, str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first = search_folder(SHARED_SPACE)
    # The first machine's teacher is one that training here does not reproduce bit for bit (as a
    # teacher trained on another machine): nudge one weight of the cached demo teacher.
    [cached] = (first / "studies" / ".cache").glob("*.pt")
    state = torch.load(cached, weights_only=True)
    key = next(iter(state))
    state[key] = state[key] + 1e-3
    torch.save(state, cached)
    shared = ["--space", "tiny.toml", "--study", "shared", "--storage", str(tmp_path / "shared.journal"),
              "--artifacts", str(tmp_path / "store")]
    code, _, err = run_cli([*shared, "--trials", "1"])
    assert code == 0, err
    second = tmp_path / "second"  # another machine's folder: no demo teacher of its own
    second.mkdir()
    shutil.copy(first / "tiny.toml", second / "tiny.toml")
    monkeypatch.chdir(second)
    code, _, err = run_cli([*shared, "--trials", "2"])
    assert code == 0, err
    want = file_sha256(cached)
    assert f"using the teacher of study 'shared' from the artifact store (sha256 {want[:12]})" in err
    assert "training the demo teacher" not in err
    assert file_sha256(second / "studies" / ".cache" / cached.name) == want
    study = optuna.load_study(study_name="shared", storage=open_storage(str(tmp_path / "shared.journal"), create=False))
    assert len([t for t in study.trials if t.state.is_finished()]) == 2  # the second worker's trial ran
