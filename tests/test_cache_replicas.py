"""Many replicas, one truth: a change made in one process empties every other process's
in-process cache entry at once (PostgreSQL LISTEN/NOTIFY without Redis, Redis pub/sub with
it, a commit noticed on SQLite); a cache that fails is skipped for the database, and what it
missed is put right when it is back."""

import asyncio
import os
import signal
import subprocess
import time

import pytest

from identity import IdentifierParser, IdentityService, store_for
from identity.cache import make_cache
from tests.conftest import TEST_SECRET, free_port
from tests.test_identity_processes import run_worker


async def eventually(check, timeout: float = 3.0) -> None:
    """Bus messages arrive asynchronously: within milliseconds, allowed a few seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not seen in time"
        await asyncio.sleep(0.02)


@pytest.fixture(params=["database", "redis"])
async def replica(request, database_url, db, formation):
    """This process as a serving replica: its cache wired as `serve` wires it."""
    url = "memory://" if request.param == "database" else request.getfixturevalue("redis_url")
    cache = make_cache(url, db, max_entries=1000)
    await cache.start()
    service = IdentityService(store_for(db), cache, IdentifierParser(TEST_SECRET))
    yield service, url
    await cache.close()


async def test_a_change_in_another_process_empties_this_ones_cache(replica, database_url,
                                                                   formation):
    here, cache_url = replica
    alice = await here.resolve(formation, "alice@x.co")
    bob = await here.resolve(formation, "bob@x.co")
    await here.associate(formation, [("U1", "slack")], user_id=alice)
    assert await here.resolve(formation, ("U1", "slack")) == alice
    local = here.cache.local
    assert local.peek(here.cache.key(formation, "U1")) == alice  # held in this process

    assert await run_worker(database_url, cache_url, formation, "unlink", "U1") == alice

    async def gone() -> bool:
        return local.peek(here.cache.key(formation, "U1")) is None
    await eventually(gone)
    assert await here.resolve(formation, ("U1", "slack"), create=False) is None
    assert await run_worker(database_url, cache_url, formation, "link", bob, "U1") == bob
    assert await here.resolve(formation, ("U1", "slack")) == bob
    # And the other way: this process's change reaches a fresh process's view.
    await here.unlink(formation, ("U1", "slack"))
    await here.associate(formation, [("U1", "slack")], user_id=alice)
    assert await run_worker(database_url, cache_url, formation, "resolve", "U1") == alice


async def test_the_in_process_tier_answers_without_asking_redis(formation, redis_url, db):
    cache = make_cache(redis_url, db, max_entries=100)
    await cache.start()
    service = IdentityService(store_for(db), cache, IdentifierParser(TEST_SECRET))
    try:
        user = await service.resolve(formation, "tiers@x.co")
        asked = []
        original = cache.remote.get

        async def counted(*args, **kwargs):
            asked.append(args)
            return await original(*args, **kwargs)

        cache.remote.get = counted
        for _ in range(5):
            assert await service.resolve(formation, "tiers@x.co") == user
        assert asked == []
        status = await cache.status()
        assert status == {"status": "up", "tiers": ["memory", "redis"], "bus": "redis"}
    finally:
        await cache.close()


@pytest.fixture
def private_redis(tmp_path):
    """A Redis of this test's own, to stop and kill (never the shared one)."""
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True,
                         text=True).stdout.strip() != "PONG":
        assert time.monotonic() < deadline, "private redis did not start"
        time.sleep(0.05)
    yield proc, f"redis://127.0.0.1:{port}/0"
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.wait()


async def test_a_stalled_redis_is_skipped_and_what_it_missed_is_put_right(
        private_redis, db, formation, caplog):
    proc, url = private_redis
    cache = make_cache(url, db, max_entries=100)
    cache.retry_after = 1.0
    await cache.start()
    service = IdentityService(store_for(db), cache, IdentifierParser(TEST_SECRET))
    try:
        alice = await service.resolve(formation, "stall@x.co")
        assert await cache.remote.get(cache.key(formation, "stall@x.co")) == alice

        os.kill(proc.pid, signal.SIGSTOP)  # Redis stops answering; its data stays
        started = time.monotonic()
        await service.unlink(formation, "stall@x.co")  # the Redis delete cannot be sent
        answers = [await service.resolve(formation, f"during-{n}@x.co") for n in range(20)]
        assert len(set(answers)) == 20  # every request answered, from the database
        assert await service.resolve(formation, "stall@x.co", create=False) is None
        assert time.monotonic() - started < 8  # one 2 s timeout, then Redis is skipped
        status = await cache.status()
        assert status["status"] == "degraded" and "redis" in status["error"]

        os.kill(proc.pid, signal.SIGCONT)  # back, still holding the stale mapping

        async def recovered() -> bool:
            return (await cache.status())["status"] == "up"
        await eventually(recovered, timeout=10)
        assert await cache.remote.get(cache.key(formation, "stall@x.co")) is None
        assert await service.resolve(formation, "stall@x.co", create=False) is None
    finally:
        await cache.close()


async def test_a_dead_redis_costs_one_warning_per_interval_not_one_per_request(
        private_redis, db, formation, capsys):
    proc, url = private_redis
    cache = make_cache(url, db, max_entries=100)
    await cache.start()
    service = IdentityService(store_for(db), cache, IdentifierParser(TEST_SECRET))
    try:
        await service.resolve(formation, "before@x.co")
        proc.kill()
        proc.wait()
        for n in range(200):
            assert await service.resolve(formation, f"dead-{n}@x.co")
        logged = capsys.readouterr()
        warnings = [line for line in (logged.out + logged.err).splitlines()
                    if "cache unavailable" in line]
        assert 1 <= len(warnings) <= 2, warnings
    finally:
        await cache.close()
