"""Sessions: one user, one conversation on one channel, until it goes idle.

Never shared between conversations: the buffer (last N messages), the context and the id.
"""

from __future__ import annotations

import builtins
import json
import time
from typing import Any

from identity.database import Database
from memory.types import NotFoundError, Session, SessionMessage, new_id, now

CLAIM_LEASE = 120.0  # seconds a claimed message may take before another process takes over
_COLUMNS = "id, user_id, formation_id, channel, conversation, started_at, last_activity, context"


def _session(row: Any, *, is_new: bool = False) -> Session:
    return Session(row[0], row[1], row[2], row[3], row[4], row[5], row[6], json.loads(row[7]),
                   is_new)


class Sessions:
    def __init__(self, db: Database, *, idle_timeout: float = 30 * 60,
                 buffer_size: int = 20) -> None:
        self.db = db
        self.idle_timeout = idle_timeout
        self.buffer_size = buffer_size

    async def open(self, user_id: str, formation: str, channel: str, conversation: str) -> Session:
        """Continue the conversation's session, or start a fresh one after the idle timeout.

        Continuing reads only; the turn's own write moves `last_activity` (see `touch`)."""
        at = now()
        row = await self.db.fetchrow(
            f"SELECT {_COLUMNS} FROM sessions WHERE user_id = $1 AND channel = $2"
            " AND conversation = $3 AND last_activity > $4 ORDER BY last_activity DESC LIMIT 1",
            user_id, channel, conversation, at - self.idle_timeout,
        )
        if row is not None:
            return _session(row)
        async with self.db.transaction() as tx:
            if self.db.dialect == "postgres":
                # Two first messages of one conversation must not open two sessions.
                # (SQLite transactions are already serialized.)
                await tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                                 f"{user_id}\x1f{channel}\x1f{conversation}")
            row = await tx.fetchrow(
                f"SELECT {_COLUMNS} FROM sessions WHERE user_id = $1 AND channel = $2"
                " AND conversation = $3 AND last_activity > $4"
                " ORDER BY last_activity DESC LIMIT 1",
                user_id, channel, conversation, at - self.idle_timeout,
            )
            if row is not None:
                await tx.execute("UPDATE sessions SET last_activity = $2 WHERE id = $1",
                                 row[0], at)
                return _session(row)
            session = Session(new_id("sess"), user_id, formation, channel, conversation, at, at,
                              {}, True)
            await tx.execute(
                "INSERT INTO sessions (id, user_id, formation_id, channel, conversation,"
                " started_at, last_activity, context) VALUES ($1, $2, $3, $4, $5, $6, $7, '{}')",
                session.id, user_id, formation, channel, conversation, at, at,
            )
            return session

    async def get(self, user_id: str, session_id: str) -> Session:
        row = await self.db.fetchrow(
            f"SELECT {_COLUMNS} FROM sessions WHERE id = $1 AND user_id = $2", session_id, user_id
        )
        if row is None:
            raise NotFoundError("session", session_id)
        return _session(row)

    async def list(self, user_id: str, limit: int = 20) -> builtins.list[Session]:
        rows = await self.db.fetch(
            f"SELECT {_COLUMNS} FROM sessions WHERE user_id = $1"
            " ORDER BY last_activity DESC LIMIT $2",
            user_id, limit,
        )
        return [_session(r) for r in rows]

    async def latest(self, user_id: str) -> Session | None:
        """The user's most recently active conversation, on whatever channel."""
        sessions = await self.list(user_id, limit=1)
        return sessions[0] if sessions else None

    async def touch(self, session_id: str, *, q: Any = None) -> None:
        await (q or self.db).execute("UPDATE sessions SET last_activity = $2 WHERE id = $1",
                                     session_id, now())

    async def add_messages(self, session_id: str, turns: builtins.list[tuple[str, str]], *,
                           q: Any = None) -> None:
        """Append (role, content) messages to the session buffer, in order."""
        at, seq = now(), time.time_ns()
        for offset, (role, content) in enumerate(turns):
            await (q or self.db).execute(
                "INSERT INTO session_messages (id, session_id, seq, role, content, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                new_id("msg"), session_id, seq + offset, role, content, at,
            )

    async def add_message(self, session_id: str, role: str, content: str) -> SessionMessage:
        message = SessionMessage(new_id("msg"), role, content, now())
        await self.db.execute(
            "INSERT INTO session_messages (id, session_id, seq, role, content, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6)",
            message.id, session_id, time.time_ns(), role, content, message.created_at,
        )
        return message

    async def buffer(self, session_id: str, limit: int | None = None, *,
                     q: Any = None) -> builtins.list[SessionMessage]:
        """The session's last messages, oldest first."""
        rows = await (q or self.db).fetch(
            "SELECT id, role, content, created_at FROM session_messages WHERE session_id = $1"
            " ORDER BY seq DESC LIMIT $2",
            session_id, limit or self.buffer_size,
        )
        return [SessionMessage(*r) for r in reversed(rows)]

    async def messages(self, session_id: str,
                       limit: int = 50) -> tuple[builtins.list[SessionMessage], bool]:
        """Up to `limit` most recent messages, oldest first, and whether there are more."""
        rows = await self.buffer(session_id, limit + 1)
        return rows[-limit:], len(rows) > limit

    async def set_context(self, session_id: str, context: dict[str, Any]) -> None:
        await self.db.execute(
            "UPDATE sessions SET context = $2 WHERE id = $1", session_id, json.dumps(context)
        )

    async def clear_buffers(self, user_id: str) -> int:
        async with self.db.transaction() as tx:
            rows = await tx.fetch(
                "DELETE FROM session_messages WHERE session_id IN"
                " (SELECT id FROM sessions WHERE user_id = $1) RETURNING id",
                user_id,
            )
        return len(rows)

    async def claim_message(self, formation: str, channel: str, message_id: str, *,
                            lease: float = CLAIM_LEASE) -> bool:
        """True when this process should answer a platform message: the first time it is
        seen, or when the process that claimed it died before finishing (after `lease`).
        False for a redelivery of one answered or being answered."""
        at = now()
        sql = ("INSERT INTO processed_messages"
               " (formation_id, channel, message_id, created_at, status)"
               " VALUES ($1, $2, $3, $4, 'processing')"
               " ON CONFLICT (formation_id, channel, message_id) DO UPDATE"
               " SET created_at = excluded.created_at"
               " WHERE processed_messages.status = 'processing'"
               " AND processed_messages.created_at < $5"
               " RETURNING message_id")
        args = (formation, channel, message_id, at, at - lease)
        if self.db.dialect == "postgres":  # one statement commits on its own
            return await self.db.fetchval(sql, *args) is not None
        async with self.db.transaction() as tx:
            return await tx.fetchval(sql, *args) is not None

    async def finish_message(self, formation: str, channel: str, message_id: str) -> None:
        await self.db.execute(
            "UPDATE processed_messages SET status = 'done'"
            " WHERE formation_id = $1 AND channel = $2 AND message_id = $3",
            formation, channel, message_id)

    async def release_message(self, formation: str, channel: str, message_id: str) -> None:
        """Forget a claim whose turn failed, so a redelivery is answered."""
        await self.db.execute(
            "DELETE FROM processed_messages WHERE formation_id = $1 AND channel = $2"
            " AND message_id = $3 AND status = 'processing'",
            formation, channel, message_id)
