"""The reads and writes of one conversation turn, in as few round trips as the database
allows: every message pays for these, so they are written for speed.

One query loads what the assistant needs (facts, synopsis, working memory, the session
buffer, recent memories, and on PostgreSQL the memories the message's words find); one
transaction stores the turn with everything it changed, its scheduled tasks and the
completion of the platform message's claim. On PostgreSQL a turn into an existing session
without tasks is one statement.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from identity.storage import Database
from memory.claims import COMPLETE, ClaimLostError, Claims, MessageKey
from memory.sessions import Sessions
from memory.tasks import Tasks
from memory.types import (
    Changes,
    Fact,
    Memory,
    Session,
    SessionMessage,
    Task,
    WorkingItem,
    new_id,
    now,
)
from memory.user_memory import UserMemory, build_synopsis, search_terms

# The conversation's active session, five reads and a count as one UNION ALL; each part
# yields (part, a, b, c, d, at).
_SESSION = ("SELECT id FROM sessions WHERE user_id = $1 AND channel = $2 AND conversation = $3"
            " AND last_activity > $4 ORDER BY last_activity DESC LIMIT 1")
_CONTEXT = f"""
SELECT 'f', kind, key, value, NULL, updated_at FROM facts WHERE user_id = $1
UNION ALL
SELECT * FROM (SELECT 'x', id, context, CAST(started_at AS TEXT), NULL, last_activity
               FROM sessions WHERE id = ({_SESSION})) AS x
UNION ALL
SELECT 's', NULL, NULL, synopsis, NULL, updated_at FROM user_profiles WHERE user_id = $1
UNION ALL
SELECT * FROM (SELECT 'w', channel, role, content, NULL, created_at FROM working_memory
               WHERE user_id = $1 AND created_at >= $5 ORDER BY created_at DESC LIMIT $6) AS w
UNION ALL
SELECT * FROM (SELECT 'b', id, role, content, NULL, created_at FROM session_messages
               WHERE session_id = ({_SESSION}) ORDER BY seq DESC LIMIT $7) AS b
UNION ALL
SELECT * FROM (SELECT 'm', id, content, metadata, NULL, created_at FROM memories
               WHERE user_id = $1 ORDER BY created_at DESC LIMIT 5) AS m
UNION ALL
SELECT 'n', NULL, NULL, NULL, NULL, (SELECT count(*) FROM working_memory WHERE user_id = $1)
"""
# On PostgreSQL the same query also ranks the user's memories by the words of the message
# ($8 the terms, $9 how many): recall then needs no round trip of its own.
_CONTEXT_PG = _CONTEXT + """UNION ALL
SELECT * FROM (SELECT 'q', id, content, metadata, NULL, created_at FROM memories
               WHERE $8::text IS NOT NULL AND user_id = $1
               AND search @@ to_tsquery('english', $8)
               ORDER BY ts_rank(search, to_tsquery('english', $8)) DESC, created_at DESC
               LIMIT $9) AS q
"""
# How many word matches a turn reads: what search_memories' ranking looks at.
_WORDS_DEPTH = 20


@dataclass
class TurnContext:
    facts: list[Fact]
    synopsis: str
    working: list[WorkingItem]
    buffer: list[SessionMessage]
    recent: list[Memory]
    working_rows: int
    # The user's memories ranked by the message's words, best first; None: not read here.
    by_words: list[Memory] | None = None


async def load_context(db: Database, users: UserMemory, sessions: Sessions, user_id: str,
                       formation: str, channel: str, conversation: str, text: str = ""
                       ) -> tuple[Session, TurnContext]:
    """The conversation's active session (or a new one, not stored yet: see
    `Sessions.plan`) and what the assistant needs to know, in one query; on PostgreSQL
    with the user's memories ranked by the words of `text`."""
    at = now()
    args = (user_id, channel, conversation, at - sessions.idle_timeout,
            at - users.working_max_age, users.working_limit, sessions.buffer_size)
    ctx = TurnContext([], "", [], [], [], 0)
    if db.dialect == "postgres":
        terms = search_terms(text)
        rows = await db.fetch(_CONTEXT_PG, *args, " | ".join(terms) if terms else None,
                              _WORDS_DEPTH)
        ctx.by_words = []
    else:
        rows = await db.fetch(_CONTEXT, *args)
    session: Session | None = None
    for part, a, b, c, _, stamp in rows:
        if part == "f":
            ctx.facts.append(Fact(a, b, c, stamp))
        elif part == "x":
            session = Session(a, user_id, formation, channel, conversation, float(c), stamp,
                              json.loads(b))
        elif part == "s":
            ctx.synopsis = c or ""
        elif part == "w":
            ctx.working.append(WorkingItem(a, b, c, stamp))
        elif part == "b":
            ctx.buffer.append(SessionMessage(a, b, c, stamp))
        elif part == "m":
            ctx.recent.append(Memory(a, b, json.loads(c), stamp))
        elif part == "q":
            assert ctx.by_words is not None
            ctx.by_words.append(Memory(a, b, json.loads(c), stamp))
        else:
            ctx.working_rows = int(stamp)
    ctx.facts.sort(key=lambda f: (f.kind, f.updated_at))
    ctx.working.reverse()
    ctx.buffer.reverse()
    if session is None:
        session = Session(new_id("sess"), user_id, formation, channel, conversation, at, at,
                          {}, True)
    return session, ctx


# A turn into an existing session, on PostgreSQL, is one statement: the messages, working
# memory, facts set and forgotten, memories and the synopsis go in as arrays (empty ones
# insert nothing). The claim's completion gates everything else: when the lease was taken
# over, nothing is written. The user's row is locked first, as a merge locks it first:
# foreign keys are checked only at the end of a statement, and a merge waiting on that
# check while this turn waits on a row the merge moved would deadlock. (A user merged away
# meanwhile then fails that check, and the engine answers as the kept user.)
_STORE_PG = """
WITH l AS (SELECT 1 FROM users WHERE public_id = $1 FOR KEY SHARE),
c AS ({claim}),
m AS (
    INSERT INTO session_messages (id, session_id, seq, role, content, created_at)
    SELECT v.id, $3, $4::bigint + v.n - 1, v.role, v.content, $5::float8
    FROM unnest($6::text[], $7::text[], $8::text[]) WITH ORDINALITY AS v(id, role, content, n)
    WHERE EXISTS (SELECT 1 FROM c)
), w AS (
    INSERT INTO working_memory (id, user_id, channel, role, content, created_at)
    SELECT v.id, $1, $2, v.role, left(v.content, 2000), $5::float8 + (v.n - 1) * 0.000001
    FROM unnest($9::text[], $7::text[], $8::text[]) WITH ORDINALITY AS v(id, role, content, n)
    WHERE EXISTS (SELECT 1 FROM c)
), s AS (
    UPDATE sessions SET last_activity = $5 WHERE id = $3 AND EXISTS (SELECT 1 FROM c)
), f AS (
    INSERT INTO facts (user_id, kind, key, value, updated_at, source)
    SELECT $1, v.kind, v.key, v.value, $5, $10
    FROM unnest($11::text[], $12::text[], $13::text[]) AS v(kind, key, value)
    WHERE EXISTS (SELECT 1 FROM c)
    ON CONFLICT (user_id, kind, key) DO UPDATE SET value = excluded.value,
        updated_at = excluded.updated_at, source = excluded.source
), d AS (
    DELETE FROM facts WHERE user_id = $1 AND kind = 'fact' AND key = ANY($14::text[])
    AND EXISTS (SELECT 1 FROM c)
), r AS (
    INSERT INTO memories (id, user_id, content, metadata, created_at, embedding,
                          embedding_model)
    SELECT v.id, $1, v.content, $15, v.at, v.vector,
           CASE WHEN v.vector IS NULL THEN NULL ELSE $16 END
    FROM unnest($17::text[], $18::text[], $19::float8[], $20::bytea[])
         AS v(id, content, at, vector)
    WHERE EXISTS (SELECT 1 FROM c)
), p AS (
    INSERT INTO user_profiles (user_id, synopsis, updated_at)
    SELECT $1, $21, $5 WHERE $21::text IS NOT NULL AND EXISTS (SELECT 1 FROM c)
    ON CONFLICT (user_id) DO UPDATE SET synopsis = excluded.synopsis,
        updated_at = excluded.updated_at
)
SELECT count(*) FROM c
"""
_STORE_PG_UNCLAIMED = _STORE_PG.format(claim="SELECT count(*) FROM l")
# The claim's parameters follow the turn's: $1..$6 of COMPLETE become $22..$27; reading
# `l` first takes the user's lock before the claim's row.
_STORE_PG_CLAIMED = _STORE_PG.format(claim=re.sub(
    r"\$(\d+)", lambda m: f"${int(m[1]) + 21}",
    COMPLETE.replace(" RETURNING", " AND (SELECT count(*) FROM l) >= 0 RETURNING")))


@dataclass(frozen=True)
class Completion:
    """The claim a turn completes, and the reply kept with it."""

    key: MessageKey
    token: str
    reply: dict[str, Any]
    sent: bool


@dataclass
class TurnWrite:
    """Everything one turn writes. `answer` None: the responder failed, and its apology is
    said but not kept (the user's message and what it asked to remember are)."""

    user_id: str
    session: Session
    text: str
    answer: str | None
    changes: Changes
    tasks: list[Task]
    loaded: TurnContext
    completion: Completion | None = None
    source: dict[str, Any] | None = None  # provenance kept with facts and notes


class Turns:
    """Load what a turn needs; store all a turn writes in one transaction, or nothing."""

    def __init__(self, users: UserMemory, sessions: Sessions, tasks: Tasks,
                 claims: Claims) -> None:
        self.db = users.db
        self.users, self.sessions, self.tasks, self.claims = users, sessions, tasks, claims

    async def open(self, user_id: str, formation: str, channel: str, conversation: str,
                   text: str = "") -> tuple[Session, TurnContext]:
        """The session a turn goes into, and the context it needs (with the memories
        `text` names, where the database can say at once), in one round trip."""
        return await load_context(self.db, self.users, self.sessions, user_id, formation,
                                  channel, conversation, text)

    async def store(self, turn: TurnWrite) -> Session:
        """Commit the turn; returns the session it went into (another turn may have opened
        the conversation's session first). Raises ClaimLostError, writing nothing, when
        another process completed the same message first."""
        session = turn.session
        if session.is_new or turn.tasks:
            session = await self._store(turn)
        elif self.db.dialect == "postgres":
            await self._store_pg(turn)
        elif not turn.changes.persistent and turn.answer is not None:
            await self._store_plain_sqlite(turn)
        else:
            session = await self._store(turn)
        if self.users.needs_trim(turn.loaded.working_rows):
            await self.users.trim_working(turn.user_id)
        return session

    async def _store_pg(self, turn: TurnWrite) -> None:
        """A turn into an existing session, without tasks, as one statement."""
        at, changes, users = now(), turn.changes, self.users
        said = [("user", turn.text)]
        if turn.answer is not None:
            said.append(("assistant", turn.answer))
        roles, contents = [r for r, _ in said], [c for _, c in said]
        # What the turn sets, later wins, and what it forgets wins over what it sets (as
        # when they were separate statements); one row may not be changed twice in one.
        setting = {("fact", k): v for k, v in changes.facts.items()
                   if k not in changes.forget}
        setting |= {("preference", v.lower()[:100]): v for v in changes.preferences}
        facts = {(f.kind, f.key): f for f in turn.loaded.facts}
        for key in changes.forget:
            facts.pop(("fact", key), None)
        for (kind, key), value in setting.items():
            facts[(kind, key)] = Fact(kind, key, value, at)
        vectors = await users.embed(changes.memories)  # the model answers before the write
        added = [Memory(new_id("mem"), content, {"source": "conversation", **(turn.source or {})},
                        at + i * 1e-6) for i, content in enumerate(changes.memories)]
        synopsis = None
        if changes.persistent:
            recent = [*reversed(added), *turn.loaded.recent][:5]
            synopsis = build_synopsis(sorted(facts.values(), key=lambda f: (f.kind, f.updated_at)),
                                      recent)
        args: tuple[Any, ...] = (
            turn.user_id, turn.session.channel, turn.session.id, time.time_ns(), at,
            [new_id("msg") for _ in said], roles, contents, [new_id("wm") for _ in said],
            json.dumps(turn.source) if turn.source else None,
            [k for k, _ in setting], [k for _, k in setting], list(setting.values()),
            list(changes.forget),
            json.dumps(added[0].metadata) if added else "{}",
            users.embedder.name if users.embedder else None,
            [m.id for m in added], [m.content for m in added], [m.created_at for m in added],
            vectors, synopsis)
        done = turn.completion
        if done is None:
            await self.db.fetchval(_STORE_PG_UNCLAIMED, *args)
            return
        status = "sent" if done.sent else "answered"
        args += (*done.key.args, done.token, status, json.dumps(done.reply))
        if not await self.db.fetchval(_STORE_PG_CLAIMED, *args):
            raise ClaimLostError(f"message {done.key.message_id} was answered by another "
                                 "process")

    async def _store_plain_sqlite(self, turn: TurnWrite) -> None:
        """The same plain turn as a few multi-row statements in one transaction."""
        at, seq, session, answer = now(), time.time_ns(), turn.session, turn.answer
        assert answer is not None
        async with self.db.transaction() as tx:
            done = turn.completion
            if done is not None:
                await self.claims.complete(tx, done.key, done.token, done.reply, sent=done.sent)
            await tx.execute(
                "INSERT INTO session_messages (id, session_id, seq, role, content, created_at)"
                " VALUES ($1, $3, $4, 'user', $5, $7), ($2, $3, $4 + 1, 'assistant', $6, $7)",
                new_id("msg"), new_id("msg"), session.id, seq, turn.text, answer, at)
            await tx.execute(
                "INSERT INTO working_memory (id, user_id, channel, role, content, created_at)"
                " VALUES ($1, $3, $4, 'user', $5, $7),"
                " ($2, $3, $4, 'assistant', $6, $7 + 0.000001)",
                new_id("wm"), new_id("wm"), turn.user_id, session.channel, turn.text[:2000],
                answer[:2000], at)
            await tx.execute("UPDATE sessions SET last_activity = $2 WHERE id = $1",
                             session.id, at)

    async def _store(self, turn: TurnWrite) -> Session:
        users, changes, user_id = self.users, turn.changes, turn.user_id
        said = [("user", turn.text)]
        if turn.answer is not None:
            said.append(("assistant", turn.answer))
        facts = {(f.kind, f.key): f for f in turn.loaded.facts}
        recent = list(turn.loaded.recent)
        vectors = await users.embed(changes.memories)  # before the transaction opens
        async with self.db.transaction() as tx:
            session = turn.session
            if session.is_new:
                session = await self.sessions.insert(tx, session)
            if turn.completion is not None:
                done = turn.completion
                reply = {**done.reply, "session_id": session.id}
                await self.claims.complete(tx, done.key, done.token, reply, sent=done.sent)
            for key, value in changes.facts.items():
                await users.set_fact(user_id, key, value, q=tx, source=turn.source)
                facts[("fact", key)] = Fact("fact", key, value, now())
            for key in changes.forget:
                await users.forget_fact(user_id, key, q=tx)
                facts.pop(("fact", key), None)
            for value in changes.preferences:
                key = value.lower()[:100]
                await users.set_fact(user_id, key, value, kind="preference", q=tx,
                                     source=turn.source)
                facts[("preference", key)] = Fact("preference", key, value, now())
            for content, vector in zip(changes.memories, vectors, strict=True):
                metadata = {"source": "conversation", **(turn.source or {})}
                recent.insert(0, await users.add_memory(user_id, content, metadata, q=tx,
                                                        vector=vector))
            if changes.persistent:
                ordered = sorted(facts.values(), key=lambda f: (f.kind, f.updated_at))
                await users.save_synopsis(user_id, build_synopsis(ordered, recent[:5]), q=tx)
            await self.sessions.add_messages(session.id, said, q=tx)
            await self.sessions.touch(session.id, q=tx)
            await users.remember_turn(user_id, session.channel, said, q=tx, trim=False)
            for task in turn.tasks:
                await self.tasks.insert(task, q=tx)
        return session
