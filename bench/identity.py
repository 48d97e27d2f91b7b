"""Identity resolution with a million identifiers on PostgreSQL, beside raw baselines.

    python -m bench.identity [--json] [--url URL] [--identifiers 1000000] [--samples 20000]

Loads N users with one email identifier each into a throwaway database, then measures cached
resolve against a bare aiocache get, uncached resolve against a prepared primary-key lookup,
new-user creation against the raw INSERTs, and resident memory once more identifiers than the
cache bound have been resolved. --samples counts cached samples; uncached ones, each a database
round trip, are a quarter as many.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from aiocache import SimpleMemoryCache

from gateway.runtime.logs import configure_logging
from identity import IdentifierParser, IdentityService, connect, store_for
from identity.cache import BoundedMemoryCache, IdentityCache, make_backend
from identity.storage import PostgresDatabase
from identity.store import new_public_id

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
FORMATION = "bench"
SECRET = b"bench-secret-0123456789"
CACHE_BOUND = 100_000  # the default of settings.cache_max_entries
CACHED_KEYS = 10_000  # distinct identifiers the cached samples cycle through
CONCURRENCY = 32
CREATES = 10_000
RSS_RESOLVES = 200_000
LOAD_BATCH = 100_000
BLOCK = 500  # samples per turn when a measure and its baselines take turns
LONG = 600.0  # seconds; the pool's 30 s command timeout is too short for bulk loading

# Rows are made on the server, none cross the wire. The public id is a random UUID's 16 bytes in
# URL-safe base64, 22 characters: the shape new_public_id() gives, at a fraction of the cost.
_LOAD = """
WITH new AS (
    INSERT INTO users (formation_id, public_id)
    SELECT $1, 'usr_' || translate(rtrim(encode(uuid_send(gen_random_uuid()), 'base64'), '='),
                                   '+/', '-_')
    FROM generate_series(1, $2::int)
    RETURNING id
)
INSERT INTO user_identifiers (formation_id, user_id, identifier, type)
SELECT $1, id, 'bench' || id || '@example.com', 'email' FROM new
"""

Call = Callable[[Any], Awaitable[Any]]


def email(row_id: int) -> str:
    """The identifier the loader gave user `row_id`."""
    return f"bench{row_id}@example.com"


def pct(ns: list[int], q: float) -> float:
    """The q-quantile of nanosecond timings, in microseconds."""
    ordered = sorted(ns)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def make_service(db: PostgresDatabase) -> IdentityService:
    """Wired as gateway/runtime.py does, with the default cache bound."""
    cache = IdentityCache(make_backend("memory://", max_entries=CACHE_BOUND), ttl=3600)
    return IdentityService(store_for(db), cache, IdentifierParser(SECRET))


@asynccontextmanager
async def throwaway_database(admin_url: str) -> AsyncIterator[str]:
    name = f"threadline_bench_{secrets.token_hex(5)}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield urlsplit(admin_url)._replace(path=f"/{name}").geturl()
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def load(db: PostgresDatabase, total: int) -> None:
    async with db.reading() as conn:
        for done in range(0, total, LOAD_BATCH):
            size = min(LOAD_BATCH, total - done)
            await conn.execute(_LOAD, FORMATION, size, timeout=LONG)
            print(f"loaded {done + size}/{total} identifiers", file=sys.stderr)
        # email(n) names user n: true only while the fresh sequence handed out 1..N.
        if await conn.fetchval("SELECT max(id) FROM users") != total:
            raise RuntimeError("expected user ids 1..N in a fresh database")
        # Hint bits and planner statistics now, so the first timed lookups do not pay for them.
        await conn.execute("VACUUM ANALYZE users, user_identifiers", timeout=LONG)


async def interleaved(runs: dict[str, tuple[Call, list[Any]]], warmup: int) -> dict[str, list[int]]:
    """Time each call on each of its items, one at a time. The calls take turns in blocks so a
    noisy neighbour on the shared machine slows a measure and its baseline alike; the first
    `warmup` timings of each are dropped."""
    times: dict[str, list[int]] = {name: [] for name in runs}
    length = min(len(items) for _, items in runs.values())
    clock = time.perf_counter_ns
    for start in range(0, length, BLOCK):
        for name, (call, items) in runs.items():
            out = times[name]
            for item in items[start:start + BLOCK]:
                began = clock()
                await call(item)
                out.append(clock() - began)
    return {name: t[warmup:] for name, t in times.items()}


async def drive(call: Call, items: Iterable[Any], concurrency: int) -> float:
    """Seconds to run `call` on every item with `concurrency` tasks sharing one iterator."""
    pending = iter(items)

    async def worker() -> None:
        for item in pending:
            await call(item)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - began


async def cached(db: PostgresDatabase, ids: list[int], samples: int) -> dict[str, float]:
    service = make_service(db)
    names = [email(n) for n in ids]
    await drive(lambda name: service.resolve(FORMATION, name), names, CONCURRENCY)
    # The baselines hold the very keys and values the service cached.
    keys = [IdentityCache.key(FORMATION, name) for name in names]
    simple, bounded = SimpleMemoryCache(), BoundedMemoryCache(max_entries=CACHE_BOUND)
    for key in keys:
        value = await service.cache.backend.get(key)
        await simple.set(key, value)
        await bounded.set(key, value)
    warmup = samples // 10
    picks = [random.randrange(len(ids)) for _ in range(samples + warmup)]
    t = await interleaved({
        "resolve": (lambda name: service.resolve(FORMATION, name), [names[i] for i in picks]),
        "simple": (simple.get, [keys[i] for i in picks]),
        "bounded": (bounded.get, [keys[i] for i in picks]),
    }, warmup)
    await service.cache.close()
    return {"cached_p50_us": pct(t["resolve"], .5), "cached_p99_us": pct(t["resolve"], .99),
            "raw_cache_get_p50_us": pct(t["simple"], .5),
            "raw_cache_get_p99_us": pct(t["simple"], .99),
            "bounded_get_p50_us": pct(t["bounded"], .5),
            "bounded_get_p99_us": pct(t["bounded"], .99)}


async def uncached(db: PostgresDatabase, ids: list[int], total: int,
                   warmup: int) -> dict[str, float]:
    """`ids` were never resolved in this process: every resolve misses the cache."""
    service = make_service(db)
    async with db.reading() as conn:
        lookup = await conn.prepare("SELECT public_id FROM users WHERE id = $1")
        t = await interleaved({
            "resolve": (lambda name: service.resolve(FORMATION, name), [email(n) for n in ids]),
            "raw": (lookup.fetchval, [random.randint(1, total) for _ in ids]),
        }, warmup)
    await service.cache.close()
    return {"uncached_p50_us": pct(t["resolve"], .5), "uncached_p99_us": pct(t["resolve"], .99),
            "raw_pg_lookup_p50_us": pct(t["raw"], .5),
            "raw_pg_lookup_p99_us": pct(t["raw"], .99)}


async def creation(db: PostgresDatabase, count: int) -> dict[str, float]:
    service = make_service(db)
    before = await service.store.count_users(FORMATION)
    elapsed = await drive(lambda n: service.resolve(FORMATION, f"new{n}@example.com"),
                          range(count), CONCURRENCY)
    created = await service.store.count_users(FORMATION) - before
    await service.cache.close()
    return {"creates_per_s": created / elapsed, "created": created,
            "raw_creates_per_s": count / await raw_creation(db, count)}


async def raw_creation(db: PostgresDatabase, count: int) -> float:
    """Seconds for the store's two INSERTs in a transaction, one task per pooled connection
    held throughout: no lookup first and no pool acquire and reset around each."""
    pending = iter(range(count))

    async def worker() -> None:
        async with db.reading() as conn:
            for n in pending:
                async with conn.transaction():
                    row = await conn.fetchval(
                        "INSERT INTO users (formation_id, public_id) VALUES ($1, $2) RETURNING id",
                        FORMATION, new_public_id())
                    await conn.execute(
                        "INSERT INTO user_identifiers (formation_id, user_id, identifier, type)"
                        " VALUES ($1, $2, $3, 'email')", FORMATION, row, f"raw{n}@example.com")

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(db.pool.get_max_size())))
    return time.perf_counter() - began


async def memory(db: PostgresDatabase, count: int) -> dict[str, float]:
    """RSS after `count` distinct resolves through one service. Identifiers come from a range,
    not a list, so the benchmark's own bookkeeping does not inflate the figure."""
    service = make_service(db)
    before = rss_mb()
    await drive(lambda n: service.resolve(FORMATION, email(n)), range(1, count + 1), CONCURRENCY)
    after = rss_mb()
    entries = len(service.cache.backend)  # type: ignore[arg-type]
    await service.cache.close()
    return {"rss_mb_before": before, "rss_mb_after_200k": after, "rss_resolves": count,
            "cache_entries": entries, "cache_bound": CACHE_BOUND}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    uncached_warmup = args.samples // 40  # a quarter as many samples, each a round trip
    picked = random.sample(range(1, args.identifiers + 1),
                           CACHED_KEYS + args.samples // 4 + uncached_warmup)
    async with throwaway_database(args.url) as url:
        db = await connect(url)
        try:
            assert isinstance(db, PostgresDatabase)
            await db.migrate()
            began = time.perf_counter()
            await load(db, args.identifiers)
            result: dict[str, Any] = {"identifiers": args.identifiers,
                                      "load_s": time.perf_counter() - began}
            print("measuring cached resolve", file=sys.stderr)
            result |= await cached(db, picked[:CACHED_KEYS], args.samples)
            print("measuring uncached resolve", file=sys.stderr)
            result |= await uncached(db, picked[CACHED_KEYS:], args.identifiers,
                                     uncached_warmup)
            print(f"creating {CREATES} users, {CONCURRENCY} at a time", file=sys.stderr)
            result |= await creation(db, CREATES)
            print("resolving past the cache bound", file=sys.stderr)
            result |= await memory(db, min(RSS_RESOLVES, args.identifiers))
        finally:
            await db.close()
    return result


def report(r: dict[str, Any]) -> list[str]:
    """Print the table; returns the targets missed."""
    cached_x = r["cached_p50_us"] / r["raw_cache_get_p50_us"]
    uncached_x = r["uncached_p50_us"] / r["raw_pg_lookup_p50_us"]
    targets = {"cached p50 <= 1.5x raw get": cached_x <= 1.5,
               "uncached p50 <= 1.5x raw lookup": uncached_x <= 1.5,
               "creates >= 2000/s": r["creates_per_s"] >= 2000,
               "rss <= 250 MB": r["rss_mb_after_200k"] <= 250}
    met = ["yes" if ok else "MISSED" for ok in targets.values()]
    us = "{:.1f} us".format
    rows = [
        ("measure", "value", "baseline", "value", "ratio", "target", "met"),
        ("cached resolve p50", us(r["cached_p50_us"]), "SimpleMemoryCache().get p50",
         us(r["raw_cache_get_p50_us"]), f"{cached_x:.2f}x", "<= 1.5x", met[0]),
        ("cached resolve p99", us(r["cached_p99_us"]), "SimpleMemoryCache().get p99",
         us(r["raw_cache_get_p99_us"]), f"{r['cached_p99_us'] / r['raw_cache_get_p99_us']:.2f}x",
         "", ""),
        ("cached resolve p50", us(r["cached_p50_us"]), "BoundedMemoryCache.get p50",
         us(r["bounded_get_p50_us"]), f"{r['cached_p50_us'] / r['bounded_get_p50_us']:.2f}x",
         "(context)", ""),
        ("uncached resolve p50", us(r["uncached_p50_us"]), "prepared pk lookup p50",
         us(r["raw_pg_lookup_p50_us"]), f"{uncached_x:.2f}x", "<= 1.5x", met[1]),
        ("uncached resolve p99", us(r["uncached_p99_us"]), "prepared pk lookup p99",
         us(r["raw_pg_lookup_p99_us"]),
         f"{r['uncached_p99_us'] / r['raw_pg_lookup_p99_us']:.2f}x", "", ""),
        (f"creates ({CONCURRENCY} tasks)", f"{r['creates_per_s']:.0f}/s", "raw INSERT pair",
         f"{r['raw_creates_per_s']:.0f}/s", f"{r['creates_per_s'] / r['raw_creates_per_s']:.2f}x",
         ">= 2000/s", met[2]),
        (f"rss after {r['rss_resolves']} resolves", f"{r['rss_mb_after_200k']:.0f} MB",
         "rss before them", f"{r['rss_mb_before']:.0f} MB", "", "<= 250 MB", met[3]),
        ("cache entries then", str(r["cache_entries"]), "cache bound", str(r["cache_bound"]),
         "", "", ""),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"{r['identifiers']} identifiers loaded in {r['load_s']:.1f} s")
    if r["rss_resolves"] <= r["cache_bound"]:
        print(f"note: {r['rss_resolves']} identifiers do not overflow the cache bound;"
              f" use --identifiers >= {RSS_RESOLVES} for the full memory figure")
    r["cached_ratio"], r["uncached_ratio"] = cached_x, uncached_x
    return [name for name, ok in targets.items() if not ok]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--url", default=os.environ.get("THREADLINE_BENCH_POSTGRES_URL", ADMIN_URL),
                        help="admin URL; the benchmark creates and drops its own database")
    parser.add_argument("--identifiers", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=20_000, help="cached samples")
    args = parser.parse_args()
    if args.samples < 40 or CACHED_KEYS + args.samples // 2 > args.identifiers:
        parser.error("need --samples >= 40 and --identifiers >= 10000 + samples / 2")
    # Per-user "user created" lines would swamp stderr and time the log, not the core.
    configure_logging("json", "error")
    began = time.perf_counter()
    result = asyncio.run(run(args))
    result["missed"] = report(result)
    result["total_s"] = time.perf_counter() - began
    print(f"total {result['total_s']:.1f} s")
    if args.json:
        print(json.dumps({k: round(v, 2) if isinstance(v, float) else v
                          for k, v in result.items()}))


if __name__ == "__main__":
    main()
