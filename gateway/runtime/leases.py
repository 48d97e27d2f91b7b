"""Work that must run in one replica at a time (Telegram long polling, the Discord gateway,
an IMAP mailbox, the scheduler) runs under a lease.

On PostgreSQL a lease is a session advisory lock held on a connection of the lease keeper's
own: when its process dies the connection closes and PostgreSQL frees the lock, and a
waiting replica takes it within `interval` seconds. A keeper that loses its connection
loses every lease at once and stops the work they guard. On SQLite (one serving process)
every lease is granted.

A group of leases can be spread across the replicas (see `gateway.runtime.shards`): each
replica that runs the group is a member, shown by a shared advisory lock of its keeper, and
`roster` reads from `pg_locks` who the members are and who holds which lease."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Roster:
    """Who runs a group of leases, as PostgreSQL sees it now. Replicas are named by their
    keeper connection's backend pid."""

    me: int
    members: Mapping[int, float]  # replica -> seconds since its keeper last said anything
    holders: Mapping[str, int]  # lease name -> the replica holding it (held ones only)


# Advisory locks held in this database, keyed as pg_try_advisory_lock(bigint) keys them:
# the high half in classid, the low half in objid (objsubid 1).
_ROSTER = """
WITH keys(name, k) AS (
    SELECT n, hashtext('threadline:lease:' || n)::bigint FROM unnest($2::text[]) AS n
    UNION ALL SELECT NULL, hashtext('threadline:members:' || $1)::bigint
)
SELECT keys.name, l.pid,
       coalesce(extract(epoch FROM now() - a.state_change), 0)::float8 AS quiet
FROM keys
JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
 AND l.classid::bigint = (keys.k >> 32) & 4294967295 AND l.objid::bigint = keys.k & 4294967295
LEFT JOIN pg_stat_activity a ON a.pid = l.pid
"""

_JOIN = "SELECT pg_advisory_lock_shared(hashtext('threadline:members:' || $1))"
_LEAVE = "SELECT pg_advisory_unlock_shared(hashtext('threadline:members:' || $1))"


class PostgresLeases:
    def __init__(self, url: str, *, interval: float = 1.0) -> None:
        self.url, self.interval = url, interval
        self._conn: Any = None
        self._lock = asyncio.Lock()  # one statement at a time on the keeper's connection
        # Held leases: the connection holding each, and the event set when it is lost.
        self._lost: dict[str, tuple[Any, asyncio.Event]] = {}
        self._groups: set[str] = set()  # groups this replica is a member of
        self._watch: asyncio.Task[None] | None = None

    async def _connection(self) -> Any:
        import asyncpg

        if self._conn is None or self._conn.is_closed():
            conn = await asyncpg.connect(self.url, timeout=5)
            try:
                for group in self._groups:  # a new connection is a member again at once
                    await conn.execute(_JOIN, group)
            except BaseException:
                conn.terminate()
                raise
            self._conn = conn
            self._watch = asyncio.create_task(self._watch_connection(conn))
        return self._conn

    async def _watch_connection(self, conn: Any) -> None:
        """A lost connection has lost its locks: tell every holder."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                async with self._lock:
                    await conn.execute("SELECT 1", timeout=max(self.interval, 2.0))
            except Exception as exc:  # noqa: BLE001 - any failure: the locks are gone
                # Not the leases taken on a newer connection meanwhile.
                gone = sorted(name for name, (holder, _) in self._lost.items() if holder is conn)
                log.warning("lease connection lost; giving up held work",
                            leases=gone, error=f"{type(exc).__name__}: {exc}")
                for name in gone:
                    self._lost.pop(name)[1].set()
                with contextlib.suppress(Exception):
                    conn.terminate()
                return

    async def take(self, name: str) -> asyncio.Event | None:
        """Take the lease `name` if it is free: an event set when it is lost, else None."""
        async with self._lock:
            conn = await self._connection()
            if not await conn.fetchval(
                    "SELECT pg_try_advisory_lock(hashtext('threadline:lease:' || $1))", name):
                return None
            lost = asyncio.Event()
            self._lost[name] = (conn, lost)  # before the watch can look again
            return lost

    async def release(self, name: str, lost: asyncio.Event) -> None:
        """Give back a lease `take` gave (nothing to do once it is lost)."""
        held = self._lost.get(name)
        if held is None or held[1] is not lost:
            return
        del self._lost[name]
        with contextlib.suppress(Exception):
            async with self._lock:
                await held[0].execute(
                    "SELECT pg_advisory_unlock(hashtext('threadline:lease:' || $1))", name)

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[asyncio.Event]:
        waited, warned = False, -WARN_EVERY
        while True:
            try:
                lost = await self.take(name)
                if lost is not None:
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
        log.info("lease taken", lease=name)
        try:
            yield lost
        finally:
            await self.release(name, lost)

    async def join(self, group: str) -> None:
        """Count this replica among the members of `group` while its keeper is connected."""
        if group in self._groups:
            return
        async with self._lock:
            conn = self._conn
            if conn is not None and not conn.is_closed():
                await conn.execute(_JOIN, group)
                self._groups.add(group)
            else:
                self._groups.add(group)
                await self._connection()  # joins every group as it connects

    async def leave(self, group: str) -> None:
        if group not in self._groups:
            return
        self._groups.discard(group)
        with contextlib.suppress(Exception):
            async with self._lock:
                if self._conn is not None and not self._conn.is_closed():
                    await self._conn.execute(_LEAVE, group)

    async def roster(self, group: str, names: list[str]) -> Roster:
        """The members of `group` and the holders of the leases `names`, in one read."""
        async with self._lock:
            conn = await self._connection()
            rows = await conn.fetch(_ROSTER, group, names, timeout=max(self.interval, 2.0))
            me = conn.get_server_pid()
        members = {row["pid"]: row["quiet"] for row in rows if row["name"] is None}
        holders = {row["name"]: row["pid"] for row in rows if row["name"] is not None}
        return Roster(me, members, holders)

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


async def until_lost(work: Any, lost: asyncio.Event) -> bool:
    """Run `work()` until it returns (True; its exception is raised) or the lease is lost
    (False: it has been stopped). Cancelled: the work is stopped first."""
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
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return False


async def run_under(leases: Leases, name: str, work: Any, *,
                    standby: Callable[[], None] | None = None) -> None:
    """Run `work()` (a coroutine function) whenever this replica holds the lease; when the
    lease is lost, stop it and wait for the lease again (`standby()` says so). Returns when
    the work returns; ends when cancelled."""
    while True:
        if standby is not None:
            standby()
        async with leases.hold(name) as lost:
            if await until_lost(work, lost):
                return  # the work ended by itself (or raised): the caller decides
            log.warning("lease lost; work stopped until it is held again", lease=name)
