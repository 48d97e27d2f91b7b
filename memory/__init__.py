"""Per-user memory (shared by every identifier of a user) and per-session state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from identity.storage import IDENTITY_SCHEMA, Database, Schema
from identity.types import MergeRecord
from memory import lifecycle, merges
from memory.claims import Claims
from memory.credentials import Credentials
from memory.embeddings import Embedder
from memory.sessions import Sessions
from memory.tasks import Tasks
from memory.turns import Turns
from memory.types import NotFoundError
from memory.user_memory import UserMemory

# The database schema a gateway needs: the identity core's tables, then memory's. The wiring
# hands it to `identity.storage.connect`.
SCHEMA: Schema = {**IDENTITY_SCHEMA, "memory": Path(__file__).with_name("migrations")}


@dataclass
class Memory:
    users: UserMemory
    sessions: Sessions
    credentials: Credentials
    tasks: Tasks
    claims: Claims
    turns: Turns

    @classmethod
    def open(cls, db: Database, *, credentials_key: bytes, idle_timeout: float = 1800,
             buffer_size: int = 20, working_limit: int = 20,
             working_max_age: float = 86400, embedder: Embedder | None = None) -> Memory:
        users = UserMemory(db, working_limit=working_limit, working_max_age=working_max_age,
                           embedder=embedder)
        sessions = Sessions(db, idle_timeout=idle_timeout, buffer_size=buffer_size)
        tasks, claims = Tasks(db), Claims(db)
        return cls(users, sessions, Credentials(db, credentials_key), tasks, claims,
                   Turns(users, sessions, tasks, claims))

    async def merge_into(self, tx: Any, keep: str, absorb: str) -> dict[str, Any]:
        """A merge hook (`IdentityStore.on_merge`): inside the merge's transaction, move
        `absorb`'s memory to `keep` (`keep`'s facts win), rebuild `keep`'s synopsis, and
        return what moved for the merge journal (see `memory.merges`)."""
        return await merges.merge_into(self.users, tx, keep, absorb)

    async def unmerge(self, tx: Any, record: MergeRecord) -> None:
        """An undo hook (`IdentityStore.on_unmerge`): put back what `merge_into` moved."""
        await merges.unmerge(self.users, tx, record)

    async def erase_user(self, tx: Any, user_id: str, keys: list[str]) -> dict[str, int]:
        """An erase hook (`IdentityStore.on_erase`): inside the erasure's transaction,
        remove everything kept for the user; returns how much, by kind."""
        counts = await lifecycle.erase_user(tx, user_id, keys,
                                            dialect=self.users.db.dialect)
        self.users.forget_vectors(user_id)
        return counts

    async def export_user(self, user_id: str) -> dict[str, Any]:
        """Everything kept for the user, as one JSON-ready document."""
        return await lifecycle.export_user(self.users.db, user_id)


__all__ = ["Memory", "NotFoundError"]
