"""Connections for the two supported databases, and the dialect hooks the stores share.

PostgreSQL goes through an asyncpg pool. SQLite goes through aiosqlite in WAL mode with one
writer connection (guarded by a lock, transactions opened with BEGIN IMMEDIATE so that other
processes wait their turn) and one reader connection for plain lookups.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import aiosqlite
import asyncpg
import structlog

from config.errors import ThreadlineError
from identity.storage.migrations import (
    IDENTITY_SCHEMA,
    Migration,
    Schema,
    migrations_for,
    statements,
)

log = structlog.get_logger("threadline.database")

class DatabaseError(ThreadlineError):
    """The database cannot be reached or is not in a usable state."""


class DatabaseUnavailableError(DatabaseError):
    """The server went away or refuses connections for now (refused, shutting down,
    connection lost): the same request will work once it is back, unlike a bad query."""


# The server's own "go away": connection failures (SQLSTATE 08), shutting down or starting
# up (57P01-57P03), no connection slot left (53300).
_UNAVAILABLE = (asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                asyncpg.exceptions.AdminShutdownError, asyncpg.exceptions.CrashShutdownError,
                asyncpg.TooManyConnectionsError)


def is_connection_error(exc: BaseException) -> bool:
    """The database is unreachable, as opposed to a statement that failed."""
    return isinstance(exc, _UNAVAILABLE) or (
        isinstance(exc, asyncpg.InterfaceError) and "connection is closed" in str(exc))


def _unavailable(exc: BaseException) -> DatabaseUnavailableError:
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return DatabaseUnavailableError(f"the database is unavailable ({reason})")


def is_unique_violation(exc: BaseException) -> bool:
    """An insert that lost a race for a unique value, on either database."""
    return isinstance(exc, asyncpg.UniqueViolationError) or (
        isinstance(exc, sqlite3.IntegrityError) and "UNIQUE constraint failed" in str(exc))


def is_foreign_key_violation(exc: BaseException) -> bool:
    """A write naming a row that is gone (a user merged away meanwhile), on either database."""
    return isinstance(exc, asyncpg.ForeignKeyViolationError) or (
        isinstance(exc, sqlite3.IntegrityError) and "FOREIGN KEY constraint failed" in str(exc))


def describe_url(url: str) -> str:
    """The URL without its password, for logs and status output."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


class Database:
    """A database with one query API for both dialects: SQL is written with $1, $2 …
    placeholders (PostgreSQL's), which SQLite receives as ?1, ?2 …

    `schema` names the components whose migrations this database gets (the wiring says
    which: identity's, memory's); see `identity.storage.migrations`."""

    dialect: str
    url: str
    schema: Schema

    def transaction(self) -> Any:
        """`async with db.transaction() as tx:` where tx has the query methods below."""
        raise NotImplementedError

    def reading(self) -> Any:
        """`async with db.reading() as q:` one connection for several reads in a row."""
        raise NotImplementedError

    async def execute(self, sql: str, *args: Any) -> None:
        async with self.transaction() as tx:
            await tx.execute(sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        raise NotImplementedError

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return row[0] if row else None

    async def close(self) -> None:
        raise NotImplementedError

    async def migrate(self) -> list[Migration]:
        """Apply pending migrations; returns what was applied."""
        raise NotImplementedError

    async def pending_migrations(self) -> list[Migration]:
        raise NotImplementedError


def sqlite_path(url: str) -> str:
    if url in ("sqlite://:memory:", "sqlite:///:memory:"):
        raise DatabaseError("in-memory SQLite cannot be shared between connections; use a file")
    if not url.startswith("sqlite:///"):
        raise DatabaseError(f"a SQLite URL looks like sqlite:///path/to/file.db, got {url!r}")
    # sqlite:///relative.db and sqlite:////absolute.db, as SQLAlchemy spells them.
    return url[len("sqlite:///"):]


async def connect(url: str, *, pool_size: int = 10, schema: Schema | None = None) -> Database:
    """Open the database at `url`, whose migrations are those of `schema` (by default the
    identity core's alone; the wiring adds memory's)."""
    scheme = urlsplit(url).scheme
    db: Database
    if scheme in ("postgres", "postgresql"):
        db = await PostgresDatabase.open(url, pool_size=pool_size)
    elif scheme == "sqlite":
        db = await SqliteDatabase.open(url)
    else:
        raise DatabaseError(
            f"unsupported database URL scheme {scheme!r}: use postgresql://… or sqlite:///path"
        )
    db.schema = dict(schema) if schema is not None else dict(IDENTITY_SCHEMA)
    return db


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release without asyncpg's default reset query (one round trip per checkout).
    Safe here: Threadline keeps no session state (its advisory locks are per transaction,
    no LISTEN, no SET), and asyncpg still rolls back an open transaction."""


def _usable(conn: Any) -> bool:
    """Open and still ours: when the server closes a connection, asyncpg hands it back to
    the pool by itself, and then any call on it raises InterfaceError."""
    try:
        return not conn.is_closed()
    except asyncpg.InterfaceError:
        return False


class PostgresDatabase(Database):
    dialect = "postgres"

    def __init__(self, url: str, pool: asyncpg.Pool) -> None:
        self.url = url
        self.pool = pool
        # Connections taken from the pool and kept between statements: asyncpg's own
        # checkout (a task per release, a timer per idle connection) costs about as much as
        # a primary-key lookup, and a turn makes three or four of them.
        self._idle: list[asyncpg.Connection] = []
        self._waiting = 0  # callers waiting on the pool: a connection done with goes to them

    @classmethod
    async def open(cls, url: str, *, pool_size: int = 10) -> PostgresDatabase:
        try:
            # timeout: connecting to a server that does not answer (a dropped route) gives up
            # after 10 s instead of asyncpg's 60, so requests answer 503 in time.
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=pool_size, command_timeout=30, reset=_keep_session,
                timeout=10,
            )
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise DatabaseError(
                f"cannot connect to PostgreSQL at {describe_url(url)}: {exc}"
            ) from exc
        return cls(url, pool)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await self.pool.release(conn)
        await self.pool.close()

    async def _checkout(self) -> asyncpg.Connection:
        """A connection: one kept from earlier, else the pool's. Losing the server while
        connecting raises DatabaseUnavailableError."""
        while self._idle:
            conn = self._idle.pop()
            if _usable(conn):
                return conn
            await self.pool.release(conn)  # the server closed it: the pool drops it
        self._waiting += 1
        try:
            return await self.pool.acquire()
        except (OSError, TimeoutError, *_UNAVAILABLE) as exc:
            raise _unavailable(exc) from exc
        finally:
            self._waiting -= 1

    def _checkin(self, conn: asyncpg.Connection) -> Awaitable[None] | None:
        """After a clean use: keep the connection for the next statement, unless someone
        waits on the pool (or it is closed, or mid-transaction): then the pool takes it."""
        if self._waiting or not _usable(conn) or conn.is_in_transaction():
            return self.pool.release(conn)  # type: ignore[no-any-return]  # asyncpg: untyped
        self._idle.append(conn)
        return None

    async def _failed(self, conn: asyncpg.Connection, exc: BaseException) -> NoReturn:
        """Cancelled mid-statement or failed: asyncpg's release (shielded from the
        cancellation) waits out a cancelled statement and drops a broken connection."""
        await self.pool.release(conn)
        if isinstance(exc, Exception) and is_connection_error(exc):
            raise _unavailable(exc) from exc
        raise exc

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection. Losing the server, while connecting or while using it,
        raises DatabaseUnavailableError; a connection it closed is dropped from the pool on
        release, so the next request connects afresh."""
        conn = await self._checkout()
        try:
            yield conn
        except BaseException as exc:
            await self._failed(conn, exc)
        if (released := self._checkin(conn)) is not None:
            await released

    async def _one(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        """One statement on a connection of its own: `_connection` without the context
        manager, since most statements a turn makes go this way."""
        conn = await self._checkout()
        try:
            result = await getattr(conn, method)(sql, *args)
        except BaseException as exc:
            await self._failed(conn, exc)
        if (released := self._checkin(conn)) is not None:
            await released
        return result

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._connection() as conn, conn.transaction():
            yield conn

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[asyncpg.Connection]:
        async with self._connection() as conn:
            yield conn

    async def execute(self, sql: str, *args: Any) -> None:
        await self._one("execute", sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return list(await self._one("fetch", sql, args))

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return await self._one("fetchrow", sql, args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._one("fetchval", sql, args)

    async def _applied(self, conn: asyncpg.Connection) -> set[tuple[str, int]]:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " component TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,"
            " applied_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (component, version))"
        )
        rows = await conn.fetch("SELECT component, version FROM schema_migrations")
        return {(r["component"], r["version"]) for r in rows}

    async def pending_migrations(self) -> list[Migration]:
        async with self._connection() as conn:
            exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
            applied = await self._applied(conn) if exists else set()
        return [m for m in migrations_for(self.dialect, self.schema)
                if (m.component, m.version) not in applied]

    async def migrate(self) -> list[Migration]:
        done = []
        async with self._connection() as conn, conn.transaction():
            # One migrator at a time across every process sharing the database.
            await conn.execute("SELECT pg_advisory_xact_lock(7352491)")
            applied = await self._applied(conn)
            for m in migrations_for(self.dialect, self.schema):
                if (m.component, m.version) in applied:
                    continue
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (component, version, name) VALUES ($1, $2, $3)",
                    m.component, m.version, m.name,
                )
                done.append(m)
        for m in done:
            log.info("migration applied", component=m.component, version=m.version, name=m.name)
        return done


# SQLite's own "not now": the file is locked past the busy timeout, the disk is full, or
# it fails to read or write.
_SQLITE_UNAVAILABLE = ("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL", "SQLITE_IOERR")


@contextmanager
def _sqlite_outage() -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorname", "").startswith(_SQLITE_UNAVAILABLE):
            raise _unavailable(exc) from exc
        raise


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, url: str, writer: aiosqlite.Connection, reader: aiosqlite.Connection):
        self.url = url
        self.writer = writer
        self.reader = reader
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str) -> SqliteDatabase:
        path = Path(sqlite_path(url))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = await cls._connect(path)
            reader = await cls._connect(path)
        except (OSError, aiosqlite.Error) as exc:
            raise DatabaseError(f"cannot open SQLite database {path}: {exc}") from exc
        return cls(url, writer, reader)

    @staticmethod
    async def _connect(path: Path) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(path, isolation_level=None, timeout=30)
        conn.row_factory = aiosqlite.Row
        await conn.execute("PRAGMA busy_timeout = 30000")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.execute("PRAGMA foreign_keys = ON")
        return conn

    async def close(self) -> None:
        await self.reader.close()
        await self.writer.close()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction on the raw connection (? placeholders); other writers, in
        this process or another, wait for it (up to the busy timeout). A file still locked
        after that, or a full or failing disk, raises DatabaseUnavailableError: the same
        request works once it is free, as when PostgreSQL is away."""
        async with self._write_lock:
            with _sqlite_outage():
                await self.writer.execute("BEGIN IMMEDIATE")
                try:
                    yield self.writer
                    await self.writer.execute("COMMIT")
                except BaseException:
                    if self.writer.in_transaction:
                        await self.writer.execute("ROLLBACK")
                    raise

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[SqliteTransaction]:
        async with self.write() as conn:
            yield SqliteTransaction(conn)

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        with _sqlite_outage():
            return list(await self.reader.execute_fetchall(numbered(sql), args))

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[SqliteTransaction]:
        yield SqliteTransaction(self.reader)

    async def fetchone(self, sql: str, *args: Any) -> aiosqlite.Row | None:
        rows = await self.reader.execute_fetchall(sql, args)
        return rows[0] if rows else None  # type: ignore[index]

    async def fetchall(self, sql: str, *args: Any) -> list[aiosqlite.Row]:
        return list(await self.reader.execute_fetchall(sql, args))

    async def _applied(self, conn: aiosqlite.Connection) -> set[tuple[str, int]]:
        rows = await conn.execute_fetchall(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        )
        if not list(rows):
            return set()
        rows = await conn.execute_fetchall("SELECT component, version FROM schema_migrations")
        return {(r[0], r[1]) for r in rows}

    async def pending_migrations(self) -> list[Migration]:
        applied = await self._applied(self.reader)
        return [m for m in migrations_for(self.dialect, self.schema)
                if (m.component, m.version) not in applied]

    async def migrate(self) -> list[Migration]:
        done = []
        async with self.write() as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " component TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL,"
                " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),"
                " PRIMARY KEY (component, version))"
            )
            applied = await self._applied(conn)
            for m in migrations_for(self.dialect, self.schema):
                if (m.component, m.version) in applied:
                    continue
                # executescript would COMMIT our transaction; run statement by statement.
                for statement in statements(m.sql):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO schema_migrations (component, version, name) VALUES (?, ?, ?)",
                    (m.component, m.version, m.name),
                )
                done.append(m)
        for m in done:
            log.info("migration applied", component=m.component, version=m.version, name=m.name)
        return done


_PLACEHOLDER = re.compile(r"\$(\d+)")


def numbered(sql: str) -> str:
    """$1, $2 … placeholders as SQLite's ?1, ?2 …."""
    return _PLACEHOLDER.sub(r"?\1", sql)


class SqliteTransaction:
    """The portable query methods on one SQLite connection ($n placeholders)."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> None:
        await self._conn.execute(numbered(sql), args)

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        await self._conn.executemany(numbered(sql), rows)

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return list(await self._conn.execute_fetchall(numbered(sql), args))

    fetchrow = Database.fetchrow
    fetchval = Database.fetchval
