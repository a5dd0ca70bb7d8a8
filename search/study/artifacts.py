"""Trial files in an artifact store, so that a study run by several machines can be exported from
any of them.

On one machine (the default) a trial's files stay in the study's folder and its record points to
them. With ``--artifacts`` (a folder every machine mounts, or ``s3://bucket`` for an S3-compatible
store) each complete trial's files are uploaded through Optuna's artifact API as the trial ends;
the store is recorded in the study, and ``export`` fetches a file it does not find on disk. The
demo teacher is uploaded too, so a worker joining from another machine runs with the study's own
teacher rather than training one of its own (whose hash the study would refuse). A promoted
multi-fidelity trial's rung checkpoint is uploaded at the end of its rung too, so the replacement
of a trial whose worker died continues from it on any machine.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.artifacts import (
    FileSystemArtifactStore,
    download_artifact,
    get_all_artifact_meta,
    upload_artifact,
)
from optuna.artifacts.exceptions import ArtifactNotFound

from search.errors import UserError, first_line

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore

__all__ = [
    "STORE_ATTR",
    "TEACHER_ATTR",
    "discard_rung_checkpoint",
    "fetch_rung_checkpoint",
    "fetch_teacher",
    "fetch_trial_file",
    "open_store",
    "record_store",
    "store_url",
    "upload_folder",
    "upload_rung_checkpoint",
    "upload_teacher",
]

# The study's user attribute naming its store (absent: trial files stay where they were written).
STORE_ATTR = "artifact_store"
# The study's user attribute holding the artifact id of its teacher checkpoint in that store.
TEACHER_ATTR = "teacher_artifact"


def store_url(url: str) -> str:
    """``url`` as it is recorded in the study: an S3 URL as given, a folder made absolute."""
    if url.startswith("s3://"):
        bucket = url.removeprefix("s3://").rstrip("/")
        if not bucket or "/" in bucket:
            raise UserError(f"bad --artifacts {url!r}; expected s3://BUCKET (the endpoint comes from AWS_ENDPOINT_URL)")
        return f"s3://{bucket}"
    if "://" in url:
        raise UserError(f"unsupported --artifacts {url!r}; expected a folder or s3://BUCKET")
    return str(Path(url).expanduser().resolve())


def open_store(url: str) -> ArtifactStore:
    """The artifact store at ``url`` (see ``store_url``); a folder is created if needed."""
    url = store_url(url)
    if url.startswith("s3://"):
        try:
            import boto3  # noqa: F401  (Optuna's S3 store imports it itself)
        except ImportError:
            raise UserError(
                f"artifact store {url!r} needs boto3: pip install 'mcaas-search[s3]'"
            ) from None
        from optuna.artifacts import Boto3ArtifactStore

        return Boto3ArtifactStore(url.removeprefix("s3://"))
    try:
        Path(url).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot use artifact store {url!r}: {exc.strerror or exc}") from None
    if not os.access(url, os.W_OK):
        raise UserError(f"cannot use artifact store {url!r}: the folder is not writable")
    return FileSystemArtifactStore(url)


def record_store(study: optuna.Study, url: str | None) -> str | None:
    """Record ``url`` as the study's store on its first run (and check it exists); later runs may
    repeat it or leave it out, not change it. Returns the study's store URL, if any."""
    recorded = study.user_attrs.get(STORE_ATTR)
    if url is None:
        return recorded
    url = store_url(url)
    if recorded is not None and recorded != url:
        raise UserError(
            f"study {study.study_name!r} keeps its trial files in {recorded!r}; "
            "pass that --artifacts (or none) to continue it"
        )
    open_store(url)
    if recorded is None:
        study.set_user_attr(STORE_ATTR, url)
    return url


def upload_folder(trial: optuna.Trial, folder: Path, store: ArtifactStore) -> int:
    """Upload every file of a trial's folder, attached to the trial; returns how many."""
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    for path in files:
        upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)
    return len(files)


def upload_teacher(study: optuna.Study, checkpoint: Path, store: ArtifactStore) -> None:
    """Upload the study's teacher checkpoint once (the first worker to run with a store does)."""
    if TEACHER_ATTR in study.user_attrs or not checkpoint.is_file():
        return
    artifact_id = upload_artifact(artifact_store=store, file_path=str(checkpoint), study_or_trial=study)
    study.set_user_attr(TEACHER_ATTR, artifact_id)


def fetch_teacher(study: optuna.Study, sha256: str, into: Path) -> bool:
    """Put the study's stored teacher at ``into``, checked against ``sha256`` (the hash the study
    recorded); a different file already there is kept beside it, named by its own hash. Returns
    False when the study has no stored teacher (nothing is changed)."""
    from search.workloads import file_sha256  # torch: only when a teacher is fetched

    url, artifact_id = study.user_attrs.get(STORE_ATTR), study.user_attrs.get(TEACHER_ATTR)
    if url is None or artifact_id is None:
        return False
    partial = into.with_name(into.name + ".part")
    try:
        got = _download_checked(open_store(url), artifact_id, partial, sha256)
    except (ArtifactNotFound, OSError) as exc:
        raise UserError(f"cannot fetch study {study.study_name!r}'s teacher from {url!r}: {first_line(exc)}") from None
    if got != sha256:
        raise UserError(
            f"study {study.study_name!r}'s teacher in {url!r} has sha256 {got[:12]}, not the "
            f"{sha256[:12]} the study recorded; pass the study's checkpoint with --weights"
        )
    if into.is_file():
        os.replace(into, into.with_name(f"{into.stem}-{file_sha256(into)[:12]}{into.suffix}"))
    os.replace(partial, into)
    return True


def _download_checked(store: ArtifactStore, artifact_id: str, partial: Path, sha256: str) -> str:
    """Download ``artifact_id`` to ``partial`` and return the sha256 of what came; the file is
    left there only when that is ``sha256`` (a failed download raises, leaving nothing)."""
    from search.workloads import file_sha256  # torch: only when a file is fetched

    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.unlink(missing_ok=True)
    try:
        download_artifact(artifact_store=store, file_path=str(partial), artifact_id=artifact_id)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    got = file_sha256(partial)
    if got != sha256:
        partial.unlink(missing_ok=True)
    return got


def upload_rung_checkpoint(trial: optuna.Trial, checkpoint: Path, step: int, total: int, store: ArtifactStore) -> dict[str, Any]:
    """Upload a promoted trial's rung checkpoint (step ``step`` of ``total``), attached to the
    trial; returns what its record keeps to fetch it back: step, total, artifact id, sha256."""
    from search.workloads import file_sha256

    sha256 = file_sha256(checkpoint)
    artifact_id = upload_artifact(artifact_store=store, file_path=str(checkpoint), study_or_trial=trial)
    return {"step": step, "total": total, "artifact": artifact_id, "sha256": sha256}


def fetch_rung_checkpoint(stored: dict[str, Any], into: Path, store: ArtifactStore) -> bool:
    """Put the rung checkpoint ``stored`` describes (``upload_rung_checkpoint``'s entry) at
    ``into``, checked against its sha256, and mark it as holding its step. False, with nothing
    put there, when it is gone from the store, cannot be read or is not the file uploaded (the
    config then trains from its first step: a slower run, never a wrong one)."""
    from stages.distill import mark_rung_checkpoint  # torch: only when a checkpoint is fetched

    partial = into.with_name(into.name + ".part")
    try:
        got = _download_checked(store, stored["artifact"], partial, stored["sha256"])
    except (ArtifactNotFound, OSError):
        return False
    if got != stored["sha256"]:
        return False
    os.replace(partial, into)
    mark_rung_checkpoint(into, int(stored["step"]), int(stored["total"]))
    return True


def discard_rung_checkpoint(stored: dict[str, Any] | None, store: ArtifactStore) -> None:
    """Remove an uploaded rung checkpoint nothing will continue from (it may be gone already)."""
    if stored is None:
        return
    try:
        store.remove(stored["artifact"])
    except (ArtifactNotFound, OSError):
        pass


def fetch_trial_file(study: optuna.Study, number: int, recorded: Path, into: Path) -> Path:
    """Trial ``number``'s file ``recorded`` (the path its worker wrote): that path when it exists
    here, else the copy fetched from the study's store into ``into`` (kept for the next time)."""
    if recorded.is_file():
        return recorded
    url = study.user_attrs.get(STORE_ATTR)
    if url is None:
        return recorded  # the caller says the file is missing
    local = into / recorded.name
    if local.is_file():
        return local
    trial = study.get_trials(deepcopy=False)[number]
    meta = [a for a in get_all_artifact_meta(trial, storage=study._storage) if a.filename == recorded.name]
    if not meta:
        raise UserError(f"trial {number}'s file {recorded.name!r} is neither at {str(recorded)!r} nor in the artifact store {url!r}")
    into.mkdir(parents=True, exist_ok=True)
    partial = local.with_name(local.name + ".part")
    partial.unlink(missing_ok=True)
    try:
        download_artifact(artifact_store=open_store(url), file_path=str(partial), artifact_id=meta[-1].artifact_id)
    except (ArtifactNotFound, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise UserError(f"cannot fetch trial {number}'s {recorded.name!r} from {url!r}: {first_line(exc)}") from None
    os.replace(partial, local)
    return local
