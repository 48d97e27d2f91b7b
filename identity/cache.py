"""The identifier -> user cache, on aiocache: bounded in memory, or shared in Redis.

A stale mapping must never outlive a change, even when a lookup races with `associate` or
`unlink` in another process. A cache fill therefore first writes a pending marker, reads the
database, then stores the answer only if the marker is still there (compare-and-set);
invalidation deletes the key after the change commits, so a fill that started before the
change can no longer land.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import structlog
from aiocache.base import BaseCache
from aiocache.serializers import NullSerializer, StringSerializer

from identity.cache_bus import Bus, PostgresBus, RedisBus, SqliteBus

log = structlog.get_logger("threadline.cache")

_PENDING = "~pending:"
_PENDING_TTL = 30.0


class BoundedMemoryCache(BaseCache):  # type: ignore[misc]  # aiocache is untyped
    """aiocache's in-memory backend with an entry limit (least recently used evicted first).

    Expiry is checked on read instead of one timer per key, which keeps a full cache cheap.
    """

    NAME = "bounded-memory"

    def __init__(self, max_entries: int = 100_000, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", NullSerializer())
        kwargs.setdefault("timeout", None)  # no I/O to time out
        super().__init__(**kwargs)
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[Any, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def _live(self, key: str) -> Any:
        item = self._data.get(key)
        if item is None:
            return None
        value, expires = item
        if expires and expires < time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    async def _get(self, key: str, encoding: str = "utf-8", _conn: Any = None) -> Any:
        return self._live(key)

    async def _multi_get(self, keys: Iterable[str], encoding: str = "utf-8",
                         _conn: Any = None) -> list[Any]:
        return [self._live(k) for k in keys]

    async def _set(self, key: str, value: Any, ttl: Any = None, _cas_token: Any = None,
                   _conn: Any = None) -> Any:
        if _cas_token is not None and _cas_token != self._live(key):
            return 0
        self.put(key, value, ttl)
        return True

    async def _multi_set(self, pairs: Iterable[tuple[str, Any]], ttl: Any = None,
                         _conn: Any = None) -> bool:
        for key, value in pairs:
            await self._set(key, value, ttl=ttl)
        return True

    async def _add(self, key: str, value: Any, ttl: Any = None, _conn: Any = None) -> bool:
        if self._live(key) is not None:
            raise ValueError(f"Key {key} already exists, use .set to update the value")
        return bool(await self._set(key, value, ttl=ttl))

    async def _exists(self, key: str, _conn: Any = None) -> bool:
        return self._live(key) is not None

    async def _delete(self, key: str, _conn: Any = None) -> int:
        return 1 if self._data.pop(key, None) is not None else 0

    async def _clear(self, namespace: str | None = None, _conn: Any = None) -> bool:
        if namespace:
            for key in [k for k in self._data if k.startswith(namespace)]:
                del self._data[key]
        else:
            self._data.clear()
        return True

    async def _expire(self, key: str, ttl: Any, _conn: Any = None) -> bool:
        value = self._live(key)
        if value is None:
            return False
        self._data[key] = (value, time.monotonic() + ttl if ttl else 0.0)
        return True

    async def _close(self, *args: Any, _conn: Any = None, **kwargs: Any) -> None:
        return None

    # Synchronous, for a bus callback that must drop entries the moment it hears of them.

    def peek(self, key: str) -> Any:
        return self._live(key)

    def put(self, key: str, value: Any, ttl: float | None) -> None:
        self._data[key] = (value, time.monotonic() + ttl if ttl else 0.0)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)

    def drop(self, key: str) -> None:
        self._data.pop(key, None)

    def drop_all(self) -> None:
        self._data.clear()


def make_backend(url: str, *, max_entries: int) -> BaseCache:
    """`memory://` (the default) or `redis://host:port/db`."""
    parts = urlsplit(url or "memory://")
    if parts.scheme == "memory":
        return BoundedMemoryCache(max_entries=max_entries)
    if parts.scheme in ("redis", "rediss"):
        from aiocache import RedisCache

        db = int(parts.path.strip("/") or 0)
        return RedisCache(
            endpoint=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=db,
            password=parts.password,
            ssl=parts.scheme == "rediss",
            serializer=StringSerializer(),
            timeout=2,
        )
    raise ValueError(f"unsupported cache URL {url!r}: use memory:// or redis://host:port/db")


def make_cache(url: str, db: Any, *, ttl: float = 3600.0,
               max_entries: int = 100_000) -> IdentityCache:
    """The cache a serving process wants for its database. Redis: an in-process tier in
    front, emptied of changes by Redis pub/sub. Memory: the in-process tier alone, emptied
    of other processes' changes by PostgreSQL LISTEN/NOTIFY, or on SQLite by noticing
    another process's commit. Call `start()` before use."""
    backend = make_backend(url, max_entries=max_entries)
    bus: Bus
    local = None
    if not isinstance(backend, BoundedMemoryCache):
        local, bus = BoundedMemoryCache(max_entries=max_entries), RedisBus(url)
    elif db.dialect == "postgres":
        bus = PostgresBus(db)
    else:
        bus = SqliteBus(db)
    return IdentityCache(backend, ttl=ttl, local=local, bus=bus)


class IdentityCache:
    """Identifier key -> user id, in up to two tiers.

    - `backend` memory, no bus: one process (SQLite's embedded default).
    - `backend` memory, a PostgreSQL bus: each replica's own cache, emptied of a changed
      identifier at once by every replica (LISTEN/NOTIFY).
    - `backend` Redis, `local` in front, a Redis bus: the in-process tier answers most
      lookups; Redis is shared; pub/sub empties the in-process tiers of a change.

    A failing Redis is skipped for `retry_after` seconds (lookups go to the database, the
    cache reports itself degraded, one warning per interval); deletes it missed are sent
    when it is back. A bus that is down turns the in-process tier off until it is back."""

    def __init__(self, backend: BaseCache, *, ttl: float = 3600.0,
                 local: BoundedMemoryCache | None = None, bus: Bus | None = None,
                 retry_after: float = 5.0) -> None:
        self.backend = backend
        self.ttl = ttl
        self.bus = bus
        self.retry_after = retry_after
        shared = not isinstance(backend, BoundedMemoryCache)
        self.remote: BaseCache | None = backend if shared else None
        self.local: BoundedMemoryCache | None = local if shared else backend
        self._generation = 0  # moves on every change heard: a fill that saw it moves on
        self._remote_down_until = 0.0
        self._remote_error = ""
        self._warned_at = 0.0
        self._unsent: set[str] = set()  # Redis deletes that failed, sent when it is back

    @property
    def shared(self) -> bool:
        return self.remote is not None

    @staticmethod
    def key(formation: str, identifier_key: str) -> str:
        return f"tl:uid:{formation}:{identifier_key}"

    async def start(self) -> None:
        """Listen for other processes' changes (when there is a bus)."""
        if self.bus is not None:
            await self.bus.start(self._heard, self._reset)

    def _heard(self, formation: str, identifier_keys: list[str]) -> None:
        self._generation += 1
        if self.local is not None:
            for identifier_key in identifier_keys:
                self.local.drop(self.key(formation, identifier_key))

    def _reset(self) -> None:
        self._generation += 1
        if self.local is not None:
            self.local.drop_all()

    def _local_usable(self) -> bool:
        return self.local is not None and (self.bus is None or self.bus.healthy)

    def _remote_usable(self) -> bool:
        return self.remote is not None and time.monotonic() >= self._remote_down_until

    def _remote_failed(self, exc: BaseException) -> None:
        self._remote_down_until = time.monotonic() + self.retry_after
        self._remote_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if time.monotonic() - self._warned_at >= self.retry_after:
            self._warned_at = time.monotonic()
            log.warning("cache unavailable; resolving from the database",
                        error=self._remote_error, retry_in_s=self.retry_after)

    async def _remote(self, work: Callable[[BaseCache], Awaitable[Any]]) -> tuple[bool, Any]:
        """(ok, result) of one Redis operation; sends missed deletes first once it is back."""
        assert self.remote is not None
        try:
            if self._unsent:
                for key in list(self._unsent):
                    await self.remote.delete(key)
                    self._unsent.discard(key)
            return True, await work(self.remote)
        except Exception as exc:  # noqa: BLE001 - any cache failure: the database answers
            self._remote_failed(exc)
            return False, None

    async def get(self, formation: str, identifier_key: str) -> str | None:
        key = self.key(formation, identifier_key)
        if self._local_usable():
            assert self.local is not None
            value = self.local.peek(key)
            if _found(value):
                return value  # type: ignore[no-any-return]
        if not self._remote_usable():
            return None
        generation = self._generation
        ok, value = await self._remote(lambda r: r.get(key))
        if not ok or not _found(value):
            return None
        if self._local_usable() and generation == self._generation:
            self.local.put(key, value, self.ttl)  # type: ignore[union-attr]
        return value  # type: ignore[no-any-return]

    async def fill(
        self, formation: str, identifier_key: str, load: Callable[[], Awaitable[str | None]]
    ) -> str | None:
        """Load from the database and cache the answer unless a change raced with us."""
        key = self.key(formation, identifier_key)
        generation = self._generation
        pending = False
        if self._remote_usable():
            token = _PENDING + uuid.uuid4().hex
            pending, _ = await self._remote(lambda r: r.set(key, token, ttl=_PENDING_TTL))
        value = await load()
        if value is None:
            return value
        stored = self.remote is None
        if pending:
            ok, done = await self._remote(
                lambda r: r.set(key, value, ttl=self.ttl, _cas_token=token))
            stored = ok and bool(done)
        if stored and self._local_usable() and generation == self._generation:
            self.local.put(key, value, self.ttl)  # type: ignore[union-attr]
        return value

    async def invalidate(self, formation: str, identifier_keys: Iterable[str]) -> None:
        keys = list(identifier_keys)
        self._heard(formation, keys)
        if self.remote is not None:
            cache_keys = [self.key(formation, k) for k in keys]
            if self._remote_usable():
                async def delete(remote: BaseCache) -> None:
                    for cache_key in cache_keys:
                        await remote.delete(cache_key)

                if not (await self._remote(delete))[0]:
                    self._unsent.update(cache_keys)
            else:
                self._unsent.update(cache_keys)
        if self.bus is not None:
            await self.bus.publish(formation, keys)

    async def status(self) -> dict[str, Any]:
        """For readiness: `up`, or `degraded` (lookups go to the database) with why."""
        problems = []
        if self.remote is not None:
            if self._remote_usable():
                try:
                    await asyncio.wait_for(self.remote.exists("tl:ready"), 2)
                except Exception as exc:  # noqa: BLE001
                    self._remote_failed(exc)
            if not self._remote_usable():
                problems.append(f"redis: {self._remote_error}")
        if self.bus is not None and not self.bus.healthy:
            problems.append(f"{self.bus.name} invalidation bus down; in-process cache off")
        if problems:
            return {"status": "degraded", "error": "; ".join(problems)}
        return {"status": "up", "tiers": ["memory", "redis"] if self.remote and self.local
                else ["redis"] if self.remote else ["memory"],
                "bus": self.bus.name if self.bus else None}

    async def close(self) -> None:
        if self.bus is not None:
            await self.bus.close()
        await self.backend.close()
        if self.local is not None and self.local is not self.backend:
            await self.local.close()


def _found(value: Any) -> bool:
    return isinstance(value, str) and not value.startswith(_PENDING)
