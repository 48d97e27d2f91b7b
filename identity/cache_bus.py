"""How replicas tell each other that identifier mappings changed, so each drops its
in-process cache entries at once: Redis pub/sub when the cache is Redis, PostgreSQL
LISTEN/NOTIFY when it is not. A bus that loses its connection says so (`healthy` False,
`on_reset`): the in-process tier is then emptied and bypassed until it is back, because a
change announced meanwhile would be missed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any, Protocol

import structlog

log = structlog.get_logger("threadline.cache")

OnChange = Callable[[str, list[str]], None]  # (formation, identifier keys)
OnReset = Callable[[], None]
_MAX_PAYLOAD = 7000  # bytes; PostgreSQL refuses NOTIFY payloads of 8000 and more


class Bus(Protocol):
    healthy: bool

    async def start(self, on_change: OnChange, on_reset: OnReset) -> None: ...

    async def publish(self, formation: str, keys: list[str]) -> None: ...

    async def close(self) -> None: ...


def payloads(formation: str, keys: list[str]) -> list[str]:
    """The change as JSON messages, each small enough for NOTIFY."""
    out, batch = [], []
    for key in keys:
        batch.append(key)
        if len(json.dumps({"f": formation, "k": batch})) > _MAX_PAYLOAD and len(batch) > 1:
            out.append(json.dumps({"f": formation, "k": batch[:-1]}))
            batch = [key]
    if batch:
        out.append(json.dumps({"f": formation, "k": batch}))
    return out


def _decode(data: Any) -> tuple[str, list[str]] | None:
    try:
        message = json.loads(data)
        return str(message["f"]), [str(k) for k in message["k"]]
    except (ValueError, KeyError, TypeError):
        return None


class _Listener:
    """The reconnecting loop both buses share: `session` holds one subscription open and
    returns (or raises) when it ends."""

    name = "bus"

    def __init__(self) -> None:
        self.healthy = False
        self._task: asyncio.Task[None] | None = None
        self._up = asyncio.Event()
        self._last_warning = 0.0

    async def start(self, on_change: OnChange, on_reset: OnReset) -> None:
        self._task = asyncio.create_task(self._run(on_change, on_reset))
        try:  # a bus that is down at start leaves the in-process tier off until it is up
            await asyncio.wait_for(self._up.wait(), 3)
        except TimeoutError:
            pass

    async def _run(self, on_change: OnChange, on_reset: OnReset) -> None:
        pause = 0.2
        while True:
            try:
                await self.session(on_change, on_reset)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any loss: reset, wait, reconnect
                if time.monotonic() - self._last_warning > 30:
                    self._last_warning = time.monotonic()
                    log.warning("cache invalidation bus lost; in-process cache off until it "
                                "is back", bus=self.name, error=f"{type(exc).__name__}: {exc}")
            if self.healthy:
                self.healthy = False
                on_reset()
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)

    def _subscribed(self, on_reset: OnReset) -> None:
        on_reset()  # whatever was announced while we were away is unknown: start empty
        self.healthy = True
        self._up.set()

    async def session(self, on_change: OnChange, on_reset: OnReset) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.healthy = False


class RedisBus(_Listener):
    name = "redis"
    CHANNEL = "tl:uid:changes"

    def __init__(self, url: str) -> None:
        super().__init__()
        import redis.asyncio as redis

        self.url = url
        self._publisher = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)

    async def session(self, on_change: OnChange, on_reset: OnReset) -> None:
        import redis.asyncio as redis

        # No read timeout on the subscriber (it waits for messages); health checks find a
        # dead connection within seconds instead.
        client = redis.Redis.from_url(self.url, socket_connect_timeout=2,
                                      health_check_interval=2, socket_keepalive=True)
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(self.CHANNEL)
            self._subscribed(on_reset)
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None:
                    await pubsub.ping()  # finds a connection that died quietly
                    continue
                change = _decode(message.get("data"))
                if change is not None:
                    on_change(*change)
        finally:
            await pubsub.aclose()
            await client.aclose()

    async def publish(self, formation: str, keys: list[str]) -> None:
        for payload in payloads(formation, keys):
            await self._publisher.publish(self.CHANNEL, payload)

    async def close(self) -> None:
        await super().close()
        await self._publisher.aclose()


class PostgresBus(_Listener):
    """LISTEN on a connection of its own (the pool's connections keep no session state);
    NOTIFY through the pool."""

    name = "postgres"
    CHANNEL = "threadline_identity"

    def __init__(self, db: Any) -> None:
        super().__init__()
        self.db = db

    async def session(self, on_change: OnChange, on_reset: OnReset) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.db.url, timeout=5)
        lost = asyncio.Event()

        def heard(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            change = _decode(payload)
            if change is not None:
                on_change(*change)

        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            await conn.add_listener(self.CHANNEL, heard)
            self._subscribed(on_reset)
            while not lost.is_set():
                try:
                    await asyncio.wait_for(lost.wait(), 2.0)
                except TimeoutError:
                    await conn.execute("SELECT 1", timeout=2)  # a quietly dead connection
            raise ConnectionError("the LISTEN connection closed")
        finally:
            if not conn.is_closed():
                conn.terminate()

    async def publish(self, formation: str, keys: list[str]) -> None:
        for payload in payloads(formation, keys):
            await self.db.execute("SELECT pg_notify($1, $2)", self.CHANNEL, payload)


class SqliteBus(_Listener):
    """One serving process per SQLite file, but the command line (`threadline users …`)
    writes from processes of its own. SQLite's data_version, read on the connection this
    process writes through, moves only when another process commits: then the in-process
    tier starts empty. Polled once a second; announcing is implicit in the commit."""

    name = "sqlite"

    def __init__(self, db: Any, interval: float = 1.0) -> None:
        super().__init__()
        self.db, self.interval = db, interval

    async def _version(self) -> int:
        async with self.db.writer.execute("PRAGMA data_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0])

    async def session(self, on_change: OnChange, on_reset: OnReset) -> None:
        seen = await self._version()
        self._subscribed(on_reset)
        while True:
            await asyncio.sleep(self.interval)
            version = await self._version()
            if version != seen:
                seen = version
                on_reset()

    async def publish(self, formation: str, keys: list[str]) -> None:
        return None
