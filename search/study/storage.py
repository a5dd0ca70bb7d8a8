"""Where studies live: an Optuna journal file (the default) or an RDB URL, opened safely.

A journal is locked with ``flock`` (a killed writer leaves no stale lock) and a last line cut off
by a kill is repaired before Optuna reads it; a database must answer within a timeout.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from search.errors import UserError, first_line

# Optuna logs every trial at INFO; the progress display says what matters.
optuna.logging.set_verbosity(optuna.logging.WARNING)

STUDIES_DIR = Path("studies")
DEFAULT_STORAGE = STUDIES_DIR / "mcaas.journal"
_RDB_SCHEMES = ("sqlite:", "postgresql:", "postgresql+", "mysql:", "mysql+")
# Seconds to wait for a database server before giving up (an unreachable host must not hang).
CONNECT_TIMEOUT_S = 10
# Database servers are shared by machines, so a dead worker cannot be told by its pid: each running
# trial's worker writes a heartbeat every HEARTBEAT_S seconds (MCAAS_HEARTBEAT_S overrides it), and
# a trial with none for GRACE_BEATS heartbeats is taken as its worker's death.
_SERVER_SCHEMES = ("postgresql:", "postgresql+", "mysql:", "mysql+")
HEARTBEAT_S = 10
GRACE_BEATS = 3


def storage_url(url: str | None) -> str:
    """The storage a study lives in: ``url`` as given, or the default journal file."""
    return url if url else str(DEFAULT_STORAGE)


def open_storage(url: str | None, *, create: bool) -> BaseStorage:
    """Open the study storage: an RDB URL (``sqlite:///x.db``, ``postgresql://...``) or a journal file.

    ``create=False`` (report, show, export, list) refuses a journal file that does not exist rather
    than silently creating an empty one.
    """
    url = storage_url(url)
    if url.startswith(_RDB_SCHEMES):
        if url.startswith("sqlite:///") and not create:
            _require_file(Path(url.removeprefix("sqlite:///")), url)
        try:
            return _open_rdb(url)
        except UserError:
            raise
        except Exception as exc:  # SQLAlchemy raises many kinds for an unreachable database
            raise UserError(f"cannot open storage {url!r}: {first_line(exc)}") from None
    if "://" in url:
        raise UserError(
            f"unsupported storage URL {url!r}; use a journal file path (e.g. studies/x.journal), "
            "sqlite:///path.db, postgresql://... or mysql://..."
        )
    path = Path(url.removeprefix("journal:"))
    if not create:
        _require_file(path, url)
    elif path == DEFAULT_STORAGE:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.parent.is_dir():
        raise UserError(f"storage folder {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise UserError(f"storage {url!r} is a folder; expected a journal file such as {path / 'mcaas.journal'}")
    lock = FlockJournalLock(str(path))
    try:
        if path.is_file() and path.stat().st_size and not _starts_as_journal(path):
            raise ValueError("not a journal")  # never append logs to someone else's file
        _refuse_cut_first_record(path, url)
        repair_journal_tail(path, lock)
        return JournalStorage(JournalFileBackend(str(path), lock_obj=lock))
    except OSError as exc:
        raise UserError(f"cannot open storage {url!r}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AssertionError):  # logs Optuna cannot replay
        raise UserError(f"storage {url!r} is not an Optuna journal file (or it is damaged)") from None


def _open_rdb(url: str) -> RDBStorage:
    """Optuna's RDBStorage at ``url``. On PostgreSQL it is opened under an advisory lock: two
    machines starting on an empty database would both create Optuna's tables, and one would fail
    on the other's half-made ones."""
    with warnings.catch_warnings():  # heartbeats: "experimental" since Optuna 2.9, unchanged
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if not url.startswith(("postgresql:", "postgresql+")):
            return RDBStorage(url, engine_kwargs=rdb_engine_kwargs(url), **heartbeat_kwargs(url))
        engine = sqlalchemy.create_engine(url, **rdb_engine_kwargs(url))
        try:
            with advisory_lock(engine, "mcaas-search:schema"):
                return RDBStorage(url, engine_kwargs=rdb_engine_kwargs(url), **heartbeat_kwargs(url))
        finally:
            engine.dispose()


@contextlib.contextmanager
def advisory_lock(engine: sqlalchemy.Engine, name: str) -> Iterator[None]:
    """A lock on ``name`` across every connection to a PostgreSQL server, held by one connection:
    a session advisory lock, which the server releases when that connection ends (its process
    killed, its machine lost)."""
    key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
        try:
            yield
        finally:
            with contextlib.suppress(sqlalchemy.exc.DBAPIError):  # a lost connection lost its lock
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})


def check_storage(url: str | None) -> None:
    """Fail fast on a storage that cannot be opened, before any work: a journal whose folder is
    missing, an unreachable database. Writes nothing to a journal (a database is connected to)."""
    url = storage_url(url)
    if url.startswith(_RDB_SCHEMES) or "://" in url:
        open_storage(url, create=True)
        return
    path = Path(url.removeprefix("journal:"))
    if path.is_dir():
        raise UserError(f"storage {url!r} is a folder; expected a journal file such as {path / 'mcaas.journal'}")
    if path.exists():
        open_storage(url, create=False)
    elif path != DEFAULT_STORAGE and not path.parent.is_dir():
        raise UserError(f"storage folder {str(path.parent)!r} does not exist")


class FlockJournalLock(JournalFileOpenLock):
    """The journal's write lock as an ``flock`` on a side file. Optuna's own locks are files that
    a killed writer leaves behind, so the next run would wait 30 s and warn; the kernel drops an
    flock when its holder dies. (Optuna's lock base class is private: this subclasses a public one
    and replaces all of it.)"""

    def __init__(self, journal: str) -> None:
        super().__init__(journal, grace_period=None)
        self._path = journal + ".flock"
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


_JOURNAL_LOG = b'{"op_code":'


def _starts_as_journal(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(_JOURNAL_LOG)) == _JOURNAL_LOG


# A journal's first log (the study's creation) is far shorter than this.
_FIRST_LOG_MAX = 1 << 20


def _refuse_cut_first_record(path: Path, url: str) -> None:
    """A journal whose first log was cut off (a run killed while creating its study, a file
    copied half-way) holds no complete log: there is nothing to repair it to, and Optuna would
    fail on it. It is refused and left as it is, for the user to inspect."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        head = f.read(_FIRST_LOG_MAX)
    if b"\n" not in head:
        raise UserError(
            f"storage {url!r} is damaged: its first record is cut off ({path.stat().st_size} bytes, "
            "no complete record), so it holds no study; it was left as it is. Move it aside to start "
            "a new journal there"
        )


def repair_journal_tail(path: Path, lock: FlockJournalLock) -> bool:
    """Cut a last log that a writer killed mid-append left without its newline; returns whether
    it did. Optuna would glue the next log onto it and then refuse the whole file. Only a file
    that is a journal is touched: any other file given as ``--storage`` stays as it is."""
    if not path.is_file() or path.stat().st_size == 0:
        return False
    if not _starts_as_journal(path):
        return False
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return False
    lock.acquire()
    try:
        with open(path, "rb+") as f:
            data = f.read()
            end = data.rfind(b"\n") + 1
            # Another writer may have finished the line meanwhile; a cut log starts as every log.
            if data.endswith(b"\n") or end == 0 or not data[end:].startswith(b"{"):
                return False
            f.truncate(end)
            return True
    finally:
        lock.release()


def _require_file(path: Path, url: str) -> None:
    if not path.is_file():
        raise UserError(f"no study storage at {url!r} (run a search first, or pass --storage)")


def rdb_engine_kwargs(url: str) -> dict[str, Any]:
    """SQLAlchemy engine arguments: SQLite waits for a lock held by a parallel worker instead of
    failing at once; a database server must answer within ``CONNECT_TIMEOUT_S``, and a pooled
    connection is checked before use, so a restarted server is reconnected to, not failed on."""
    if url.startswith("sqlite:"):
        return {"connect_args": {"timeout": 60}}
    return {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}, "pool_pre_ping": True}


def heartbeat_seconds() -> int:
    """The heartbeat interval of a database server storage: ``MCAAS_HEARTBEAT_S`` or HEARTBEAT_S."""
    text = os.environ.get("MCAAS_HEARTBEAT_S", "").strip()
    if not text:
        return HEARTBEAT_S
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"MCAAS_HEARTBEAT_S must be a whole number of seconds >= 1, but got {text!r}")
    return int(text)


def heartbeat_kwargs(url: str) -> dict[str, int]:
    """RDBStorage's heartbeat arguments: on for a database server (several machines), off for
    SQLite (one machine, where a dead worker is told by its pid)."""
    if not url.startswith(_SERVER_SCHEMES):
        return {}
    interval = heartbeat_seconds()
    return {"heartbeat_interval": interval, "grace_period": GRACE_BEATS * interval}


def load_study(name: str, storage: BaseStorage) -> optuna.Study:
    """An existing study, or a UserError listing the studies that do exist."""
    names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise UserError(f"no study named {name!r} in this storage; studies: {known}")
    return optuna.load_study(study_name=name, storage=storage)
