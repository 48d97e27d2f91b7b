"""One subscription to a channel of messages between processes, held open until it breaks:
Redis pub/sub, or PostgreSQL LISTEN on a connection of its own (the pool's connections
keep no session state). The identity cache's invalidation bus and the web chat's live
relay both speak through these; each reconnects in its own loop when one ends."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

OnPayload = Callable[[str], None]
OnLost = Callable[[Exception | None], bool]
OnUp = Callable[[], None]

MAX_PAYLOAD = 7000  # bytes; PostgreSQL refuses NOTIFY payloads of 8000 and more


async def listen_redis(url: str, channel: str, on_payload: OnPayload, on_up: OnUp) -> None:
    """`on_up()` once subscribed, then `on_payload(text)` per message; raises when the
    connection is lost (a ping each idle second finds one that died quietly)."""
    import redis.asyncio as redis

    # No read timeout on the subscriber (it waits for messages); health checks find a dead
    # connection within seconds instead.
    client = redis.Redis.from_url(url, socket_connect_timeout=2, health_check_interval=2,
                                  socket_keepalive=True)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(channel)
        on_up()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is None:
                await pubsub.ping()
                continue
            if message.get("type") != "message":  # the ping's answer
                continue
            data = message.get("data")
            on_payload(data.decode() if isinstance(data, bytes) else str(data))
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


def redis_publisher(url: str) -> Any:
    import redis.asyncio as redis

    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


async def listen_postgres(url: str, channel: str, on_payload: OnPayload, on_up: OnUp) -> None:
    """The same over LISTEN; raises when the connection is lost (a query every two idle
    seconds finds one that died quietly)."""
    import asyncpg

    conn = await asyncpg.connect(url, timeout=5)
    lost = asyncio.Event()

    def heard(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        on_payload(payload)

    conn.add_termination_listener(lambda _conn: lost.set())
    try:
        await conn.add_listener(channel, heard)
        on_up()
        while not lost.is_set():
            try:
                await asyncio.wait_for(lost.wait(), 2.0)
            except TimeoutError:
                await conn.execute("SELECT 1", timeout=2)
        raise ConnectionError("the LISTEN connection closed")
    finally:
        if not conn.is_closed():
            conn.terminate()


async def notify_postgres(db: Any, channel: str, payload: str) -> None:
    """NOTIFY through the database's pool."""
    await db.execute("SELECT pg_notify($1, $2)", channel, payload)


async def resubscribe(session: Callable[[], Awaitable[None]], on_lost: OnLost) -> NoReturn:
    """Run `session` (one subscription, held open) again whenever it ends. `on_lost(error)`
    hears of each end (None when it returned) and answers whether the subscription had
    been up: then the next try comes after 0.2 s, else the wait doubles, up to 5 s."""
    pause = 0.2
    while True:
        error: Exception | None = None
        try:
            await session()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any loss: the caller says what it means
            error = exc
        if on_lost(error):
            pause = 0.2
        await asyncio.sleep(pause)
        pause = min(pause * 2, 5.0)
