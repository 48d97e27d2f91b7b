"""SQLite is the embedded default for one serving process: a second `threadline serve` on
the same file is refused with a clear message (the command line may still work beside it).
Several replicas need PostgreSQL, which shares changes between processes."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from config.settings import ConfigError
from identity.storage.database import sqlite_path


def hold_sqlite(database_url: str) -> IO[str] | None:
    """Take the serving lock of a SQLite database; keep the returned file open while
    serving (the lock goes with the process). None for other databases."""
    if not database_url.startswith("sqlite:"):
        return None
    path = Path(sqlite_path(database_url))
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = open(path.with_name(path.name + ".serving"), "a+", encoding="utf-8")  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip() or "another process"
        lock.close()
        raise ConfigError(
            f"SQLite database {path} is already served by {holder}; SQLite serves one "
            "process. Stop that one, or run several replicas on PostgreSQL "
            "(THREADLINE_DATABASE_URL=postgresql://…)") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()}\n")
    lock.flush()
    return lock
