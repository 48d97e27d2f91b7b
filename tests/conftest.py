"""Shared fixtures: a throwaway PostgreSQL database per run, SQLite files, Redis.

PostgreSQL is the server on 127.0.0.1:5432 (or THREADLINE_TEST_POSTGRES_URL, an admin URL
whose user may create databases). Where it is missing the PostgreSQL tests skip with the
reason, unless THREADLINE_REQUIRE_SERVICES=1 (set by .ci/run), where they fail.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis

import memory
from gateway.runtime.logs import configure_logging
from identity import Database, IdentifierParser, IdentityService, connect, store_for
from identity.cache import BoundedMemoryCache, IdentityCache
from tests.peers.http import serving

ADMIN_URL = os.environ.get(
    "THREADLINE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("THREADLINE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE = os.environ.get("THREADLINE_REQUIRE_SERVICES") == "1"
TEST_SECRET = b"test-identity-secret-0123456789"

configure_logging("console", "info", cache=False)
logging.getLogger("mail.log").setLevel(logging.WARNING)  # the SMTP stand-in's every connection


def _missing(what: str, why: object) -> None:
    message = f"{what} is not reachable ({why})"
    if REQUIRE:
        pytest.fail(message + "; THREADLINE_REQUIRE_SERVICES=1 forbids skipping", pytrace=False)
    pytest.skip(message)


def _with_database(admin_url: str, name: str) -> str:
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh database for this test run, dropped afterwards."""

    name = f"threadline_test_{uuid.uuid4().hex[:12]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(ADMIN_URL, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
        _missing(f"PostgreSQL at {ADMIN_URL}", exc)
    url = _with_database(ADMIN_URL, name)
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        _missing(f"Redis at {REDIS_URL}", exc)
    return REDIS_URL


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("postgres_url")
    return f"sqlite:///{tmp_path / 'threadline.db'}"


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = await connect(database_url, schema=memory.SCHEMA)
    await database.migrate()
    yield database
    await database.close()


@pytest.fixture
def formation() -> str:
    """A formation of its own for each test, so tests never see each other's users."""
    return f"f{secrets.token_hex(6)}"


@pytest.fixture
def parser() -> IdentifierParser:
    return IdentifierParser(TEST_SECRET)


@pytest.fixture
async def identity(db: Database, parser: IdentifierParser) -> AsyncIterator[IdentityService]:
    cache = IdentityCache(BoundedMemoryCache(max_entries=1000), ttl=3600)
    yield IdentityService(store_for(db), cache, parser)
    await cache.close()


CREDENTIALS_KEY = b"kL3Z3fQ0m2nS4r8vYb1cD5eF7gH9iJ0kL2mN4oP6qR8="


@pytest.fixture
def memory_store(db: Database) -> memory.Memory:
    return memory.Memory.open(db, credentials_key=CREDENTIALS_KEY)


@pytest.fixture
def engine(identity: IdentityService, memory_store: memory.Memory, formation: str):
    from gateway.conversation.engine import Engine
    from gateway.conversation.responders.offline import OfflineResponder

    identity.store.on_merge(memory_store.merge_into)
    identity.store.on_erase(memory_store.erase_user)
    identity.store.on_unmerge(memory_store.unmerge)
    return Engine(identity, memory_store, OfflineResponder(), formation=formation)


ADMIN, CLIENT = "admin-key-0123456789abcdef", "client-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def server(database_url, tmp_path, formation):
    """A real uvicorn server with the formation API; yields (base url, runtime)."""
    from config.settings import Settings
    from gateway.api.app import create_app
    from gateway.runtime.formations import Formation
    from gateway.runtime.wiring import Runtime

    settings = Settings(database_url=database_url, data_dir=tmp_path, formation_id=formation,
                        identity_secret="test-identity-secret-0123456789",
                        credentials_key="kL3Z3fQ0m2nS4r8vYb1cD5eF7gH9iJ0kL2mN4oP6qR8=")
    runtime = await Runtime.open(settings)
    formations = {formation: Formation(formation, ADMIN, CLIENT),
                  "other": Formation("other", "other-admin-0123456789ab",
                                     "other-client-0123456789a")}
    try:
        async with serving(create_app(runtime, formations)) as url:
            yield url, runtime
    finally:
        await runtime.close()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """What tests measured (tests.helpers.report), after the run, even without -s."""
    from tests.helpers.report import sections

    for title, lines in sections(config):
        terminalreporter.write_sep("-", title)
        for line in lines:
            terminalreporter.write_line(line)
