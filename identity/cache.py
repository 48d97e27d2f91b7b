"""The identifier -> user cache, on aiocache: bounded in memory, or shared in Redis.

A stale mapping must never outlive a change, even when a lookup races with `associate` or
`unlink` in another process. A cache fill therefore first writes a pending marker, reads the
database, then stores the answer only if the marker is still there (compare-and-set);
invalidation deletes the key after the change commits, so a fill that started before the
change can no longer land.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from aiocache.base import BaseCache
from aiocache.serializers import NullSerializer, StringSerializer

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
        self._data[key] = (value, time.monotonic() + ttl if ttl else 0.0)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
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


class IdentityCache:
    def __init__(self, backend: BaseCache, *, ttl: float = 3600.0) -> None:
        self.backend = backend
        self.ttl = ttl

    @property
    def shared(self) -> bool:
        return not isinstance(self.backend, BoundedMemoryCache)

    @staticmethod
    def key(formation: str, identifier_key: str) -> str:
        return f"tl:uid:{formation}:{identifier_key}"

    async def get(self, formation: str, identifier_key: str) -> str | None:
        value = await self.backend.get(self.key(formation, identifier_key))
        if not isinstance(value, str) or value.startswith(_PENDING):
            return None
        return value

    async def fill(
        self, formation: str, identifier_key: str, load: Callable[[], Awaitable[str | None]]
    ) -> str | None:
        """Load from the database and cache the answer unless a change raced with us."""
        key = self.key(formation, identifier_key)
        token = _PENDING + uuid.uuid4().hex
        await self.backend.set(key, token, ttl=_PENDING_TTL)
        value = await load()
        if value is not None:
            await self.backend.set(key, value, ttl=self.ttl, _cas_token=token)
        return value

    async def invalidate(self, formation: str, identifier_keys: Iterable[str]) -> None:
        for identifier_key in identifier_keys:
            await self.backend.delete(self.key(formation, identifier_key))

    async def close(self) -> None:
        await self.backend.close()
