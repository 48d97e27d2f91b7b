"""Work that must run in one replica at a time (Telegram long polling, the Discord gateway,
an IMAP mailbox, the scheduler) runs under a lease.

On PostgreSQL a lease is a session advisory lock held on a connection of the lease keeper's
own: when its process dies the connection closes and PostgreSQL frees the lock, and a
waiting replica takes it within `interval` seconds. A keeper that loses its connection
loses every lease at once and stops the work they guard. On SQLite (one serving process)
every lease is granted."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import structlog

log = structlog.get_logger("threadline.leases")

WARN_EVERY = 30.0  # seconds between warnings while a lease cannot even be asked for


class Leases(Protocol):
    def hold(self, name: str) -> contextlib.AbstractAsyncContextManager[asyncio.Event]:
        """Wait until this replica holds the lease `name`; yields an event set when the
        lease is lost (the work must stop); released on exit."""
        ...  # pragma: no cover

    async def close(self) -> None: ...


class LocalLeases:
    """One process: every lease is held at once and never lost."""

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[asyncio.Event]:
        yield asyncio.Event()

    async def close(self) -> None:
        return None


class PostgresLeases:
    def __init__(self, url: str, *, interval: float = 1.0) -> None:
        self.url, self.interval = url, interval
        self._conn: Any = None
        self._lock = asyncio.Lock()  # one statement at a time on the keeper's connection
        self._lost: dict[str, asyncio.Event] = {}
        self._watch: asyncio.Task[None] | None = None

    async def _connection(self) -> Any:
        import asyncpg

        if self._conn is None or self._conn.is_closed():
            self._conn = await asyncpg.connect(self.url, timeout=5)
            self._watch = asyncio.create_task(self._watch_connection(self._conn))
        return self._conn

    async def _watch_connection(self, conn: Any) -> None:
        """A lost connection has lost its locks: tell every holder."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                async with self._lock:
                    await conn.execute("SELECT 1", timeout=max(self.interval, 2.0))
            except Exception as exc:  # noqa: BLE001 - any failure: the locks are gone
                log.warning("lease connection lost; giving up held work",
                            leases=sorted(self._lost), error=f"{type(exc).__name__}: {exc}")
                for lost in self._lost.values():
                    lost.set()
                self._lost.clear()
                with contextlib.suppress(Exception):
                    conn.terminate()
                return

    async def _try(self, name: str) -> bool:
        async with self._lock:
            conn = await self._connection()
            return bool(await conn.fetchval(
                "SELECT pg_try_advisory_lock(hashtext('threadline:lease:' || $1))", name))

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[asyncio.Event]:
        waited, warned = False, -WARN_EVERY
        while True:
            try:
                if await self._try(name):
                    break
                if not waited:
                    waited = True
                    log.info("lease held by another replica; standing by", lease=name)
            except Exception as exc:  # noqa: BLE001 - the database may be back soon
                # Asked again every `interval`: one line per outage, not one per attempt.
                if time.monotonic() - warned >= WARN_EVERY:
                    warned = time.monotonic()
                    log.warning("cannot ask for a lease", lease=name,
                                error=f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(self.interval)
        lost = asyncio.Event()
        self._lost[name] = lost
        log.info("lease taken", lease=name)
        try:
            yield lost
        finally:
            self._lost.pop(name, None)
            if not lost.is_set():
                with contextlib.suppress(Exception):
                    async with self._lock:
                        await self._conn.execute(
                            "SELECT pg_advisory_unlock(hashtext('threadline:lease:' || $1))",
                            name)

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        if self._conn is not None and not self._conn.is_closed():
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=2)


def make_leases(db: Any) -> Leases:
    if db.dialect == "postgres":
        return PostgresLeases(db.url)
    return LocalLeases()


async def run_under(leases: Leases, name: str, work: Any, *,
                    standby: Callable[[], None] | None = None) -> None:
    """Run `work()` (a coroutine function) whenever this replica holds the lease; when the
    lease is lost, stop it and wait for the lease again (`standby()` says so). Returns when
    the work returns; ends when cancelled."""
    while True:
        if standby is not None:
            standby()
        async with leases.hold(name) as lost:
            task = asyncio.create_task(work())
            waiter = asyncio.create_task(lost.wait())
            try:
                done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                task.cancel()
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise
            waiter.cancel()
            if task in done:
                task.result()  # the work ended by itself (or raised): the caller decides
                return
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            log.warning("lease lost; work stopped until it is held again", lease=name)
