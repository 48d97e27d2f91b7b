"""What a user shares across every identifier: facts, preferences, memories, synopsis,
working memory. Everything here is keyed by the public user id."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import OrderedDict
from typing import Any, Literal

import numpy as np
import structlog

from identity.storage import Database
from memory.embeddings import Embedder, EmbeddingError, from_bytes, to_bytes
from memory.types import Fact, Memory, NotFoundError, WorkingItem, new_id, now

log = structlog.get_logger("threadline.memory")

# Anything with execute/fetch/fetchrow/fetchval taking $n placeholders: the Database,
# a transaction or a connection. None means "the database, on its own".
Query = Any

# Search terms: letters and digits only, so no query can speak the search syntax.
_TERM = re.compile(r"[^\W_]+")
# What the best full-text match adds to a cosine similarity in hybrid ranking.
_WORDS_WEIGHT = 0.05
Mode = Literal["fts", "vector", "hybrid"]
# PostgreSQL's full-text ranking of a user's memories ($1 user, $2 terms joined by " | ",
# $3 how many); `memory.turns` reads it with a turn's context.
WORDS_PG = ("SELECT id, content, metadata, created_at FROM memories"
            " WHERE user_id = $1 AND search @@ to_tsquery('english', $2)"
            " ORDER BY ts_rank(search, to_tsquery('english', $2)) DESC, created_at DESC"
            " LIMIT $3")


class UserMemory:
    def __init__(self, db: Database, *, working_limit: int = 20,
                 working_max_age: float = 24 * 3600, embedder: Embedder | None = None) -> None:
        self.db = db
        self.working_limit = working_limit
        self.working_max_age = working_max_age
        self.embedder = embedder
        self._quiet_until = 0.0  # embedder failures: one log line a minute, not one a turn
        self._vectors_cache = VectorCache()

    # Facts and preferences (persistent memory as key/value).

    async def set_fact(self, user_id: str, key: str, value: str, kind: str = "fact", *,
                       q: Query = None, source: dict[str, Any] | None = None) -> None:
        """`source`: where it was learnt ({"channel", "message_id", "at", "by"})."""
        await (q or self.db).execute(
            "INSERT INTO facts (user_id, kind, key, value, updated_at, source)"
            " VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (user_id, kind, key) DO UPDATE SET value = excluded.value,"
            " updated_at = excluded.updated_at, source = excluded.source",
            user_id, kind, key, value, now(), json.dumps(source) if source else None,
        )

    async def fact_sources(self, user_id: str) -> dict[tuple[str, str], dict[str, Any]]:
        """Where each fact came from, by (kind, key), for those that say."""
        rows = await self.db.fetch(
            "SELECT kind, key, source FROM facts WHERE user_id = $1 AND source IS NOT NULL",
            user_id)
        return {(r[0], r[1]): json.loads(r[2]) for r in rows}

    async def get_fact(self, user_id: str, key: str, kind: str = "fact") -> Fact | None:
        row = await self.db.fetchrow(
            "SELECT kind, key, value, updated_at FROM facts"
            " WHERE user_id = $1 AND kind = $2 AND key = $3",
            user_id, kind, key,
        )
        return Fact(*row) if row else None

    async def facts(self, user_id: str, kind: str | None = None, *, q: Query = None) -> list[Fact]:
        rows = await (q or self.db).fetch(
            "SELECT kind, key, value, updated_at FROM facts WHERE user_id = $1"
            " ORDER BY kind, updated_at",
            user_id,
        )
        return [Fact(*r) for r in rows if kind is None or r[0] == kind]

    async def forget_fact(self, user_id: str, key: str, kind: str = "fact", *,
                          q: Query = None) -> bool:
        sql = "DELETE FROM facts WHERE user_id = $1 AND kind = $2 AND key = $3 RETURNING key"
        if q is not None:
            return await q.fetchval(sql, user_id, kind, key) is not None
        async with self.db.transaction() as tx:
            return await tx.fetchval(sql, user_id, kind, key) is not None

    # Free-text memories.

    async def add_memory(self, user_id: str, content: str,
                         metadata: dict[str, Any] | None = None, *, q: Query = None,
                         vector: bytes | None = None) -> Memory:
        """Inside a transaction (`q`), pass the `vector` from `embed` made beforehand: no
        model call runs while a transaction is open."""
        memory = Memory(new_id("mem"), content, metadata or {}, now())
        if q is None and vector is None:
            vector = (await self.embed([content]))[0]
        await (q or self.db).execute(
            "INSERT INTO memories (id, user_id, content, metadata, created_at, embedding,"
            " embedding_model) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            memory.id, user_id, memory.content, json.dumps(memory.metadata), memory.created_at,
            vector, self.embedder.name if vector is not None and self.embedder else None,
        )
        return memory

    async def embed(self, texts: list[str]) -> list[bytes | None]:
        """Stored forms of the texts' vectors; Nones without an embedder or when it fails
        (the memory is still kept, found by words, and embedded later by `embed_missing`)."""
        if self.embedder is None or not texts:
            return [None] * len(texts)
        try:
            return [to_bytes(v) for v in await self.embedder.embed(texts)]
        except EmbeddingError as exc:
            self._embedder_failed(exc)
            return [None] * len(texts)

    def _embedder_failed(self, exc: EmbeddingError) -> None:
        if time.monotonic() >= self._quiet_until:
            self._quiet_until = time.monotonic() + 60
            log.warning("embedder failed; recall falls back to full-text search", error=str(exc))

    async def embed_missing(self, batch: int = 64) -> int:
        """Embed memories stored without a vector of the current model (made before
        embeddings were configured, while the embedder was down, or by another model).
        Returns how many were embedded."""
        if self.embedder is None:
            return 0
        done = 0
        while True:
            rows = await self.db.fetch(
                "SELECT id, content FROM memories WHERE embedding IS NULL"
                " OR embedding_model IS NULL OR embedding_model <> $1 ORDER BY id LIMIT $2",
                self.embedder.name, batch)
            if not rows:
                return done
            vectors = await self.embed([r[1] for r in rows])
            if vectors[0] is None:
                return done  # the embedder is down: try again at the next start
            async with self.db.transaction() as tx:
                for (memory_id, _), vector in zip(rows, vectors, strict=True):
                    await tx.execute("UPDATE memories SET embedding = $2, embedding_model = $3"
                                     " WHERE id = $1", memory_id, vector, self.embedder.name)
            done += len(rows)

    async def memories(self, user_id: str, limit: int = 50, *, q: Query = None) -> list[Memory]:
        rows = await (q or self.db).fetch(
            "SELECT id, content, metadata, created_at FROM memories WHERE user_id = $1"
            " ORDER BY created_at DESC LIMIT $2",
            user_id, limit,
        )
        return [Memory(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]

    async def search_memories(self, user_id: str, query: str, limit: int = 5, *,
                              mode: Mode = "hybrid",
                              by_words: list[Memory] | None = None) -> list[Memory]:
        """The user's memories most relevant to `query`, best first. Only this user's
        memories are ever searched.

        Full-text: SQLite FTS5 ranked by bm25, PostgreSQL full-text search ranked by
        ts_rank. With an embedder, also by cosine similarity of the query's vector to each
        memory's, and the two rankings fused (`hybrid`, the default); if the embedder
        fails, full-text alone. `by_words`: the full-text ranking, when the caller read it
        already (a turn reads it with its context)."""
        depth = max(limit * 4, 20)  # each ranking offers more than it keeps
        by_meaning: list[tuple[Memory, float]] = []
        if mode == "fts" or self.embedder is None:
            if by_words is None:
                by_words = await self._search_words(user_id, query, depth)
        else:
            # Embedding the question is most of the time: the database reads (the word
            # ranking and the user's vectors) run while the model works.
            words, vectors, asked = await asyncio.gather(
                _given([]) if mode == "vector" else _given(by_words) if by_words is not None
                else self._search_words(user_id, query, depth),
                self._vectors(user_id), self.embed([query]))
            by_words = words
            if asked[0] is not None and vectors.memories:
                by_meaning = vectors.rank(asked[0], depth)
        if not by_words:
            return [m for m, _ in by_meaning[:limit]]
        if not by_meaning:
            return by_words[:limit]
        # Hybrid: the cosine similarity, plus a small bonus by full-text rank (the top word
        # match gets _WORDS_WEIGHT). Similarities of close candidates differ by a few
        # hundredths, so the bonus breaks near-ties towards shared words without letting a
        # chance word match (a common verb) outrank a clearly closer meaning.
        scores = {m.id: similarity for m, similarity in by_meaning}
        found = {m.id: m for m, _ in by_meaning}
        floor = min(scores.values())
        for rank, memory in enumerate(by_words):
            bonus = _WORDS_WEIGHT * (1 - rank / len(by_words))
            scores[memory.id] = scores.get(memory.id, floor) + bonus
            found[memory.id] = memory
        best = sorted(scores, key=lambda i: -scores[i])[:limit]
        return [found[i] for i in best]

    async def _search_words(self, user_id: str, query: str, limit: int) -> list[Memory]:
        words = search_terms(query)
        if not words:
            return []
        if self.db.dialect == "postgres":
            rows = await self.db.fetch(WORDS_PG, user_id, " | ".join(words), limit)
        else:
            rows = await self.db.fetch(
                "SELECT m.id, m.content, m.metadata, m.created_at FROM memories_fts"
                " JOIN memories AS m ON m.rowid = memories_fts.rowid"
                " WHERE memories_fts MATCH $2 AND m.user_id = $1"
                " ORDER BY bm25(memories_fts), m.created_at DESC LIMIT $3",
                user_id, " OR ".join(f'"{w}"' for w in words), limit)
        return [Memory(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]

    def forget_vectors(self, user_id: str) -> None:
        self._vectors_cache.drop(user_id)

    async def _vectors(self, user_id: str) -> UserVectors:
        """The user's memories embedded by the current model, with their vectors.

        Kept in process between recalls (a thousand memories are 1.5 MB to read): the
        cheap stamp (how many, the newest, the sum of their times) changes with any
        memory added, embedded or deleted, here or in another process."""
        assert self.embedder is not None
        row = await self.db.fetchrow(
            "SELECT count(*), max(created_at), sum(created_at) FROM memories"
            " WHERE user_id = $1 AND embedding_model = $2", user_id, self.embedder.name)
        stamp = (int(row[0]), row[1], row[2])
        cached = self._vectors_cache.get(user_id, stamp)
        if cached is not None:
            return cached
        rows = await self.db.fetch(
            "SELECT id, content, metadata, created_at, embedding FROM memories"
            " WHERE user_id = $1 AND embedding_model = $2", user_id, self.embedder.name)
        found = UserVectors([Memory(r[0], r[1], json.loads(r[2]), r[3]) for r in rows],
                            from_bytes([r[4] for r in rows]) if rows else None)
        self._vectors_cache.put(user_id, stamp, found)
        return found

    async def delete_memory(self, user_id: str, memory_id: str) -> None:
        async with self.db.transaction() as tx:
            found = await tx.fetchval(
                "DELETE FROM memories WHERE user_id = $1 AND id = $2 RETURNING id",
                user_id, memory_id,
            )
        if found is None:
            raise NotFoundError("memory", memory_id)

    # The synopsis: a short profile, rebuilt whenever persistent memory changes.

    async def synopsis(self, user_id: str, *, q: Query = None) -> str:
        return await (q or self.db).fetchval(
            "SELECT synopsis FROM user_profiles WHERE user_id = $1", user_id
        ) or ""

    async def refresh_synopsis(self, user_id: str, *, q: Query = None) -> str:
        text = build_synopsis(await self.facts(user_id, q=q),
                              await self.memories(user_id, limit=5, q=q))
        await self.save_synopsis(user_id, text, q=q)
        return text

    async def save_synopsis(self, user_id: str, text: str, *, q: Query = None) -> None:
        await (q or self.db).execute(
            "INSERT INTO user_profiles (user_id, synopsis, updated_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (user_id) DO UPDATE SET synopsis = excluded.synopsis,"
            " updated_at = excluded.updated_at",
            user_id, text, now(),
        )

    # Working memory: recent turns from every channel, bounded in count and age.

    async def remember_turn(self, user_id: str, channel: str,
                            turns: list[tuple[str, str]], *, q: Query = None,
                            trim: bool = True) -> None:
        """Add (role, content) turns and drop what is past the count or age bound."""
        if q is None:
            async with self.db.transaction() as tx:
                return await self.remember_turn(user_id, channel, turns, q=tx, trim=trim)
        at = now()
        for offset, (role, content) in enumerate(turns):
            await q.execute(
                "INSERT INTO working_memory (id, user_id, channel, role, content, created_at)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                new_id("wm"), user_id, channel, role, content[:2000], at + offset * 1e-6,
            )
        if trim:
            await self.trim_working(user_id, q=q, at=at)

    def needs_trim(self, rows: int, adding: int = 2) -> bool:
        """Trim in batches of ten, not on every turn."""
        return rows + adding > self.working_limit + 10

    async def trim_working(self, user_id: str, *, q: Query = None,
                           at: float | None = None) -> None:
        """Drop working memory past the count or age bound."""
        at = now() if at is None else at
        # LIMIT -1 is SQLite's "no limit"; PostgreSQL spells it LIMIT ALL.
        no_limit = "-1" if self.db.dialect == "sqlite" else "ALL"
        await (q or self.db).execute(
            "DELETE FROM working_memory WHERE user_id = $1 AND (created_at < $2 OR id IN ("
            " SELECT id FROM working_memory WHERE user_id = $1"
            f" ORDER BY created_at DESC LIMIT {no_limit} OFFSET $3))",
            user_id, at - self.working_max_age, self.working_limit,
        )

    async def working(self, user_id: str, *, q: Query = None) -> list[WorkingItem]:
        rows = await (q or self.db).fetch(
            "SELECT channel, role, content, created_at FROM working_memory"
            " WHERE user_id = $1 AND created_at >= $2 ORDER BY created_at DESC LIMIT $3",
            user_id, now() - self.working_max_age, self.working_limit,
        )
        return [WorkingItem(*r) for r in reversed(rows)]


_STOP_WORDS = {"the", "a", "an", "is", "are", "my", "me", "i", "what", "whats", "what's", "do",
               "you", "to", "of", "and", "in", "on", "for", "it", "that", "about", "know"}


def build_synopsis(facts: list[Fact], memories: list[Memory]) -> str:
    """A short profile, in plain sentences, from what the user has told the assistant."""
    parts = []
    named = [f for f in facts if f.kind == "fact" and f.key == "name"]
    if named:
        parts.append(f"Goes by {named[0].value}.")
    others = [f for f in facts if f.kind == "fact" and f.key != "name"]
    if others:
        parts.append("; ".join(f"{f.key}: {f.value}" for f in others[:12]) + ".")
    prefs = [f.value for f in facts if f.kind == "preference"]
    if prefs:
        parts.append("Prefers " + "; ".join(prefs[:6]) + ".")
    if memories:
        parts.append("Notes: " + "; ".join(m.content for m in memories[:5]) + ".")
    return " ".join(parts)[:1000]


def search_terms(query: str) -> list[str]:
    """The words of a question that full-text search looks for (at most twelve)."""
    return [w for w in dict.fromkeys(_TERM.findall(query.lower())) if w not in _STOP_WORDS][:12]


async def _given(memories: list[Memory]) -> list[Memory]:
    return memories


class UserVectors:
    """One user's memories and their vectors as one matrix (row i is memories[i])."""

    def __init__(self, memories: list[Memory], matrix: np.ndarray | None) -> None:
        self.memories, self.matrix = memories, matrix
        self.size = (0 if matrix is None else matrix.nbytes) + sum(
            200 + len(m.content) for m in memories)

    def rank(self, asked: bytes, limit: int) -> list[tuple[Memory, float]]:
        """Cosine similarity over the user's own vectors, computed here: a thousand
        memories rank in well under a millisecond, with no database extension."""
        assert self.matrix is not None
        similarity = self.matrix @ from_bytes([asked])[0]
        count = min(limit, len(self.memories))
        top = np.argpartition(-similarity, count - 1)[:count]
        top = top[np.argsort(-similarity[top])]
        return [(self.memories[i], float(similarity[i])) for i in top]


class VectorCache:
    """Users' vectors by user id, least recently used out first, bounded in bytes."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes, self.size = max_bytes, 0
        self._entries: OrderedDict[str, tuple[Any, UserVectors]] = OrderedDict()

    def get(self, user_id: str, stamp: Any) -> UserVectors | None:
        entry = self._entries.get(user_id)
        if entry is None or entry[0] != stamp:
            return None
        self._entries.move_to_end(user_id)
        return entry[1]

    def put(self, user_id: str, stamp: Any, found: UserVectors) -> None:
        self.drop(user_id)
        if found.size > self.max_bytes:
            return
        self._entries[user_id] = (stamp, found)
        self.size += found.size
        while self.size > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.size -= dropped.size

    def drop(self, user_id: str) -> None:
        entry = self._entries.pop(user_id, None)
        if entry is not None:
            self.size -= entry[1].size
