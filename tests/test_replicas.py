"""Many replicas, one truth, end to end: three `threadline serve` processes on one PostgreSQL
database (of this test's own) and one Redis (under a formation of this test's own). A link
made through one replica is seen by a resolve on another at once; each polled channel
(Telegram long polling, an IMAP mailbox) is polled by exactly one replica, and by another
within seconds of its holder being killed; a reminder fires once."""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from gateway.runtime.leases import PostgresLeases
from tests.conftest import ADMIN_URL, _missing
from tests.helpers.replicas import (
    ADMIN,
    CLIENT,
    Fleet,
    Replica,
    connected_to,
    fresh_database,
    owner_of_client_port,
    ready,
    wait_until,
)
from tests.helpers.report import report

pytest_plugins = ("tests.peers.imap", "tests.peers.smtp")

from tests.peers.telegram import TOKEN, TelegramPeer  # noqa: E402
from tests.test_email import config as email_config  # noqa: E402
from tests.test_email import mail, seed  # noqa: E402
from tests.test_telegram import private  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")

FAILOVER = 10.0  # seconds a killed holder's channel may take to be polled elsewhere


@pytest.fixture
async def database() -> AsyncIterator[str]:
    try:
        await (await asyncpg.connect(ADMIN_URL, timeout=5)).close()
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        _missing(f"PostgreSQL at {ADMIN_URL}", exc)
    async with fresh_database(ADMIN_URL) as url:
        yield url


@pytest.fixture
async def fleet(tmp_path, database, redis_url) -> AsyncIterator[Callable[..., Fleet]]:
    """Replicas are started by each test (channels differ); all stopped afterwards, and the
    formation's keys left in the shared Redis are deleted."""
    fleets: list[Fleet] = []

    def make(**options: Any) -> Fleet:
        made = Fleet(tmp_path, database_url=database, cache_url=redis_url, **options)
        fleets.append(made)
        return made

    yield make
    for made in fleets:
        await made.close()
        client = aioredis.Redis.from_url(redis_url)
        try:
            keys = [k async for k in client.scan_iter(f"tl:uid:{made.formation}:*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()


async def _resolve(http: httpx.AsyncClient, replica: Replica, identifier: str, *,
                   create: bool = False) -> str | None:
    answer = await http.post(f"{replica.url}/v1/users/resolve", headers=CLIENT,
                             json={"identifier": identifier, "create_user": create})
    if answer.status_code == 404:
        return None
    assert answer.status_code == 200, answer.text
    user: str = answer.json()["data"]["muxi_user_id"]
    return user


async def _seen_on(http: httpx.AsyncClient, replica: Replica, identifier: str,
                   expected: str | None, since: float) -> tuple[float, bool]:
    """Seconds from `since` until a resolve on `replica` gives `expected`, and whether the
    first resolve did."""
    first = True
    while await _resolve(http, replica, identifier) != expected:
        first = False
        assert time.perf_counter() - since < 5, f"{replica.name} kept a stale answer"
        await asyncio.sleep(0.005)
    return time.perf_counter() - since, first


async def test_a_link_through_one_replica_is_seen_by_a_resolve_on_another_at_once(
        fleet, pytestconfig):
    replicas = fleet()
    a, _b, c = await replicas.start_all("a", "b", "c")
    linked_ms, unlinked_ms, first_right = [], [], 0
    rounds = 20
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(rounds):
            tag = uuid.uuid4().hex[:8]
            one = await _resolve(http, a, f"one-{tag}@x.co", create=True)
            two = await _resolve(http, a, f"two-{tag}@x.co", create=True)
            moving = f"slack:U{tag.upper()}"
            answer = await http.post(f"{a.url}/v1/users/identifiers", headers=ADMIN,
                                     json={"muxi_user_id": one, "identifiers": [moving]})
            assert answer.status_code == 201, answer.text
            for _ in range(2):  # C now holds it, in its own memory and in Redis
                assert await _resolve(http, c, moving) == one
            answer = await http.delete(f"{a.url}/v1/users/identifiers/{moving}", headers=ADMIN)
            assert answer.status_code == 200, answer.text
            took, _ = await _seen_on(http, c, moving, None, time.perf_counter())
            unlinked_ms.append(took * 1000)
            answer = await http.post(f"{a.url}/v1/users/identifiers", headers=ADMIN,
                                     json={"muxi_user_id": two, "identifiers": [moving]})
            answered = time.perf_counter()
            assert answer.status_code == 201, answer.text
            took, first = await _seen_on(http, c, moving, two, answered)
            linked_ms.append(took * 1000)
            first_right += first
        cache = (await ready(http, c))["components"]["cache"]
    assert cache["status"] == "up" and cache["bus"] == "redis", cache
    median, worst = statistics.median(linked_ms), max(linked_ms)
    report(pytestconfig, "replicas: a link through A seen by a resolve on C", [
        f"{rounds} links (C held the old answer in memory and Redis): seen on C "
        f"{median:.1f} ms median, {worst:.1f} ms worst after A answered (a resolve's own "
        f"round trip included); {first_right}/{rounds} right at C's first resolve",
        f"unlinks: {statistics.median(unlinked_ms):.1f} ms median, "
        f"{max(unlinked_ms):.1f} ms worst"])
    # The target is 100 ms; a busy two-core machine may stall one request for longer.
    assert median < 100, linked_ms
    assert worst < 1000, linked_ms


async def _channel_states(http: httpx.AsyncClient, fleet: Fleet, channel: str,
                          among: tuple[str, ...] | None = None) -> dict[str, str]:
    states = {}
    for replica in fleet.running():
        if among is not None and replica.name not in among:
            continue
        report = await ready(http, replica)
        states[replica.name] = report["components"]["channels"][channel]["status"]
    return states


async def _one_holder(http: httpx.AsyncClient, fleet: Fleet, channel: str,
                      among: tuple[str, ...] | None = None) -> str:
    """The one replica running `channel`, once the others stand by (`among`: only these
    are asked)."""
    holder: list[str] = []

    async def settled() -> bool:
        states = await _channel_states(http, fleet, channel, among)
        up = [name for name, status in states.items() if status == "up"]
        others = {status for name, status in states.items() if name not in up}
        holder[:] = up
        return len(up) == 1 and others <= {"standby"}

    await wait_until(settled, 30, 0.1, f"one replica running {channel}")
    return holder[0]


async def _first_seen(checks: dict[str, Any], since: float) -> dict[str, float]:
    """Seconds from `since` until each check (a coroutine function) first held."""
    seen: dict[str, float] = {}
    while len(seen) < len(checks):
        for name, check in checks.items():
            if name not in seen and await check():
                seen[name] = time.monotonic() - since
        assert time.monotonic() - since < FAILOVER, f"not moved in time: {seen}"
        await asyncio.sleep(0.05)
    return seen


def _pollers(peer: TelegramPeer, fleet: Fleet, since: float) -> set[str | None]:
    """Which replicas sent the getUpdates calls since `since` (None: a connection gone)."""
    return {owner_of_client_port(port, fleet.running())
            for at, port in list(peer.polls) if at >= since}


async def test_each_polled_channel_is_polled_by_one_replica_and_moves_when_it_is_killed(
        fleet, dovecot, smtp_server, pytestconfig):
    telegram = TelegramPeer()
    await telegram.start()
    mailbox = f"bot-{uuid.uuid4().hex[:10]}"
    replicas = fleet(channels={
        "telegram": {"token": TOKEN, "api_url": telegram.url, "poll_timeout": 1},
        "email": email_config(dovecot, mailbox, smtp_server)})
    lines = []
    try:
        await replicas.start_all("a", "b", "c")
        async with httpx.AsyncClient(timeout=10) as http:
            polling = await _one_holder(http, replicas, "telegram")
            reading = await _one_holder(http, replicas, "email")
            watched = time.monotonic()
            await asyncio.sleep(3)  # a few long polls (1 s each)
            assert _pollers(telegram, replicas, watched) == {polling}
            assert connected_to(dovecot.port, replicas.running()) == {reading}

            def moved(channel: str, victim: str, killed: float) -> Any:
                async def telegram_polled() -> bool:
                    return bool(_pollers(telegram, replicas, killed) - {None})

                async def mailbox_read() -> bool:
                    holders = connected_to(dovecot.port, replicas.running())
                    return len(holders) == 1 and victim not in holders

                return telegram_polled if channel == "telegram" else mailbox_read

            # Kill the Telegram poller, then the mailbox's reader if that one still runs:
            # each time, what the killed replica ran moves to another within seconds.
            holders, took = {"telegram": polling, "email": reading}, {}
            for victim in dict.fromkeys(holders.values()):
                if not replicas.replicas[victim].running:
                    continue
                killed = time.monotonic()
                await replicas.kill(victim)
                moving = [channel for channel, holder in holders.items() if holder == victim]
                took.update(await _first_seen(
                    {channel: moved(channel, victim, killed) for channel in moving}, killed))
                for channel in moving:
                    holders[channel] = await _one_holder(http, replicas, channel)
                    lines.append(f"{channel}: {victim} ran it alone; SIGKILL {victim} -> "
                                 f"{holders[channel]} running it {took[channel]:.2f} s later")
            watched = time.monotonic()
            await asyncio.sleep(2)
            assert _pollers(telegram, replicas, watched) == {holders["telegram"]}
            assert connected_to(dovecot.port, replicas.running()) == {holders["email"]}
            assert max(took.values()) < FAILOVER, took
            await telegram.push(private("my budget is $7,000", 9001))
            [said] = await telegram.wait_sent(1, timeout=20)
            assert "$7,000" in said["text"]
            question, question_id = mail("Bob <bob@example.org>", "My budget is $3,000.")
            await seed(dovecot, mailbox, question)
            [answer] = await smtp_server.wait_for(1, timeout=20)
            assert answer.message["In-Reply-To"] == question_id
            await asyncio.sleep(1)
            assert len(smtp_server.received()) == 1 and len(telegram.sent) == 1
    finally:
        await replicas.close()
        await telegram.stop()
        report(pytestconfig, "replicas: polled channels (3 replicas)", lines)


async def test_a_reminder_fires_once_across_the_replicas(fleet, database, pytestconfig):
    """The reminder has to cross replicas: Telegram is polled by one, the scheduler runs in
    another. (This test holds Telegram's lease while the first replica starts, so that one
    takes only the scheduler's, and freezes it while the lease is let go.)"""
    telegram = TelegramPeer()
    await telegram.start()
    replicas = fleet(channels={"telegram": {"token": TOKEN, "api_url": telegram.url,
                                            "poll_timeout": 1}})
    leases = PostgresLeases(database, interval=0.2)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            async with leases.hold("channel:telegram"):
                scheduling = await replicas.start("a")
                assert await _scheduler_holder(http, replicas) == "a"
                await replicas.start_all("b", "c")
                os.kill(scheduling.pid, signal.SIGSTOP)
            try:
                polling = await _one_holder(http, replicas, "telegram", among=("b", "c"))
            finally:
                os.kill(scheduling.pid, signal.SIGCONT)
            assert await _scheduler_holder(http, replicas) == "a"
            await telegram.push(private("remind me in 2 seconds to stretch", 9101))
            await telegram.wait_sent(1, timeout=20)  # "OK, I'll remind you…"
            await telegram.wait_sent(2, timeout=20)
            await asyncio.sleep(3)  # nothing more: not from another replica either
            texts = [s["text"] for s in telegram.sent]
    finally:
        await leases.close()
        await replicas.close()
        await telegram.stop()
    assert len(texts) == 2 and "remind you" in texts[0], texts
    assert texts[1] == "⏰ Reminder: stretch", texts
    report(pytestconfig, "replicas: a reminder", [
        f"fired once, by the scheduler in {scheduling.name}, said on Telegram (polled by "
        f"{polling})"])


async def _scheduler_holder(http: httpx.AsyncClient, fleet: Fleet) -> str:
    """The one replica whose scheduler runs (it holds the lease), once there is one."""
    running: list[str] = []

    async def one() -> bool:
        running.clear()
        for replica in fleet.running():
            answer = await http.get(f"{replica.url}/v1/scheduler", headers=ADMIN)
            if answer.json()["data"]["running"]:
                running.append(replica.name)
        return len(running) == 1

    await wait_until(one, 10, 0.1, "one scheduler running")
    return running[0]
