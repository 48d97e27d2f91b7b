"""Web chat pages and API event streams across replicas: a page open on one replica hears a
reminder fired by the scheduler on another, once; with nobody listening anywhere it goes to
the transcript. Over Redis pub/sub and over PostgreSQL LISTEN/NOTIFY, between real
`threadline serve` processes and between two buses in this process; and what a replica
announced expires when it stops announcing."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

import memory
from gateway.conversation.live import EventHub, LiveChannel, NobodyListeningError
from gateway.conversation.messages import OutboundMessage
from gateway.runtime.live_bus import (
    LiveBus,
    PostgresLiveBus,
    RedisLiveBus,
    RemoteListeners,
)
from gateway.webchat import sign_token
from identity import Database, connect
from tests.conftest import ADMIN_URL
from tests.helpers.replicas import ADMIN, Fleet, Replica, fresh_database, wait_until

SECRET = "live-replicas-webchat-secret-0123456789"


def test_announced_listeners_expire_unless_heard_again():
    view = RemoteListeners(ttl=15)
    view.heard("r1", [("u1", "web", "tab-1"), ("u1", "api", None)], at=100)
    assert view.replicas("u1", "web", "tab-1", at=101) == {"r1"}
    assert view.replicas("u1", "api", "any-conversation", at=101) == {"r1"}
    assert view.replicas("u1", "web", "tab-2", at=101) == set()
    assert view.replicas("u2", "web", "tab-1", at=101) == set()
    view.heard("r2", [("u1", "web", "tab-1")], at=110)
    assert view.replicas("u1", "web", "tab-1", at=116) == {"r2"}  # r1's ran out at 115
    view.heard("r2", [("u1", "web", "tab-1")], at=120)  # announced again: kept
    assert view.replicas("u1", "web", "tab-1", at=134) == {"r2"}
    assert view.replicas("u1", "web", "tab-1", at=136) == set()
    view.prune(136)
    assert view.replicas("u1", "api", "x", at=0) == set()  # pruned, whatever the clock
    view.heard("r3", [("u1", "web", "tab-1"), ("u1", "api", None)], at=200)
    view.gone("r3", ("u1", "web", "tab-1"))  # its page closed
    assert view.replicas("u1", "web", "tab-1", at=201) == set()
    view.forget("r3")  # it said goodbye
    assert view.replicas("u1", "api", "x", at=201) == set()


# -- two buses in this process, over the real transports ------------------------------------

@pytest.fixture
async def pg(postgres_url: str) -> AsyncIterator[Database]:
    database = await connect(postgres_url, schema=memory.SCHEMA)
    yield database
    await database.close()


def _bus(transport: str, hub: EventHub, pg: Database, redis_url: str) -> LiveBus:
    if transport == "redis":
        return RedisLiveBus(hub, redis_url, interval=0.2)
    return PostgresLiveBus(hub, pg, interval=0.2)


async def _until(check: Any, timeout: float = 5.0) -> None:
    async def held() -> bool:
        return bool(check())

    await wait_until(held, timeout, 0.02)


@pytest.mark.parametrize("transport", ["redis", "postgres"])
async def test_an_event_crosses_to_the_bus_whose_hub_listens_and_a_silent_one_expires(
        transport, pg, redis_url):
    here, there = EventHub(), EventHub()
    listening, firing = _bus(transport, here, pg, redis_url), _bus(transport, there, pg, redis_url)
    await listening.start()
    await firing.start()
    user = f"u-{uuid.uuid4().hex}"
    channel = LiveChannel("web", there)
    try:
        await _until(lambda: listening.healthy and firing.healthy)
        assert not channel.can_reach(user, "tab-1")
        with here.listen(user, "web", "tab-1") as queue:
            await _until(lambda: channel.can_reach(user, "tab-1"))
            assert not channel.can_reach(user, "tab-2")
            await channel.deliver(OutboundMessage("web", "tab-1", "⏰ Reminder: stretch", user))
            event = await asyncio.wait_for(queue.get(), 5)
            assert event.data["text"] == "⏰ Reminder: stretch"
            await asyncio.sleep(0.3)
            assert queue.empty()  # once
            with pytest.raises(NobodyListeningError):  # too big for NOTIFY: not relayed
                await channel.deliver(OutboundMessage("web", "tab-1", "x" * 8000, user))
            assert queue.empty()
        await _until(lambda: not channel.can_reach(user, "tab-1"))  # the page closed
        with here.listen(user, "api") as queue:
            await _until(lambda: LiveChannel("api", there).can_reach(user, "any"))
            # The listening replica dies without a word: it stops announcing, and what it
            # announced runs out after three intervals.
            for task in listening._tasks:
                task.cancel()
            listening.healthy = False
            here.relay = None
            await _until(lambda: not LiveChannel("api", there).can_reach(user, "any"), 3)
    finally:
        await firing.close()
        await listening.close()


async def test_a_bus_that_is_down_knows_nobody_elsewhere_and_warns_once():
    hub = EventHub()
    bus = RedisLiveBus(hub, "redis://127.0.0.1:1/0", interval=0.1)
    with capture_logs() as logs:
        await bus.start()
        try:
            with hub.listen("u1", "web", "tab-1"):
                await asyncio.sleep(1.5)  # several reconnection attempts
                assert not bus.healthy
                assert not LiveChannel("web", hub).can_reach("u1", "tab-2")
                assert LiveChannel("web", hub).can_reach("u1", "tab-1")  # its own listener
        finally:
            await bus.close()
    warnings = [r for r in logs if r["log_level"] == "warning"]
    assert len(warnings) == 1, warnings


# -- real replicas ------------------------------------------------------------------------

@pytest.fixture
async def fleets(tmp_path) -> AsyncIterator[tuple[str, list[Fleet]]]:
    """A database of the test's own, and the fleets on it (stopped afterwards)."""
    made: list[Fleet] = []
    async with fresh_database(ADMIN_URL, "threadline_live") as url:
        try:
            yield url, made
        finally:
            for fleet in made:
                await fleet.close()


async def _scheduler_holder(http: httpx.AsyncClient, fleet: Fleet) -> Replica:
    running: list[Replica] = []

    async def one() -> bool:
        running[:] = [r for r in fleet.running() if (await http.get(
            f"{r.url}/v1/scheduler", headers=ADMIN)).json()["data"]["running"]]
        return len(running) == 1

    await wait_until(one, 15, 0.1, "one scheduler running")
    return running[0]


async def _say(http: httpx.AsyncClient, replica: Replica, text: str, who: dict[str, str]) -> str:
    answer = await http.post(f"{replica.url}/webchat/messages", json={"text": text, **who})
    assert answer.status_code == 200, answer.text
    frames = [json.loads(line[5:]) for line in answer.text.splitlines()
              if line.startswith("data:")]
    return "".join(frame.get("token", "") for frame in frames)


async def _push(lines: AsyncIterator[str]) -> dict[str, Any]:
    """The next `event: push` frame's data (keep-alive comments and blank lines skipped)."""
    kind = None
    async for line in lines:
        if line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:") and kind == "push":
            data: dict[str, Any] = json.loads(line[5:])
            return data
    raise AssertionError("the stream ended")


def _delivered(replica: Replica) -> list[str]:
    """Where the replica's scheduler delivered tasks (`via`), as it logged them."""
    return [str(r.get("via")) for r in replica.events("task delivered")]


@pytest.mark.parametrize("transport", ["redis", "postgres"])
async def test_a_page_open_on_one_replica_hears_a_reminder_fired_on_another(
        transport, tmp_path, redis_url, fleets):
    # Two replicas (the machine is small): one runs the scheduler, the page is open on the
    # other.
    database, made = fleets
    fleet = Fleet(tmp_path, database_url=database,
                  cache_url=redis_url if transport == "redis" else None,
                  settings={"THREADLINE_WEBCHAT_SECRET": SECRET})
    made.append(fleet)
    await fleet.start_all("a", "b")
    tag = uuid.uuid4().hex[:8]
    async with httpx.AsyncClient(timeout=30) as http:
        firing = await _scheduler_holder(http, fleet)
        [page_on] = [r for r in fleet.running() if r is not firing]
        who = {"conversation": "tab-1",
               "token": sign_token(SECRET.encode(), f"alice-{tag}@example.com", ttl=600)}
        async with http.stream("GET", f"{page_on.url}/webchat/events", params=who) as stream:
            assert stream.status_code == 200
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("event: connected")
            assert "remind you to stretch" in await _say(
                http, page_on, "remind me in 2 seconds to stretch", who)
            pushed = await asyncio.wait_for(_push(lines), 20)
            assert pushed["text"] == "⏰ Reminder: stretch", pushed
            assert pushed["conversation"] == "tab-1"
            with pytest.raises(TimeoutError):  # once: nothing more from any replica
                await asyncio.wait_for(_push(lines), 3)
        assert "web:tab-1" in _delivered(firing)

        # Nobody listens for this person anywhere: the transcript keeps the reminder.
        alone = {"conversation": "tab-2",
                 "token": sign_token(SECRET.encode(), f"bob-{tag}@example.com", ttl=600)}
        await _say(http, page_on, "remind me in 1 second to drink water", alone)

        async def kept() -> bool:
            return "transcript:web:tab-2" in _delivered(firing)

        await wait_until(kept, 20, 0.2, "the reminder kept in the transcript")
        transcript = (await http.get(f"{page_on.url}/webchat/transcript",
                                     params=alone)).json()
        assert transcript["messages"][-1]["content"] == "⏰ Reminder: drink water"
        assert not [r for r in (firing, page_on) if r.events("live event bus down; reminders "
                                                             "reach only this replica's "
                                                             "listeners until it is back")]
