"""The bearer token every ``/api`` route requires.

Generated at the first start into ``<server folder>/token`` with owner-only permissions (0600)
and printed once; later starts read it. ``--token-file F`` supplies one instead (it must be
private to its owner too, since anyone who reads it can run jobs).
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
from pathlib import Path

from search.errors import UserError

TOKEN_FILE = "token"
MIN_TOKEN_CHARS = 16


def where_the_token_is(token_file: Path | None) -> str:
    """The log-in page's hint (HTML): how this server was given its token. It names no path, since
    anyone who can reach the page reads it."""
    if token_file is not None:
        return ("The server was started with <code>--token-file</code>: the token is that file's "
                "content (whoever started the server has it).")
    return ("The server printed it at its first start (and keeps it in its folder, file "
            f"<code>{TOKEN_FILE}</code>).")


def load_or_create_token(folder: Path, token_file: Path | None = None) -> tuple[str, bool]:
    """``(token, created)``: the token of ``token_file`` or of the server folder, generated and
    written there (0600) when the folder has none yet."""
    if token_file is not None:
        return _read_token(token_file, "--token-file"), False
    path = folder / TOKEN_FILE
    if path.exists():
        return _read_token(path, "the server's token file"), False
    folder.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    # O_EXCL: two servers starting at once never overwrite each other's printed token.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token, True


def _read_token(path: Path, what: str) -> str:
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} {'is a folder' if path.is_dir() else 'does not exist'}")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise UserError(
            f"{what} {str(path)!r} is readable by others (mode {mode:o}); run chmod 600 on it"
        )
    token = path.read_text(errors="replace").strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise UserError(
            f"{what} {str(path)!r} must hold one token of at least {MIN_TOKEN_CHARS} characters "
            "with no spaces"
        )
    return token


def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <token>`` (compared in constant time)."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
