"""The artifact store: a trial's files uploaded through Optuna's artifact API and fetched back on
a machine that lacks them, from a folder store and from an S3 bucket (moto's in-process S3);
bad store URLs refused in one line."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from search.errors import UserError
from search.study.artifacts import (
    STORE_ATTR,
    fetch_trial_file,
    open_store,
    record_store,
    store_url,
    upload_folder,
)


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
