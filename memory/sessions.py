"""Sessions: one user, one conversation on one channel, until it goes idle.

Never shared between conversations: the buffer (last N messages), the context and the id.
"""

from __future__ import annotations

import builtins
import json
import time
from typing import Any

from identity.storage import Database
from memory.types import NotFoundError, Session, SessionMessage, new_id, now

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

    async def plan(self, user_id: str, formation: str, channel: str,
                   conversation: str) -> Session:
        """The conversation's active session, or a new one (`is_new`) that nothing holds yet:
        the turn's own transaction inserts it (`insert`), so a failed turn leaves no trace."""
        at = now()
        row = await self.db.fetchrow(
            f"SELECT {_COLUMNS} FROM sessions WHERE user_id = $1 AND channel = $2"
            " AND conversation = $3 AND last_activity > $4 ORDER BY last_activity DESC LIMIT 1",
            user_id, channel, conversation, at - self.idle_timeout,
        )
        if row is not None:
            return _session(row)
        return Session(new_id("sess"), user_id, formation, channel, conversation, at, at, {},
                       True)

    async def insert(self, tx: Any, session: Session) -> Session:
        """Store a planned session inside `tx`; when another turn opened one for the same
        conversation meanwhile, that one is continued instead."""
        if self.db.dialect == "postgres":
            # Two first messages of one conversation must not open two sessions.
            # (SQLite transactions are already serialized.)
            await tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                             f"{session.user_id}\x1f{session.channel}\x1f{session.conversation}")
        row = await tx.fetchrow(
            f"SELECT {_COLUMNS} FROM sessions WHERE user_id = $1 AND channel = $2"
            " AND conversation = $3 AND last_activity > $4 ORDER BY last_activity DESC LIMIT 1",
            session.user_id, session.channel, session.conversation, now() - self.idle_timeout,
        )
        if row is not None:
            return _session(row)
        await tx.execute(
            "INSERT INTO sessions (id, user_id, formation_id, channel, conversation,"
            " started_at, last_activity, context) VALUES ($1, $2, $3, $4, $5, $6, $7, '{}')",
            session.id, session.user_id, session.formation_id, session.channel,
            session.conversation, session.started_at, session.last_activity,
        )
        return session

    async def open(self, user_id: str, formation: str, channel: str, conversation: str) -> Session:
        """Continue the conversation's session, or start (and store) a fresh one."""
        session = await self.plan(user_id, formation, channel, conversation)
        if not session.is_new:
            return session
        async with self.db.transaction() as tx:
            return await self.insert(tx, session)

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

    async def find(self, user_id: str, channel: str, conversation: str) -> Session | None:
        """The conversation's latest session, however long ago it was active."""
        row = await self.db.fetchrow(
            f"SELECT {_COLUMNS} FROM sessions WHERE user_id = $1 AND channel = $2"
            " AND conversation = $3 ORDER BY last_activity DESC LIMIT 1",
            user_id, channel, conversation,
        )
        return _session(row) if row is not None else None

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

    async def add_message(self, session_id: str, role: str, content: str, *,
                          q: Any = None) -> SessionMessage:
        message = SessionMessage(new_id("msg"), role, content, now())
        await (q or self.db).execute(
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

    async def clear_buffer(self, user_id: str, session_id: str) -> int:
        """Empty one session's buffer (the session stays); 404 unless it is the user's."""
        async with self.db.transaction() as tx:
            owned = await tx.fetchval(
                "SELECT 1 FROM sessions WHERE id = $1 AND user_id = $2", session_id, user_id)
            if owned is None:
                raise NotFoundError("session", session_id)
            rows = await tx.fetch(
                "DELETE FROM session_messages WHERE session_id = $1 RETURNING id", session_id)
        return len(rows)

    async def stats(self, formation: str, at: float | None = None) -> dict[str, Any]:
        """What the session buffers of `formation` hold: sessions (all, and active now),
        users, messages stored, messages inside the buffer window, oldest and newest."""
        at = now() if at is None else at
        row = await self.db.fetchrow(
            "SELECT count(*), count(DISTINCT user_id),"
            " coalesce(sum(CASE WHEN last_activity > $2 THEN 1 ELSE 0 END), 0)"
            " FROM sessions WHERE formation_id = $1",
            formation, at - self.idle_timeout)
        messages = await self.db.fetchrow(
            "SELECT count(*), coalesce(sum(CASE WHEN n > $2 THEN $2 ELSE n END), 0),"
            " min(first_at), max(last_at) FROM (SELECT count(*) AS n,"
            " min(m.created_at) AS first_at, max(m.created_at) AS last_at"
            " FROM session_messages m JOIN sessions s ON s.id = m.session_id"
            " WHERE s.formation_id = $1 GROUP BY m.session_id) AS per_session",
            formation, self.buffer_size)
        total = await self.db.fetchval(
            "SELECT count(*) FROM session_messages m JOIN sessions s ON s.id = m.session_id"
            " WHERE s.formation_id = $1", formation)
        return {"sessions": int(row[0]), "users": int(row[1]), "active_sessions": int(row[2]),
                "sessions_with_messages": int(messages[0]), "total_messages": int(total),
                "buffered_messages": int(messages[1]), "oldest_message_at": messages[2],
                "newest_message_at": messages[3]}
