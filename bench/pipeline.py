"""Messages through the whole engine (in-memory channel, offline responder), on PostgreSQL
and SQLite, beside raw primary-key lookups at the same concurrency in the same run.

    python -m bench.pipeline [--messages 6000] [--users 300] [--concurrency 8] [--json]

Half of the messages tell the assistant something (a memory write), half ask. The baseline is
`SELECT public_id FROM users WHERE id = $1`, on PostgreSQL prepared once on each of
`concurrency` pooled connections held throughout, on SQLite through the store's reader; half
of it runs before the messages and half after, so a neighbour's load burst hits both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import asyncpg

import memory
from adapters.inmemory import InMemoryChannel
from gateway.conversation.engine import Engine
from gateway.conversation.responders.offline import OfflineResponder
from gateway.runtime.logs import configure_logging
from identity import IdentifierParser, IdentityService, connect, store_for
from identity.cache import IdentityCache, make_backend
from identity.storage import Database, PostgresDatabase

ADMIN_URL = os.environ.get("THREADLINE_BENCH_POSTGRES_URL",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
RAW_LOOKUPS = 20_000  # per run, half before the messages and half after
KEY = b"kL3Z3fQ0m2nS4r8vYb1cD5eF7gH9iJ0kL2mN4oP6qR8="
TEXTS = ["my budget is $5,000", "what's my budget?", "hello", "I prefer short answers",
         "what do you know about me?", "remember that the demo is on Friday", "whats my color?",
         "my color is teal"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def raw_lookups(db: Database, count: int, concurrency: int) -> float:
    """Seconds for `count` primary-key lookups of random users, `concurrency` at a time."""
    ids = [row[0] for row in await db.fetch("SELECT id FROM users")]
    sql = "SELECT public_id FROM users WHERE id = $1"
    shares = [[random.choice(ids) for _ in range(count // concurrency + (i < count % concurrency))]
              for i in range(concurrency)]

    async def worker(picks: list[int]) -> None:
        if isinstance(db, PostgresDatabase):
            async with db.reading() as conn:
                lookup = await conn.prepare(sql)
                for pk in picks:
                    await lookup.fetchval(pk)
        else:
            for pk in picks:
                await db.fetchval(sql, pk)

    started = time.perf_counter()
    await asyncio.gather(*(worker(picks) for picks in shares))
    return time.perf_counter() - started


async def run_engine(url: str, messages: int, users: int, concurrency: int) -> dict[str, float]:
    db = await connect(url, pool_size=concurrency, schema=memory.SCHEMA)
    await db.migrate()
    cache = IdentityCache(make_backend("memory://", max_entries=100_000), ttl=3600)
    identity = IdentityService(store_for(db), cache, IdentifierParser(b"bench-secret-0123456789"))
    mem = memory.Memory.open(db, credentials_key=KEY)
    identity.store.on_merge(mem.merge_into)
    engine = Engine(identity, mem, OfflineResponder(), formation="bench")
    channel = InMemoryChannel(engine, "bench")
    names = [f"user{i}@bench.test" for i in range(users)]
    for name in names:  # first contact outside the timed part
        await channel.push(name, "hi")
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(messages):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            started = time.perf_counter()
            await channel.push(names[i % users], TEXTS[i % len(TEXTS)],
                               conversation=f"c{i % users}")
            latencies.append((time.perf_counter() - started) * 1000)

    raw_seconds = await raw_lookups(db, RAW_LOOKUPS // 2, concurrency)
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    raw_seconds += await raw_lookups(db, RAW_LOOKUPS - RAW_LOOKUPS // 2, concurrency)

    # Cached identity resolution, one at a time: context beside the baseline.
    resolves = 20_000
    t0 = time.perf_counter()
    for i in range(resolves):
        await identity.resolve("bench", names[i % users])
    raw_resolve = resolves / (time.perf_counter() - t0)
    await cache.close()
    await db.close()
    return {"msgs_per_s": messages / elapsed, "p50_ms": statistics.median(latencies),
            "p99_ms": percentile(latencies, 0.99), "raw_resolve_per_s": raw_resolve,
            "raw_pk_lookups_per_s": RAW_LOOKUPS / raw_seconds}


async def with_postgres(args: argparse.Namespace) -> dict[str, float]:
    name = f"threadline_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        base = ADMIN_URL.rsplit("/", 1)[0]
        return await run_engine(f"{base}/{name}", args.messages, args.users, args.concurrency)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    configure_logging("json", "error")
    print(f"pushing {args.messages} messages from {args.users} users, "
          f"{args.concurrency} at a time", file=sys.stderr)
    pg = await with_postgres(args)
    print("postgres done", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        lite = await run_engine(f"sqlite:///{Path(tmp) / 'bench.db'}", args.messages,
                                args.users, args.concurrency)
    print(f"{'store':<10}{'msgs/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'raw pk lookup/s':>18}"
          f"{'msgs / lookup':>15}{'cached resolve/s':>18}")
    for label, r in (("postgres", pg), ("sqlite", lite)):
        print(f"{label:<10}{r['msgs_per_s']:>10.0f}{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}"
              f"{r['raw_pk_lookups_per_s']:>18.0f}"
              f"{r['msgs_per_s'] / r['raw_pk_lookups_per_s']:>15.4f}"
              f"{r['raw_resolve_per_s']:>18.0f}")
    ratio = pg["msgs_per_s"] / pg["raw_pk_lookups_per_s"]
    missed = [name for name, ok in (("postgres msgs/s >= 0.2x raw pk lookups/s", ratio >= 0.2),
                                    ("postgres p99 <= 20 ms", pg["p99_ms"] <= 20)) if not ok]
    print(f"raw pk lookups: {args.concurrency} at a time, like the messages; cached resolve: one "
          "at a time (context)")
    print("targets: postgres msgs/s >= 0.2x raw pk lookups/s, p99 <= 20 ms"
          + (f"; MISSED: {', '.join(missed)}" if missed else "; met"))
    if args.json:
        print(json.dumps({
            "pg_msgs_per_s": round(pg["msgs_per_s"], 1), "pg_p50_ms": round(pg["p50_ms"], 3),
            "pg_p99_ms": round(pg["p99_ms"], 3),
            "pg_raw_pk_lookups_per_s": round(pg["raw_pk_lookups_per_s"], 1),
            "pg_msgs_per_raw_lookup": round(ratio, 4),
            "sqlite_msgs_per_s": round(lite["msgs_per_s"], 1),
            "sqlite_p50_ms": round(lite["p50_ms"], 3), "sqlite_p99_ms": round(lite["p99_ms"], 3),
            "sqlite_raw_pk_lookups_per_s": round(lite["raw_pk_lookups_per_s"], 1),
            "raw_resolve_per_s": round(pg["raw_resolve_per_s"], 1),
            "sqlite_raw_resolve_per_s": round(lite["raw_resolve_per_s"], 1),
            "missed": missed, "loadavg": round(os.getloadavg()[0], 2),
            "messages": args.messages, "users": args.users, "concurrency": args.concurrency,
        }))


if __name__ == "__main__":
    asyncio.run(main())
