"""``mcaas-search serve``: the search as a service, an HTTP API and a web page (FastAPI on
uvicorn) to upload a model, start a job, watch it, pick a trial on the Pareto plot and download
it. Jobs are studies in the usual storage, run by worker processes that outlive the server."""

from __future__ import annotations

import argparse
import ipaddress
import math
import socket
from pathlib import Path

from search.commands import add_storage_argument, count_arg
from search.request import MAX_JOBS
from search.errors import UserError
from search.study import check_storage


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in [0, 65535], got {text!r}")
    return value


def _host(text: str) -> str:
    """An IP address or ``localhost``: a host name would need a DNS lookup to bind."""
    if text == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an IP address to listen on (127.0.0.1, 0.0.0.0, ::1) or localhost, got {text!r}"
        ) from None


def _megabytes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of MB, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of MB > 0, got {text!r}")
    return value


def require_service_packages() -> None:
    """Refuse in one line, before ``search.service`` is imported, when the ``service`` extra is
    not installed (a plain ``pip install mcaas-search`` leaves it out)."""
    try:
        import fastapi  # noqa: F401
        import python_multipart  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise UserError(
            f"serve needs FastAPI, uvicorn and python-multipart ({exc.name} is missing): "
            "pip install 'mcaas-search[service]'"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    require_service_packages()  # `serve --help` too: its defaults come from search.service
    from search.service.config import DEFAULT_FOLDER, DEFAULT_MAX_UPLOAD_MB

    parser.add_argument(
        "--host", type=_host, default="127.0.0.1", help="IP address to listen on (loopback unless told otherwise)"
    )
    parser.add_argument("--port", type=_port, default=8000, help="port to listen on (0: any free port, printed)")
    parser.add_argument(
        "--data-root",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a dataset folder clients may use (repeatable): Fashion-MNIST IDX files, "
        "cifar-10-batches-py, or class sub-folders of images; digits is always offered",
    )
    add_storage_argument(parser)
    parser.add_argument("--workers", type=count_arg("workers", MAX_JOBS), default=1, help="jobs run at once, each in its own process")
    parser.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="file holding the bearer token (mode 600); none means a token generated at the first "
        "start into the server folder and printed once",
    )
    parser.add_argument(
        "--allow-model-code",
        action="store_true",
        help="accept uploaded model files (Python code the server then runs: only for trusted clients)",
    )
    parser.add_argument(
        "--folder",
        type=Path,
        default=DEFAULT_FOLDER,
        help="the server's folder: token, uploaded models, job records, exports",
    )
    parser.add_argument(
        "--max-upload-mb", type=_megabytes, default=DEFAULT_MAX_UPLOAD_MB,
        help="largest checkpoint or model file accepted",
    )


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a port in use is one line, and port 0 works."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


def run(args: argparse.Namespace) -> int:
    import uvicorn  # present: add_arguments checked the service extra

    from search.service.app import create_app
    from search.service.auth import load_or_create_token
    from search.service.config import ServerConfig, data_roots

    # Every check first, then the socket, and only then is anything written (the token).
    check_storage(args.storage)
    if args.folder.exists() and not args.folder.is_dir():
        raise UserError(f"--folder {str(args.folder)!r} is a file; expected a folder for the server's files")
    config = ServerConfig(
        folder=args.folder.resolve(),
        storage=args.storage,
        data_roots=data_roots(args.data_root),
        workers=args.workers,
        allow_model_code=args.allow_model_code,
        max_upload_bytes=int(args.max_upload_mb * 1e6),
    )
    if args.token_file is not None:
        load_or_create_token(config.folder, args.token_file)  # refused here if unusable
    sock = _bind(args.host, args.port)
    try:
        token, created = load_or_create_token(config.folder, args.token_file)
    except BaseException:
        sock.close()
        raise
    host, port = sock.getsockname()[:2]
    if created:
        print(f"token (printed this once; kept in {config.folder / 'token'}, mode 600): {token}", flush=True)
    elif args.token_file is None:
        print(f"token: in {config.folder / 'token'}", flush=True)
    shown = f"[{host}]" if ":" in host else host
    print(f"serving on http://{shown}:{port}/ (storage {config.storage_url}; datasets "
          f"{', '.join(config.data_roots)}; {config.workers} job(s) at once)", flush=True)
    if not ipaddress.ip_address(host).is_loopback:
        print("note: listening beyond loopback; anyone who can reach it and holds the token can run jobs", flush=True)
    print("Ctrl-C stops the server; running jobs go on and the next start picks them up", flush=True)
    app = create_app(config, token, token_file=args.token_file)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on"))
    server.run(sockets=[sock])
    return 0
