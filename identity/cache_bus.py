"""How replicas tell each other that identifier mappings changed, so each drops its
in-process cache entries at once: Redis pub/sub when the cache is Redis, PostgreSQL
LISTEN/NOTIFY when it is not. A bus that loses its connection says so (`healthy` False,
`on_reset`): the in-process tier is then emptied and bypassed until it is back, because a
change announced meanwhile would be missed."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import structlog

from identity.storage.pubsub import (
    MAX_PAYLOAD,
    listen_postgres,
    listen_redis,
    notify_postgres,
    redis_publisher,
    resubscribe,
)

log = structlog.get_logger("threadline.cache")

OnChange = Callable[[str, list[str]], None]  # (formation, identifier keys)
OnReset = Callable[[], None]


class Bus(Protocol):
    name: str
    healthy: bool

    async def start(self, on_change: OnChange, on_reset: OnReset) -> None: ...

    async def publish(self, formation: str, keys: list[str]) -> None: ...

    async def close(self) -> None: ...


def payloads(formation: str, keys: list[str], sender: str = "") -> list[str]:
    """The change as JSON messages, each small enough for NOTIFY."""
    def dump(batch: list[str]) -> str:
        return json.dumps({"f": formation, "k": batch, "s": sender})

    out, batch = [], []
    for key in keys:
        batch.append(key)
        if len(dump(batch)) > MAX_PAYLOAD and len(batch) > 1:
            out.append(dump(batch[:-1]))
            batch = [key]
    if batch:
        out.append(dump(batch))
    return out


def _decode(data: Any, me: str) -> tuple[str, list[str]] | None:
    """A change another process announced (this process applied its own already)."""
    try:
        message = json.loads(data)
        if message.get("s") == me:
            return None
        return str(message["f"]), [str(k) for k in message["k"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class _Listener:
    """The reconnecting loop both buses share: `session` holds one subscription open and
    returns (or raises) when it ends."""

    name = "bus"

    def __init__(self) -> None:
        self.healthy = False
        self.sender = uuid.uuid4().hex  # names this process's own announcements
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
        def lost(error: Exception | None) -> bool:
            if error is not None and time.monotonic() - self._last_warning > 30:
                self._last_warning = time.monotonic()
                log.warning("cache invalidation bus lost; in-process cache off until it "
                            "is back", bus=self.name, error=f"{type(error).__name__}: {error}")
            was_up, self.healthy = self.healthy, False
            if was_up:
                on_reset()
            return was_up

        await resubscribe(lambda: self.session(on_change, on_reset), lost)

    def _hearing(self, on_change: OnChange) -> Callable[[str], None]:
        def heard(payload: str) -> None:
            change = _decode(payload, self.sender)
            if change is not None:
                on_change(*change)
        return heard

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
        self.url = url
        self._publisher = redis_publisher(url)

    async def session(self, on_change: OnChange, on_reset: OnReset) -> None:
        await listen_redis(self.url, self.CHANNEL, self._hearing(on_change),
                           lambda: self._subscribed(on_reset))

    async def publish(self, formation: str, keys: list[str]) -> None:
        for payload in payloads(formation, keys, self.sender):
            await self._publisher.publish(self.CHANNEL, payload)

    async def close(self) -> None:
        await super().close()
        await self._publisher.aclose()


class PostgresBus(_Listener):
    name = "postgres"
    CHANNEL = "threadline_identity"

    def __init__(self, db: Any) -> None:
        super().__init__()
        self.db = db

    async def session(self, on_change: OnChange, on_reset: OnReset) -> None:
        await listen_postgres(self.db.url, self.CHANNEL, self._hearing(on_change),
                              lambda: self._subscribed(on_reset))

    async def publish(self, formation: str, keys: list[str]) -> None:
        for payload in payloads(formation, keys, self.sender):
            await notify_postgres(self.db, self.CHANNEL, payload)


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
