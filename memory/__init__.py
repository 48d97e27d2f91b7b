"""Per-user memory (shared by every identifier of a user) and per-session state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from identity.database import Database, register_migrations
from memory.credentials import Credentials
from memory.sessions import Sessions
from memory.tasks import Tasks
from memory.types import NotFoundError
from memory.user_memory import UserMemory

register_migrations("memory", Path(__file__).with_name("migrations"))


@dataclass
class Memory:
    users: UserMemory
    sessions: Sessions
    credentials: Credentials
    tasks: Tasks

    @classmethod
    def open(cls, db: Database, *, credentials_key: bytes, idle_timeout: float = 1800,
             buffer_size: int = 20, working_limit: int = 20,
             working_max_age: float = 86400) -> Memory:
        return cls(
            UserMemory(db, working_limit=working_limit, working_max_age=working_max_age),
            Sessions(db, idle_timeout=idle_timeout, buffer_size=buffer_size),
            Credentials(db, credentials_key),
            Tasks(db),
        )


__all__ = ["Memory", "NotFoundError"]
