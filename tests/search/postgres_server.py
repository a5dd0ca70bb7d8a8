"""A throw-away PostgreSQL server for the tests of studies shared through a database.

``initdb`` in a private temporary folder, then ``postgres`` listening only on a unix socket in
that folder (no TCP port at all), trust authentication (only this folder's owner can reach the
socket), fsync off. Run as the ``postgres`` user when the tests run as root (the server refuses
root), else as the current user. Debian's ``postgresql`` package keeps its programs in
``/usr/lib/postgresql/<version>/bin``; ``.ci/run`` installs it.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import sqlalchemy

START_TIMEOUT_S = 60


def server_programs() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: on PATH, else Debian's newest version."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


@dataclasses.dataclass
class PostgresServer:
    """One server: its data folder and socket folder (``root``), stopped with ``stop``."""

    bin: Path
    root: Path
    user: str | None  # run the server programs as this user (None: as ourselves)
    port: int = 5432  # names the socket file only: the server opens no TCP port

    @property
    def data(self) -> Path:
        return self.root / "data"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run(
            [*prefix, *args], capture_output=True, text=True, check=check, timeout=START_TIMEOUT_S
        )

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-N")

    def start(self) -> None:
        options = f"-c listen_addresses='' -k {self.root} -p {self.port} -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"),
                  "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def restart(self) -> None:
        """Stop the server (fast: open connections are cut) and start it again."""
        self.stop()
        self.start()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.root}&port={self.port}"

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        engine = sqlalchemy.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)


def start_server() -> PostgresServer | None:
    """A running throw-away server, or None when PostgreSQL is not installed."""
    programs = server_programs()
    if programs is None:
        return None
    # A short path: a unix socket's path is limited to 107 bytes.
    root = Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))
    user = None
    if os.geteuid() == 0:
        user = "postgres"
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(programs, root, user)
    try:
        server.init()
        server.start()
    except BaseException:
        server.stop(mode="immediate")
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


def remove(server: PostgresServer) -> None:
    server.stop(mode="immediate")
    shutil.rmtree(server.root, ignore_errors=True)
