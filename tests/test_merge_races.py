"""Merges that other processes do not trip over: process A merges two users while process
B chats as an identifier of the merged-away user, with B's cache in-process or in Redis."""

import asyncio
import json
import sys
from pathlib import Path

import pytest

import memory
from identity import IdentifierParser, IdentityService, connect, store_for
from identity.cache import BoundedMemoryCache, IdentityCache
from tests.conftest import CREDENTIALS_KEY, TEST_SECRET

WORKER = Path(__file__).parent / "helpers" / "chat_worker.py"
TURNS = 200


@pytest.fixture
async def pg(postgres_url):
    db = await connect(postgres_url, schema=memory.SCHEMA)
    await db.migrate()
    yield db
    await db.close()


@pytest.mark.parametrize("cache", ["memory", "redis"])
async def test_a_merge_in_one_process_fails_no_turn_in_another(
        postgres_url, pg, formation, tmp_path, cache, request):
    cache_url = "memory://" if cache == "memory" else request.getfixturevalue("redis_url")
    identity = IdentityService(store_for(pg), IdentityCache(BoundedMemoryCache()),
                               IdentifierParser(TEST_SECRET))
    memory_store = memory.Memory.open(pg, credentials_key=CREDENTIALS_KEY)
    identity.store.on_merge(memory_store.merge_into)
    keep = await identity.resolve(formation, "keep@x.co")
    gone = await identity.resolve(formation, "gone@x.co")
    ready = tmp_path / "ready"
    worker = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), postgres_url, cache_url, formation, "gone@x.co",
        str(TURNS), str(ready), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    for _ in range(500):
        if ready.exists():
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.3)  # B is mid-way through its turns, its mapping cached
    await identity.merge(formation, keep, gone)  # A
    out, err = await worker.communicate()
    assert worker.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["failed"] == []
    assert keep in result["users"]  # the turns after the merge went to the kept user
    notes = await memory_store.users.memories(keep, limit=1000)
    assert len(notes) == TURNS  # every turn's note, once, now all the kept user's
    assert await identity.resolve(formation, "gone@x.co", create=False) == keep


async def test_parallel_links_and_a_merge_leave_no_500_and_a_consistent_state(server):
    import httpx

    from tests.conftest import ADMIN

    url, runtime = server
    formation = runtime.settings.formation_id
    keep = await runtime.identity.resolve(formation, "keep@x.co")
    gone = await runtime.identity.resolve(formation, "gone@x.co")
    admin = {"X-Muxi-Admin-Key": ADMIN}
    async with httpx.AsyncClient(base_url=url + "/v1", timeout=30) as http:

        async def link(n: int) -> httpx.Response:
            return await http.post("/users/identifiers", headers=admin, json={
                "muxi_user_id": gone, "identifiers": [f"new{n}@x.co"]})

        async def merge() -> None:
            await asyncio.sleep(0.01)
            await runtime.identity.merge(formation, keep, gone)

        answers = await asyncio.gather(*(link(n) for n in range(20)), merge())
    statuses = [a.status_code for a in answers[:20]]
    assert set(statuses) <= {201, 404}, [a.text for a in answers[:20]]
    for n, status in enumerate(statuses):
        owner = await runtime.identity.resolve(formation, f"new{n}@x.co", create=False)
        # Linked before the merge: carried to the kept user. After: refused, nothing linked.
        assert owner == (keep if status == 201 else None), (n, status)
    assert not await runtime.identity.store.user_exists(formation, gone)
