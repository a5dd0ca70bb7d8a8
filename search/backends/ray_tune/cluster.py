"""Joining Ray: a local instance or a cluster, reached fast or refused with a clear error (token
authentication included), quiet, with the paths workers need made absolute (they run in other
directories)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray
from ray._raylet import AuthenticationTokenLoader, Config, GcsClient
from ray.exceptions import AuthenticationError

from search import checkout_pythonpath
from search.errors import UserError, first_line
from search.study import storage_url
from search.trials.context import default_threads
from search.workloads import WorkloadSpec, canonical_model_name

CONNECT_TIMEOUT_S = 3.0
DEFAULT_GCS_PORT = 6379

# Ray's token authentication (https://docs.ray.io/en/latest/ray-security/token-auth.html): a cluster
# started with RAY_AUTH_MODE=token, or by `ray start --head` where a token already exists, refuses
# a driver without its token. A driver sends one only with RAY_AUTH_MODE=token, and takes it from
# RAY_AUTH_TOKEN, else from the file RAY_AUTH_TOKEN_PATH names, else from ~/.ray/auth_token.
AUTH_MODE_VAR, TOKEN_VAR, TOKEN_PATH_VAR = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = "~/.ray/auth_token"
PRINT_TOKEN = "`ray get-auth-token` on its head node prints it"

# Ray and Tune read these when a run starts: no progress tables (our LiveProgress reads the
# study), no per-trial CSV/JSON/TensorBoard files, and
# Ctrl-C raises KeyboardInterrupt at once instead of Tune's stop-and-checkpoint dance.
QUIET_ENV = {
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_DISABLE_SIGINT_HANDLER": "1",
    # A pruned or failed trial reports its outcome without objective values (see StudySearch).
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
}


@contextlib.contextmanager
def quiet_env() -> Iterator[None]:
    """Set QUIET_ENV (unless the user set a variable) for the run, then restore the environment."""
    saved = {key: os.environ.get(key) for key in QUIET_ENV}
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def connected(address: str | None) -> Iterator[None]:
    """Ray for the run: the one already initialised in this process (left running), else a
    local instance or the cluster at ``address`` (shut down / disconnected afterwards)."""
    if ray.is_initialized():
        yield
        return
    options: dict[str, Any] = {
        "log_to_driver": False,
        "configure_logging": True,
        "logging_level": logging.ERROR,
        "runtime_env": worker_runtime_env(),
    }
    with contextlib.ExitStack() as stack:
        if address is None:
            ray.init(num_cpus=default_threads(1), include_dashboard=False, **options)
        else:
            check_reachable(address)
            stack.enter_context(token_auth(address))
            try:
                ray.init(address=address, **options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UserError(f"cannot join the Ray cluster at {address!r}: {first_line(exc)}") from None
        stack.callback(ray.shutdown)  # before token_auth restores the environment
        yield


def worker_runtime_env() -> dict[str, Any]:
    """Ray's ``runtime_env`` for the workers: a PYTHONPATH that finds this package when it runs
    from a source checkout (relative entries made absolute: workers run in other directories)."""
    return {"env_vars": {"PYTHONPATH": checkout_pythonpath()}}


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise UserError unless ``address`` (``host[:port]`` or ``ray://host:port``) accepts a
    connection within ``timeout`` seconds: Ray itself retries an unreachable cluster for minutes.

    ``auto`` and ``local`` are Ray's own lookups and fail fast on their own.
    """
    if address in ("auto", "local"):
        return
    target = address.removeprefix("ray://")
    host, sep, port_text = target.rpartition(":")
    if not sep:
        host, port_text = target, str(DEFAULT_GCS_PORT)
    if not host or not port_text.isdigit():
        raise UserError(f"bad --address {address!r}; expected host:port, ray://host:port, auto or local")
    try:
        with socket.create_connection((host.strip("[]"), int(port_text)), timeout=timeout):
            pass
    except OSError as exc:
        why = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise UserError(
            f"cannot reach the Ray cluster at {address!r} ({why}); start one with `ray start --head` "
            "or pass the address it printed"
        ) from None


@contextlib.contextmanager
def token_auth(address: str) -> Iterator[None]:
    """Join ``address`` with Ray's token when it needs one: raise UserError, naming the variable or
    file to set, when the cluster refuses this process (no token, or not its token).

    With RAY_AUTH_MODE unset and a token at hand, the run is in token mode, as ``ray start``
    decides for a head node and ``ray.init()`` for a local cluster (a cluster without
    authentication ignores the token); RAY_AUTH_MODE is restored afterwards.
    """
    saved = os.environ.get(AUTH_MODE_VAR)
    has_token = _has_token()
    if saved == "token" and not has_token:
        raise _no_token(address)  # else Ray's C++ client aborts the process
    try:
        if saved is None and has_token:
            os.environ[AUTH_MODE_VAR] = "token"
        Config.initialize("")  # Ray reads RAY_AUTH_MODE once: read it again
        _check_token(address, saved)
        yield
    finally:
        if saved is None:
            os.environ.pop(AUTH_MODE_VAR, None)
        else:
            os.environ[AUTH_MODE_VAR] = saved
        Config.initialize("")
        # Ray caches the token it read for this process: a later Ray in the same process (a local
        # one, another cluster) must read its own.
        AuthenticationTokenLoader.instance().reset_cache()


def _has_token() -> bool:
    """Whether Ray finds a token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)."""
    loader = AuthenticationTokenLoader.instance()
    loader.reset_cache()  # the variables may have changed since Ray last read them
    try:
        return loader.has_token(ignore_auth_mode=True)
    except AuthenticationError:  # RAY_AUTH_TOKEN_PATH names no readable, non-empty file
        path = os.environ.get(TOKEN_PATH_VAR)
        raise UserError(
            f"{TOKEN_PATH_VAR}={path} is not a readable token file; write the cluster's token "
            f"there ({PRINT_TOKEN}) or unset {TOKEN_PATH_VAR}"
        ) from None


def _check_token(address: str, mode: str | None) -> None:
    """Raise UserError unless the cluster at ``address`` accepts this process: a GCS client
    answers an authentication failure at once, where ``ray.init`` retries it for many seconds.
    ``mode`` is RAY_AUTH_MODE as the user set it."""
    if address in ("auto", "local") or address.startswith("ray://"):
        return  # Ray's own lookups, or a Ray Client server (no GCS to ask)
    try:
        with _quiet_stderr():  # Ray's C++ client logs the refusal as well
            GcsClient(address=address)
    except AuthenticationError:
        if mode is not None and mode != "token":
            raise UserError(
                f"cannot join the Ray cluster at {address!r}: it requires its token, and "
                f"{AUTH_MODE_VAR}={mode}; set {AUTH_MODE_VAR}=token"
            ) from None
        if os.environ.get(AUTH_MODE_VAR) != "token":
            raise _no_token(address) from None
        source, fix = _token_source()
        raise UserError(
            f"cannot join the Ray cluster at {address!r}: it refused the token in {source}; "
            f"{fix} ({PRINT_TOKEN})"
        ) from None
    except Exception as exc:  # Ray raises its own RPC errors (an address that is no Ray GCS)
        raise UserError(f"cannot join the Ray cluster at {address!r}: {first_line(exc)}") from None


def _no_token(address: str) -> UserError:
    """The error for a cluster that requires a token where Ray finds none."""
    return UserError(
        f"cannot join the Ray cluster at {address!r}: it requires its token and none was found; "
        f"write it ({PRINT_TOKEN}) to {DEFAULT_TOKEN_FILE}, or set {TOKEN_PATH_VAR} to a file holding it"
    )


def _token_source() -> tuple[str, str]:
    """Where Ray takes this process's token from, in its order, and how to put the right one there."""
    if os.environ.get(TOKEN_VAR):
        return TOKEN_VAR, f"set {TOKEN_VAR} to the cluster's token"
    if path := os.environ.get(TOKEN_PATH_VAR):
        return f"{TOKEN_PATH_VAR}={path}", f"write the cluster's token to {path}"
    return DEFAULT_TOKEN_FILE, (
        f"write the cluster's token to {DEFAULT_TOKEN_FILE}, or set {TOKEN_PATH_VAR} to a file holding it"
    )


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null for the block (C++ code writes there, not to sys.stderr)."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def check_fits(cpus_per_trial: float, gpus_per_trial: float) -> None:
    """Raise UserError unless one trial's CPUs and GPUs fit on a node of the Ray cluster (else
    Tune would wait for them forever)."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if any(n.get("CPU", 0) >= cpus_per_trial and n.get("GPU", 0) >= gpus_per_trial for n in nodes):
        return
    largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
    raise UserError(
        f"a trial needs {cpus_per_trial:g} CPUs and {gpus_per_trial:g} GPUs, but the largest Ray node "
        f"has {largest.get('CPU', 0):g} CPUs and {largest.get('GPU', 0):g} GPUs; "
        "lower --cpus-per-trial / --gpus-per-trial"
    )


def absolute_storage(url: str | None) -> str:
    """The storage URL with a relative journal or SQLite path made absolute (Ray workers run in
    other directories); other URLs unchanged."""
    url = storage_url(url)
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        return url if path.startswith("/") else f"sqlite:///{Path(path).resolve()}"
    if "://" in url:
        return url
    return str(Path(url.removeprefix("journal:")).resolve())


def absolute_spec(spec: WorkloadSpec) -> WorkloadSpec:
    """``spec`` with its file paths (weights, data root, a model file) made absolute."""
    return dataclasses.replace(
        spec,
        model=canonical_model_name(spec.model) if spec.model is not None else None,
        weights=spec.weights.expanduser().resolve() if spec.weights is not None else None,
        data_root=spec.data_root.expanduser().resolve() if spec.data_root is not None else None,
    )


