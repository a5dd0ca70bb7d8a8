"""Uploaded teacher models: a state_dict checkpoint (read with ``torch.load(weights_only=True)``)
for an architecture the server knows (``demo``, ``vit_tiny``, any torchvision classification
model), or, only with ``--allow-model-code``, for a factory in an uploaded Python file.

An upload is checked in a private staging folder (it loads, it fits the dataset's inputs and
classes) and renamed into ``models/<id>/`` only when it passed, so a refused upload leaves
nothing behind. ``describe_model`` says what the model is.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from torch import nn

from search.errors import UserError
from search.service.config import ServerConfig, dataset_kind
from search.service.errors import ApiError
from search.workloads import (
    ModelFile,
    WorkloadSpec,
    build_for_data,
    check_model_name,
    load_task_data,
)
from stages import TaskData, count_params_macs, weight_layers

CHECKPOINT = "checkpoint.pt"
CODE = "model.py"
RECORD = "model.json"
DEMO = "demo"  # the built-in demo: the demo CNN on digits, its teacher trained on first use
# Names a client gives (an architecture, a factory, a model id): no paths, no hidden names.
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_COPY_BLOCK = 1 << 20


def check_name(field: str, value: object) -> str:
    """``value`` as a plain name, or a 400 naming ``field`` (``..`` or ``/`` never pass)."""
    if not isinstance(value, str) or not value:
        raise ApiError(400, field, "is required (a name)")
    if "/" in value or "\\" in value or ".." in value:
        raise ApiError(400, field, f"{value!r} must be a plain name: no '/', '\\' or '..'")
    if not NAME.match(value):
        raise ApiError(400, field, f"{value!r} must be letters, digits, '_', '-' and '.' (not first)")
    return value


def describe_model(model: nn.Module, data: TaskData) -> dict[str, Any]:
    """What the model is: parameters, MACs of one input, weight layers (convolutions and linear
    layers) and all leaf modules, input shape and classes. (The full pre-flight analysis, what
    ``mcaas-search inspect`` prints, runs with each job and is stored with its study.)"""
    example = data.example_input(1)
    params, macs = count_params_macs(model, example)
    return {
        "architecture": type(model).__name__,
        "parameters": params,
        "macs": macs,
        "weight_layers": len(weight_layers(model)),
        "layers": sum(1 for m in model.modules() if not list(m.children())),
        "input_shape": list(data.input_shape),
        "classes": data.num_classes,
    }


def save_upload(
    config: ServerConfig,
    *,
    checkpoint: BinaryIO,
    architecture: str,
    dataset: str,
    code: BinaryIO | None = None,
    factory: str | None = None,
) -> dict[str, Any]:
    """Check and store an upload; returns its record (id, architecture, dataset, description).

    Raises ``ApiError`` naming the field for every refusal, with nothing kept."""
    if code is not None and not config.allow_model_code:
        raise ApiError(
            403, "code", "model code is refused: the server was started without --allow-model-code"
        )
    dataset = check_name("dataset", dataset)
    if dataset not in config.data_roots:
        raise ApiError(400, "dataset", f"unknown dataset {dataset!r}; offered: {', '.join(config.data_roots)}")
    if code is None:
        architecture = check_name("model", architecture)
        try:
            check_model_name(architecture)
        except UserError as exc:
            raise ApiError(400, "model", str(exc)) from None
        if ModelFile.parse(architecture) is not None:  # cannot happen after check_name; stated
            raise ApiError(400, "model", "a model file is uploaded as 'code', not named")
    else:
        factory = check_name("factory", factory)
    config.uploads_tmp.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="upload-", dir=config.uploads_tmp))
    try:
        digest = _copy_limited(checkpoint, staging / CHECKPOINT, config.max_upload_bytes, "file")
        code_digest = None
        if code is not None:
            code_digest = _copy_limited(code, staging / CODE, config.max_upload_bytes, "code")
            architecture = f"{staging / CODE}:{factory}"
        root = config.data_roots[dataset]
        spec = WorkloadSpec(model=architecture, dataset=dataset_kind(dataset, root), data_root=root)
        try:
            data = load_task_data(spec)
        except UserError as exc:
            raise ApiError(400, "dataset", str(exc)) from None
        try:
            model = build_for_data(spec, data, weights=staging / CHECKPOINT)
        except UserError as exc:
            raise ApiError(400, "file", _without(str(exc), staging)) from None
        except Exception as exc:  # user code (with --allow-model-code) may raise anything
            raise ApiError(400, "code", f"the model could not be built: {type(exc).__name__}: {exc}") from None
        model_id = "m-" + hashlib.sha256(
            json.dumps([architecture if code is None else f"{CODE}:{factory}", dataset, digest, code_digest]).encode()
        ).hexdigest()[:12]
        record = {
            "id": model_id,
            "architecture": architecture if code is None else f"{CODE}:{factory}",
            "dataset": dataset,
            "sha256": digest,
            "bytes": (staging / CHECKPOINT).stat().st_size,
            "uploaded_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "description": describe_model(model, data),
        }
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        target = config.models_dir / model_id
        config.models_dir.mkdir(parents=True, exist_ok=True)
        if target.exists():  # the same upload again: keep the first, answer with it
            return load_model(config, model_id)
        staging.rename(target)
        return record
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _without(message: str, staging: Path) -> str:
    """A library message about ``--weights PATH`` reworded for an upload: the staging path
    becomes "the uploaded checkpoint", and the CLI's ``--allow-pickle`` advice (a server takes
    state_dicts only) is dropped."""
    path = str(staging / CHECKPOINT)
    message = message.replace(f"checkpoint {path}", "the uploaded checkpoint").replace(path, "the uploaded checkpoint")
    message = message.replace("; pass --allow-pickle if you trust the file.", "; the server takes state_dicts only.")
    return message.replace(str(staging), "the upload").replace(" (from --weights).", ".")


def _copy_limited(source: BinaryIO, dest: Path, limit: int, field: str) -> str:
    """Copy ``source`` to ``dest``, refusing it (413) past ``limit`` bytes; returns its sha256."""
    digest = hashlib.sha256()
    size = 0
    with open(dest, "wb") as out:
        for block in iter(lambda: source.read(_COPY_BLOCK), b""):
            size += len(block)
            if size > limit:
                raise ApiError(413, field, f"the upload is over the server's limit of {limit / 1e6:g} MB")
            digest.update(block)
            out.write(block)
    if size == 0:
        raise ApiError(400, field, "the uploaded file is empty")
    return digest.hexdigest()


def load_model(config: ServerConfig, model_id: str) -> dict[str, Any]:
    """The stored record of model ``model_id`` (404 when there is none)."""
    check_name("model", model_id)
    path = config.models_dir / model_id / RECORD
    if not path.is_file():
        raise ApiError(404, "model", f"no model {model_id!r}; upload one or use {DEMO!r}")
    return json.loads(path.read_text())


def list_models(config: ServerConfig) -> list[dict[str, Any]]:
    records = []
    if config.models_dir.is_dir():
        for folder in sorted(config.models_dir.iterdir()):
            if (folder / RECORD).is_file():
                records.append(json.loads((folder / RECORD).read_text()))
    return records


def workload_spec(config: ServerConfig, model_id: str, dataset: str) -> WorkloadSpec:
    """The workload a job over ``model_id`` (``demo`` or an upload) on ``dataset`` searches."""
    if model_id == DEMO:
        return WorkloadSpec()
    root = config.data_roots[dataset]
    kind = dataset_kind(dataset, root)
    record = load_model(config, model_id)
    folder = (config.models_dir / model_id).resolve()
    architecture = record["architecture"]
    if architecture.startswith(f"{CODE}:"):
        architecture = f"{folder / CODE}:{architecture.partition(':')[2]}"
    return WorkloadSpec(model=architecture, weights=folder / CHECKPOINT, dataset=kind, data_root=root)
