"""A user's memory as one document (export), and removed everywhere (erase).

Export holds what the person told and was told: facts with where they were learnt,
memories, the synopsis, working memory, sessions with their messages, scheduled tasks and
credential metadata (never the secret, never its preview). Times are ISO 8601 UTC.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from identity.storage import Database


def iso(at: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC (`2026-07-13T09:30:00.123456Z`): the one time format
    of exports and the API."""
    if at is None:
        return None
    return datetime.fromtimestamp(float(at), UTC).isoformat(timespec="microseconds").replace(
        "+00:00", "Z")


def iso_at(record: Any) -> Any:
    """A stored provenance record ({"channel", "message_id", "at", "by"}, a fact's source or
    a memory's metadata) with its time, stored as Unix seconds, in ISO 8601 UTC."""
    if isinstance(record, dict) and isinstance(record.get("at"), int | float):
        return {**record, "at": iso(record["at"])}
    return record


def parse_iso(text: str) -> datetime:
    """An ISO 8601 time as given by a caller (UTC when it names no zone); ValueError when
    it is not one."""
    when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _json(text: str | None) -> Any:
    return json.loads(text) if text else None


async def export_user(db: Database, user_id: str) -> dict[str, Any]:
    facts = await db.fetch(
        "SELECT kind, key, value, updated_at, source FROM facts WHERE user_id = $1"
        " ORDER BY kind, key", user_id)
    memories = await db.fetch(
        "SELECT id, content, metadata, created_at FROM memories WHERE user_id = $1"
        " ORDER BY created_at", user_id)
    profile = await db.fetchrow(
        "SELECT synopsis, updated_at FROM user_profiles WHERE user_id = $1", user_id)
    working = await db.fetch(
        "SELECT id, channel, role, content, created_at FROM working_memory WHERE user_id = $1"
        " ORDER BY created_at", user_id)
    credentials = await db.fetch(
        "SELECT id, service, name, created_at FROM credentials WHERE user_id = $1"
        " ORDER BY created_at", user_id)
    tasks = await db.fetch(
        "SELECT id, kind, schedule, message, title, status, next_run, last_run, created_at,"
        " channel, conversation, attempts, last_error, delivered_via FROM scheduled_tasks"
        " WHERE user_id = $1 ORDER BY created_at", user_id)
    sessions = await db.fetch(
        "SELECT id, channel, conversation, context, started_at, last_activity FROM sessions"
        " WHERE user_id = $1 ORDER BY started_at", user_id)
    messages: dict[str, list[dict[str, Any]]] = {s[0]: [] for s in sessions}
    for m in await db.fetch(
            "SELECT m.session_id, m.seq, m.role, m.content, m.created_at FROM session_messages m"
            " JOIN sessions s ON s.id = m.session_id WHERE s.user_id = $1"
            " ORDER BY m.session_id, m.seq", user_id):
        messages[m[0]].append({"seq": int(m[1]), "role": m[2], "content": m[3],
                               "created_at": iso(m[4])})
    return {
        "facts": [{"kind": f[0], "key": f[1], "value": f[2], "updated_at": iso(f[3]),
                   "source": iso_at(_json(f[4]))} for f in facts],
        "memories": [{"id": m[0], "content": m[1], "metadata": iso_at(_json(m[2]) or {}),
                      "created_at": iso(m[3])} for m in memories],
        "synopsis": None if profile is None else {"text": profile[0],
                                                  "updated_at": iso(profile[1])},
        "working_memory": [{"id": w[0], "channel": w[1], "role": w[2], "content": w[3],
                            "created_at": iso(w[4])} for w in working],
        "sessions": [{"session_id": s[0], "channel": s[1], "conversation": s[2],
                      "context": _json(s[3]) or {}, "started_at": iso(s[4]),
                      "last_activity": iso(s[5]), "messages": messages[s[0]]}
                     for s in sessions],
        "scheduled_tasks": [{"id": t[0], "kind": t[1], "schedule": t[2], "message": t[3],
                             "title": t[4], "status": t[5], "next_run": iso(t[6]),
                             "last_run": iso(t[7]), "created_at": iso(t[8]),
                             "channel": t[9], "conversation": t[10], "attempts": t[11],
                             "last_error": t[12], "delivered_via": t[13]} for t in tasks],
        "credentials": [{"id": c[0], "service": c[1], "name": c[2],
                         "created_at": iso(c[3])} for c in credentials],
    }


# Each user table, and what its rows are called in an erasure's counts. Messages go with
# their sessions (a foreign key cascade), counted first.
_ERASE = (
    ("facts", "facts"), ("memories", "memories"), ("working_memory", "working_memory"),
    ("user_profiles", "synopses"), ("credentials", "credentials"),
    ("scheduled_tasks", "scheduled_tasks"), ("sessions", "sessions"),
)


async def erase_user(tx: Any, user_id: str, keys: list[str], *,
                     dialect: str) -> dict[str, int]:
    """Inside the erasure's transaction. Claims of platform messages stay (so a redelivered
    message is never answered again), but lose the reply kept with them where it names
    the user, and the message kept in the inbox where it names one of their identifiers."""
    counts = {"messages": int(await tx.fetchval(
        "SELECT count(*) FROM session_messages WHERE session_id IN"
        " (SELECT id FROM sessions WHERE user_id = $1)", user_id) or 0)}
    for table, name in _ERASE:
        rows = await tx.fetch(f"DELETE FROM {table} WHERE user_id = $1 RETURNING 1", user_id)
        counts[name] = len(rows)
    contains = "strpos(reply, $1) > 0" if dialect == "postgres" else "instr(reply, $1) > 0"
    replies = await tx.fetch(
        "UPDATE processed_messages SET reply = NULL, status = 'sent'"
        f" WHERE reply IS NOT NULL AND {contains} RETURNING 1", user_id)
    counts["stored_replies"] = len(replies)
    kept = 0
    find = "strpos(lower(payload), lower($1)) > 0" if dialect == "postgres" else \
        "instr(lower(payload), lower($1)) > 0"
    for key in [user_id, *keys]:
        kept += len(await tx.fetch(
            "UPDATE processed_messages SET payload = NULL, status = 'sent'"
            f" WHERE payload IS NOT NULL AND {find} RETURNING 1", key))
    counts["inbox_messages"] = kept
    if dialect == "sqlite":  # rewrite the full-text index so deleted words leave it too
        await tx.execute("INSERT INTO memories_fts (memories_fts) VALUES ('optimize')")
    return counts
