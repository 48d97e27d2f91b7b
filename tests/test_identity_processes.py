"""Behaviour across OS processes sharing one database (and one Redis cache)."""

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from identity import IdentifierParser, IdentityService, store_for
from identity.cache import IdentityCache, make_backend
from tests.conftest import TEST_SECRET

WORKER = Path(__file__).parent / "helpers" / "identity_worker.py"


async def run_worker(*args: str) -> object:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


async def test_first_contacts_racing_from_two_processes_make_one_user(
    database_url, db, formation
):
    start_at = str(time.time() + 1.5)  # both processes fire their 32 resolves together
    results = await asyncio.gather(
        *(run_worker(database_url, "memory://", formation, "race", "race@x.co", "32", start_at)
          for _ in range(2))
    )
    users = {user for batch in results for user in batch}
    assert len(users) == 1 and sum(len(batch) for batch in results) == 64
    assert await store_for(db).count_users(formation) == 1


async def test_changes_in_one_process_are_seen_at_once_by_another_sharing_redis(
    database_url, db, formation, redis_url
):
    cache = IdentityCache(make_backend(redis_url, max_entries=10), ttl=3600)
    here = IdentityService(store_for(db), cache, IdentifierParser(TEST_SECRET))
    try:
        alice = await here.resolve(formation, "alice@x.co")
        bob = await here.resolve(formation, "bob@x.co")
        await here.associate(formation, [("U1", "slack")], user_id=alice)
        assert await here.resolve(formation, ("U1", "slack")) == alice
        assert await cache.get(formation, "U1") == alice  # cached in Redis

        # Another process moves U1 from alice to bob.
        assert await run_worker(database_url, redis_url, formation, "unlink", "U1") == alice
        assert await here.resolve(formation, ("U1", "slack"), create=False) is None
        assert await run_worker(database_url, redis_url, formation, "link", bob, "U1") == bob
        assert await here.resolve(formation, ("U1", "slack")) == bob

        # And this process's change is what the other process sees.
        await here.unlink(formation, ("U1", "slack"))
        await here.associate(formation, [("U1", "slack")], user_id=alice)
        assert await run_worker(database_url, redis_url, formation, "resolve", "U1") == alice
    finally:
        await cache.close()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_fill_that_raced_with_a_change_is_not_cached(backend, request, formation):
    url = "memory://" if backend == "memory" else request.getfixturevalue("redis_url")
    cache = IdentityCache(make_backend(url, max_entries=10), ttl=3600)
    try:
        async def slow_load() -> str:
            await asyncio.sleep(0.05)
            return "usr_stale_answer_0000"

        fill = asyncio.create_task(cache.fill(formation, "k", slow_load))
        await asyncio.sleep(0.01)
        await cache.invalidate(formation, ["k"])  # a change commits while the load runs
        assert await fill == "usr_stale_answer_0000"
        assert await cache.get(formation, "k") is None

        async def load() -> str:
            return "usr_fresh_answer_0000"

        await cache.fill(formation, "k", load)
        assert await cache.get(formation, "k") == "usr_fresh_answer_0000"
    finally:
        await cache.close()
