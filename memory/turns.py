"""The reads and writes of one conversation turn, in as few round trips as the database
allows: every message pays for these, so they are written for speed.

One query loads what the assistant needs (facts, synopsis, working memory, the session
buffer, recent memories); one transaction stores the turn (on PostgreSQL one statement).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from identity.database import Database
from memory.types import Fact, Memory, SessionMessage, WorkingItem, new_id, now
from memory.user_memory import UserMemory

# Five reads and a count as one UNION ALL; each part yields (part, a, b, c, d, at).
_CONTEXT = """
SELECT 'f', kind, key, value, NULL, updated_at FROM facts WHERE user_id = $1
UNION ALL
SELECT 's', NULL, NULL, synopsis, NULL, updated_at FROM user_profiles WHERE user_id = $1
UNION ALL
SELECT * FROM (SELECT 'w', channel, role, content, NULL, created_at FROM working_memory
               WHERE user_id = $1 AND created_at >= $3 ORDER BY created_at DESC LIMIT $4) AS w
UNION ALL
SELECT * FROM (SELECT 'b', id, role, content, NULL, created_at FROM session_messages
               WHERE session_id = $2 ORDER BY seq DESC LIMIT $5) AS b
UNION ALL
SELECT * FROM (SELECT 'm', id, content, metadata, NULL, created_at FROM memories
               WHERE user_id = $1 ORDER BY created_at DESC LIMIT 5) AS m
UNION ALL
SELECT 'n', NULL, NULL, NULL, NULL, (SELECT count(*) FROM working_memory WHERE user_id = $1)
"""


@dataclass
class TurnContext:
    facts: list[Fact]
    synopsis: str
    working: list[WorkingItem]
    buffer: list[SessionMessage]
    recent: list[Memory]
    working_rows: int


async def load_context(db: Database, users: UserMemory, user_id: str, session_id: str,
                       buffer_size: int) -> TurnContext:
    rows = await db.fetch(_CONTEXT, user_id, session_id, now() - users.working_max_age,
                          users.working_limit, buffer_size)
    ctx = TurnContext([], "", [], [], [], 0)
    for part, a, b, c, _, at in rows:
        if part == "f":
            ctx.facts.append(Fact(a, b, c, at))
        elif part == "s":
            ctx.synopsis = c or ""
        elif part == "w":
            ctx.working.append(WorkingItem(a, b, c, at))
        elif part == "b":
            ctx.buffer.append(SessionMessage(a, b, c, at))
        elif part == "m":
            ctx.recent.append(Memory(a, b, json.loads(c), at))
        else:
            ctx.working_rows = int(at)
    ctx.facts.sort(key=lambda f: (f.kind, f.updated_at))
    ctx.working.reverse()
    ctx.buffer.reverse()
    return ctx


_STORE_PG = """
WITH m AS (
    INSERT INTO session_messages (id, session_id, seq, role, content, created_at)
    VALUES ($1, $3, $4, 'user', $5, $7), ($2, $3, $4 + 1, 'assistant', $6, $7)
), w AS (
    INSERT INTO working_memory (id, user_id, channel, role, content, created_at)
    VALUES ($8, $10, $11, 'user', $12, $7), ($9, $10, $11, 'assistant', $13, $7 + 0.000001)
)
UPDATE sessions SET last_activity = $7 WHERE id = $3
"""


async def store_plain_turn(db: Database, users: UserMemory, user_id: str, channel: str,
                           session_id: str, text: str, answer: str, working_rows: int) -> None:
    """Store a turn that changed no persistent memory (the common case)."""
    at, seq = now(), time.time_ns()
    args = (new_id("msg"), new_id("msg"), session_id, seq, text, answer, at,
            new_id("wm"), new_id("wm"), user_id, channel, text[:2000], answer[:2000])
    if db.dialect == "postgres":
        await db.execute(_STORE_PG, *args)
    else:
        async with db.transaction() as tx:
            await tx.execute(
                "INSERT INTO session_messages (id, session_id, seq, role, content, created_at)"
                " VALUES ($1, $3, $4, 'user', $5, $7), ($2, $3, $4 + 1, 'assistant', $6, $7)",
                *args[:7])
            await tx.execute(
                "INSERT INTO working_memory (id, user_id, channel, role, content, created_at)"
                " VALUES ($1, $3, $4, 'user', $5, $7),"
                " ($2, $3, $4, 'assistant', $6, $7 + 0.000001)",
                *args[7:], at)
            await tx.execute("UPDATE sessions SET last_activity = $2 WHERE id = $1",
                             session_id, at)
    if users.needs_trim(working_rows):
        await users.trim_working(user_id)
