"""Degrade, don't fall over: with PostgreSQL down, requests that need it answer 503 with
Retry-After and the log says so once per failure class per interval; once it is back,
requests succeed again at once (no late 500s from dead pooled connections).

Runs a PostgreSQL server of its own on a free port, and stops and starts that one."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import httpx
import pytest

from config.settings import Settings
from gateway.api.app import create_app
from gateway.runtime.formations import Formation
from gateway.runtime.logs import configure_logging
from gateway.runtime.wiring import Runtime
from tests.conftest import ADMIN, CLIENT, _missing, free_port
from tests.helpers.postgres import PrivatePostgres
from tests.peers.http import serving
from tests.test_logs import records
from tests.test_metrics import samples, value


@pytest.fixture
def json_logs(capsys):
    configure_logging("json", "info", cache=False)
    yield capsys
    configure_logging("console", "info", cache=False)


@pytest.fixture
def private_postgres():
    try:
        server = PrivatePostgres(free_port())
        server.start()
    except (RuntimeError, OSError) as exc:
        _missing("a private PostgreSQL server (initdb, pg_ctl)", exc)
    yield server
    server.remove()


KNOWN = "known@acme.com"


def _requests(n: int, first: int = 0) -> list[tuple[str, str, dict]]:
    """A mix of calls that each need the database: chat, resolve (of users not cached yet),
    memories, sessions."""
    calls = []
    for i in range(first, first + n):
        user = f"outage-{i}@acme.com"
        calls.append([
            ("POST", "/v1/chat", {"json": {"message": f"my budget is ${i}"}, "user": user}),
            ("POST", "/v1/users/resolve", {"json": {"identifier": user}}),
            ("GET", "/v1/memories", {"user": KNOWN}),
            ("GET", "/v1/sessions", {"user": KNOWN}),
        ][i % 4])
    return calls


async def _send(http: httpx.AsyncClient, call: tuple[str, str, dict]) -> httpx.Response:
    method, path, options = call
    headers = {"X-Muxi-Client-Key": CLIENT}
    if "user" in options:
        headers["X-Muxi-User-ID"] = options["user"]
    return await http.request(method, path, json=options.get("json"), headers=headers)


async def test_postgres_down_answers_503_with_one_log_line_and_recovers(private_postgres,
                                                                       tmp_path, json_logs):
    settings = Settings(database_url=private_postgres.url, data_dir=tmp_path,
                        formation_id="outage", identity_secret="test-identity-secret-0123456789",
                        credentials_key="kL3Z3fQ0m2nS4r8vYb1cD5eF7gH9iJ0kL2mN4oP6qR8=")
    runtime = await Runtime.open(settings)
    formations = {"outage": Formation("outage", ADMIN, CLIENT)}
    n = 200
    try:
        async with serving(create_app(runtime, formations)) as url, \
                httpx.AsyncClient(base_url=url, timeout=30) as http:
            # Warm: several pooled connections that the outage will kill.
            await _send(http, ("POST", "/v1/chat", {"json": {"message": "hi"}, "user": KNOWN}))
            warm = await asyncio.gather(*[_send(http, c) for c in _requests(12)])
            assert [r.status_code for r in warm] == [200] * 12, [r.text for r in warm]
            json_logs.readouterr()

            private_postgres.stop()
            started, down = time.monotonic(), []
            for wave in range(4):  # an outage of a few seconds, requests arriving throughout
                calls = _requests(n // 4, 1000 + wave * n // 4)
                down += await asyncio.gather(*[_send(http, c) for c in calls])
                await asyncio.sleep(1)
            took = time.monotonic() - started
            during = records(json_logs)

            private_postgres.start()
            back = [await _send(http, c) for c in _requests(40, 2000)]  # one by one, at once
            metrics = samples((await http.get("/metrics")).text)
    finally:
        await runtime.close()
    assert Counter(r.status_code for r in down) == {503: n}, [r.text for r in down[:3]]
    assert all(r.headers.get("Retry-After") == "5" for r in down)
    bodies = [r.json() for r in down]
    assert {b["code"] for b in bodies} == {"DATABASE_UNAVAILABLE"}
    assert [b["request"]["id"] for b in bodies] == [r.headers["X-Request-ID"] for r in down]
    # One line per failure class per interval: a handful, not one (or two) per request.
    ours = [r for r in during if r["event"] == "database unavailable; answering 503"]
    pool = [r for r in during if r.get("logger") == "asyncpg.pool"]  # its reconnect backoff
    # The cache's change listener says once that it lost its connection (and that the
    # in-process cache is off until it is back).
    bus = [r for r in during if r["event"].startswith("cache invalidation bus lost")]
    assert 1 <= len(ours) <= 3 and len(bus) <= 1, during
    assert len(during) == len(ours) + len(pool) + len(bus) <= 9, during
    assert all("exception" not in r for r in during), during  # no tracebacks
    assert Counter(r.status_code for r in back) == {200: 40}, [
        r.text for r in back if r.status_code != 200]
    assert value(metrics, "threadline_dependency_unavailable_total", dependency="database") == n
    print(f"\n{n} requests during a {took:.1f} s outage: {len(during)} log lines "
          f"({len(ours)} ours, {len(pool)} asyncpg's reconnect attempts)")


async def test_a_sqlite_file_locked_past_the_busy_timeout_answers_503_then_recovers(
        tmp_path, json_logs):
    """Another process (the command line, say) holds SQLite's write lock longer than a
    writer waits: the request gets the same 503 as a PostgreSQL outage, nothing is half
    written, and the next request after the lock is let go succeeds."""
    import sqlite3

    path = tmp_path / "locked.db"
    settings = Settings(database_url=f"sqlite:///{path}", data_dir=tmp_path,
                        formation_id="outage", identity_secret="test-identity-secret-0123456789",
                        credentials_key="kL3Z3fQ0m2nS4r8vYb1cD5eF7gH9iJ0kL2mN4oP6qR8=")
    runtime = await Runtime.open(settings)
    formations = {"outage": Formation("outage", ADMIN, CLIENT)}
    chat = ("POST", "/v1/chat", {"json": {"message": "my budget is $7"}, "user": KNOWN})
    try:
        async with serving(create_app(runtime, formations)) as url, \
                httpx.AsyncClient(base_url=url, timeout=30) as http:
            assert (await _send(http, chat)).status_code == 200
            await runtime.db.writer.execute("PRAGMA busy_timeout = 200")
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")  # holds the write lock
            try:
                refused = await _send(http, ("POST", "/v1/chat", {
                    "json": {"message": "my budget is $9"}, "user": KNOWN}))
            finally:
                other.execute("ROLLBACK")
                other.close()
            after = await _send(http, ("POST", "/v1/chat", {
                "json": {"message": "what's my budget?"}, "user": KNOWN}))
    finally:
        await runtime.close()
    assert refused.status_code == 503, refused.text
    assert refused.json()["code"] == "DATABASE_UNAVAILABLE"
    assert refused.headers.get("Retry-After") == "5"
    assert after.status_code == 200, after.text
    assert "$7" in after.json()["data"]["message"]["content"]  # the refused turn left nothing
