"""Faults with numbers. With steady chat load on three `threadline serve` replicas,
PostgreSQL is restarted, Redis is dropped and started again, and one replica is killed
(SIGKILL). For each fault: how many requests failed (as the client saw them, before it
retried with the same idempotency key), how long until requests succeeded again, how many
acknowledged messages were lost (a 2xx whose turn is not in the transcript), how many
messages were answered twice, and how many replicas needed a restart. The table is printed
at the end of the run (even without -s); nothing lost, nothing twice, no restart needed are
asserted.

Loopback only, bounded in time (about a minute and a half): PostgreSQL and Redis are
servers of this test's own on free ports (initdb into a temp dir; redis-server), never the
machine's shared ones. `make faults` runs this file alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import httpx
import pytest

from memory.claims import CLAIM_LEASE
from tests.conftest import _missing, free_port
from tests.helpers.postgres import PrivatePostgres
from tests.helpers.redis_server import PrivateRedis
from tests.helpers.replicas import ADMIN, CLIENT, Fleet, Replica
from tests.helpers.report import report
from tests.peers.llm import ChatCompletionsPeer

RATE = 30.0  # chat requests per second, spread over the replicas
USERS = [f"load-{i}@faults.test" for i in range(24)]
STEADY = 3.0  # seconds of load before each fault
OUTAGE = 3.0  # seconds PostgreSQL or Redis stays down
CALM = 3.0  # seconds of every new request succeeding that count as recovered
PHASE_CAP = 25.0  # seconds after a fault when the load stops whatever happened
RETRY_FOR = 25.0  # seconds a client keeps retrying one message: longer than a claim lease
THINKING = 0.25  # seconds the model takes for each answer
SETTLE = 20.0  # seconds each surviving replica has to be ready again by itself

pytestmark = pytest.mark.timeout(300)


# -- the client: a load balancer in front, retries with the same idempotency key -----------

@dataclass
class Attempt:
    replica: str
    outcome: str  # an HTTP status, or what went wrong on the wire
    ok: bool


@dataclass
class Message:
    text: str
    key: str
    user: str
    sent: float  # when its first attempt was sent (monotonic)
    attempts: list[Attempt] = field(default_factory=list)
    acked: bool = False  # a 2xx came back


class Balancer:
    """Round robin over the replicas it believes alive, as a load balancer in front of them
    would: one that refuses a connection is taken out until its /v1/health answers again
    (asked every half second). With none left it tries them all."""

    def __init__(self, replicas: list[Replica]) -> None:
        self.replicas = replicas
        self.out: set[str] = set()
        self.clients = {r.name: httpx.AsyncClient(base_url=r.url, timeout=10,
                                                  limits=httpx.Limits(max_connections=32))
                        for r in replicas}
        self._turn = 0

    def pick(self) -> Replica:
        live = [r for r in self.replicas if r.name not in self.out] or self.replicas
        self._turn += 1
        return live[self._turn % len(live)]

    async def watch(self) -> None:
        while True:
            for name in list(self.out):
                with contextlib.suppress(httpx.HTTPError):
                    if (await self.clients[name].get("/v1/health", timeout=1)).status_code == 200:
                        self.out.discard(name)
            await asyncio.sleep(0.5)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.aclose()


class ChatLoad:
    """POST /v1/chat at a steady rate, each message with a unique text and idempotency key;
    a failed attempt is retried (on the next replica) with the same key until it is
    answered or RETRY_FOR has passed."""

    def __init__(self, balancer: Balancer, prefix: str) -> None:
        self.balancer, self.prefix = balancer, prefix
        self.messages: list[Message] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        started = time.monotonic()
        n = 0
        while not stop.is_set():
            await asyncio.sleep(max(0.0, started + n / RATE - time.monotonic()))
            # One in ten changes memory (a fact), the others are plain turns.
            said = f"my budget is ${1000 + n}" if n % 10 == 0 else "just checking in"
            text = f"{self.prefix} {n}: {said}"
            message = Message(text, f"{self.prefix}-{n}", USERS[n % len(USERS)],
                              time.monotonic())
            self.messages.append(message)
            task = asyncio.create_task(self._send(message))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            n += 1

    async def finish(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def _send(self, message: Message) -> None:
        while True:
            replica = self.balancer.pick()
            outcome, ok, pause = await self._attempt(replica, message)
            message.attempts.append(Attempt(replica.name, outcome, ok))
            if ok:
                message.acked = True
                return
            if time.monotonic() - message.sent > RETRY_FOR:
                return
            await asyncio.sleep(pause)

    async def _attempt(self, replica: Replica, message: Message) -> tuple[str, bool, float]:
        headers = {**CLIENT, "X-Muxi-User-ID": message.user,
                   "X-Muxi-Idempotency-Key": message.key}
        try:
            answer = await self.balancer.clients[replica.name].post(
                "/v1/chat", json={"message": message.text}, headers=headers)
        except httpx.ConnectError:
            self.balancer.out.add(replica.name)
            return "refused", False, 0.0
        except httpx.TimeoutException:
            return "timeout", False, 0.5
        except httpx.HTTPError:  # reset, or closed before it answered
            return "reset", False, 0.1
        if 200 <= answer.status_code < 300:
            return str(answer.status_code), True, 0.0
        wait = float(answer.headers.get("Retry-After") or 1)
        return str(answer.status_code), False, min(wait, 2.0)


# -- one fault ---------------------------------------------------------------------------------

@dataclass
class Row:
    fault: str
    sent: int = 0
    failed: int = 0  # messages whose first attempt failed (the client then retried)
    failures: Counter[str] = field(default_factory=Counter)  # every failed attempt, by kind
    recovered_in: float = 0.0  # seconds from the fault until new requests succeeded again
    after_back: float | None = None  # the same, from when the dependency was back
    unanswered: int = 0  # never acknowledged within RETRY_FOR
    lost: int = 0
    twice: int = 0
    restarts: int = 0
    schedulers: int = 0  # replicas running the scheduler once it settled (1)
    logged: Counter[str] = field(default_factory=Counter)  # log events during the fault
    notes: list[str] = field(default_factory=list)


def _recovery(messages: list[Message], fault_at: float) -> float:
    """Seconds from the fault to the first message sent after the last one whose first
    attempt failed (0 when none failed)."""
    failed = [m.sent for m in messages if m.attempts and not m.attempts[0].ok]
    if not failed:
        return 0.0
    last = max(failed)
    later = [m.sent for m in messages if m.sent > last]
    return (min(later) if later else last) - fault_at


async def _transcript(url: str, prefix: str) -> dict[str, int]:
    """How often each load text was stored as a user message."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT content, count(*) FROM session_messages WHERE role = 'user'"
            " AND content LIKE $1 GROUP BY content", prefix + " %")
    finally:
        await conn.close()
    return {r[0]: r[1] for r in rows}


def _event(line: str) -> str:
    """A log line's event (and `+traceback` when it carries one)."""
    try:
        record = json.loads(line)
    except ValueError:
        return line[:80]
    return str(record.get("event")) + ("+traceback" if "exception" in record else "")


async def _claims(url: str, keys: list[str]) -> Counter[str]:
    """The claim states of API messages sent with these idempotency keys."""
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT status FROM processed_messages WHERE channel = 'api'"
            " AND split_part(message_id, ':', 2) = ANY($1::text[])", keys)
    finally:
        await conn.close()
    return Counter(r[0] for r in rows)


async def _healthy(http: httpx.AsyncClient, replica: Replica) -> bool:
    """Ready (database and cache up) and answering a chat of its own."""
    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
        answer = await http.get(f"{replica.url}/v1/ready", timeout=5)
        if answer.status_code != 200 or answer.json()["data"]["status"] != "ready":
            return False
        chat = await http.post(f"{replica.url}/v1/chat", json={"message": "are you there?"},
                               headers={**CLIENT, "X-Muxi-User-ID": USERS[0]}, timeout=5)
        return chat.status_code == 200
    return False


async def _needing_restart(http: httpx.AsyncClient, fleet: Fleet, row: Row,
                           before: set[str]) -> int:
    """Replicas that ran before the fault and were not killed by it, but are gone or not
    healthy again SETTLE seconds on."""
    deadline = time.monotonic() + SETTLE
    gone = sorted(before - {r.name for r in fleet.running()} - fleet.killed)
    for name in gone:
        row.notes.append(f"{name} exited by itself: {fleet.replicas[name].tail(5)}")
    waiting = list(fleet.running())
    while waiting and time.monotonic() < deadline:
        waiting = [r for r in waiting if r.running and not await _healthy(http, r)]
        if waiting:
            await asyncio.sleep(0.5)
    for replica in waiting:
        row.notes.append(f"{replica.name} not ready after {SETTLE:.0f} s: "
                         f"{replica.tail(5)}")
    return len(gone) + len(waiting)


async def _schedulers(http: httpx.AsyncClient, fleet: Fleet) -> list[str]:
    running = []
    for replica in fleet.running():
        with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
            answer = await http.get(f"{replica.url}/v1/scheduler", headers=ADMIN, timeout=5)
            if answer.json()["data"]["running"]:
                running.append(replica.name)
    return running


async def run_fault(name: str, fleet: Fleet, database_url: str,
                    inject: Callable[[], Awaitable[float | None]]) -> Row:
    """Load, the fault (`inject` returns when the dependency was back, if it went away),
    load until every new request has succeeded for CALM seconds, then the counts."""
    row = Row(name)
    prefix = f"fault-{uuid.uuid4().hex[:8]}"
    balancer = Balancer(list(fleet.running()))
    load = ChatLoad(balancer, prefix)
    stop = asyncio.Event()
    watcher = asyncio.create_task(balancer.watch())
    driver = asyncio.create_task(load.run(stop))
    logged = {r.name: r.logged for r in fleet.replicas.values()}
    before = {r.name for r in fleet.running()}
    try:
        await asyncio.sleep(STEADY)
        fault_at = time.monotonic()
        back_at = await inject()
        quiet_since = back_at or fault_at
        while time.monotonic() - fault_at < PHASE_CAP:
            failed = [m.sent for m in load.messages if m.attempts and not m.attempts[0].ok]
            pending = [m.sent for m in load.messages
                       if not m.attempts and time.monotonic() - m.sent > 1]
            since = max([quiet_since, *failed, *pending])
            if time.monotonic() - since >= CALM:
                break
            await asyncio.sleep(0.2)
        stop.set()
        await driver
        await load.finish()
    finally:
        stop.set()
        driver.cancel()
        watcher.cancel()
        await balancer.close()
    messages = load.messages
    row.sent = len(messages)
    row.failed = sum(bool(m.attempts) and not m.attempts[0].ok for m in messages)
    row.failures = Counter(a.outcome for m in messages for a in m.attempts if not a.ok)
    row.recovered_in = _recovery(messages, fault_at)
    if back_at is not None:
        row.after_back = max(0.0, fault_at + row.recovered_in - back_at)
    unanswered = [m.key for m in messages if not m.acked]
    row.unanswered = len(unanswered)
    if unanswered:
        claims = await _claims(database_url, unanswered)
        row.notes.append(f"never answered in {RETRY_FOR:.0f} s: {row.unanswered}, their claims "
                         f"{dict(claims) or 'none'} (a dead process's claim is taken over "
                         f"after its {CLAIM_LEASE:.0f} s lease: 409 REQUEST_IN_PROGRESS until "
                         "then)")
    stored = await _transcript(database_url, prefix)
    row.lost = sum(stored.get(m.text, 0) == 0 for m in messages if m.acked)
    row.twice = sum(count > 1 for count in stored.values())
    async with httpx.AsyncClient() as http:
        row.restarts = await _needing_restart(http, fleet, row, before)
        deadline = time.monotonic() + SETTLE  # and the scheduler runs again, once
        while len(schedulers := await _schedulers(http, fleet)) != 1:
            if time.monotonic() > deadline:
                row.notes.append(f"scheduler running in {schedulers or 'no replica'}")
                break
            await asyncio.sleep(0.5)
        row.schedulers = len(schedulers)
    for replica in fleet.replicas.values():
        new = replica.logged - logged.get(replica.name, 0)
        row.logged.update(_event(line) for line in list(replica.lines)[-new:] if new > 0)
    return row


# -- the suite -----------------------------------------------------------------------------

@pytest.fixture
async def services() -> AsyncIterator[tuple[PrivatePostgres, PrivateRedis, str]]:
    """PostgreSQL and Redis of this test's own, and a model that takes THINKING seconds to
    answer (so that every turn has a moment in flight that a fault can hit)."""
    model = ChatCompletionsPeer()
    model.delay = THINKING
    try:
        postgres = PrivatePostgres(free_port())
        postgres.start()
    except (RuntimeError, OSError) as exc:
        _missing("a private PostgreSQL server (initdb, pg_ctl)", exc)
    try:
        cache = PrivateRedis()
        cache.start()
    except (RuntimeError, OSError) as exc:
        postgres.remove()
        _missing("a private Redis server (redis-server)", exc)
    try:
        yield postgres, cache, await model.start()
    finally:
        await model.stop()
        cache.remove()
        postgres.remove()


def _table(rows: list[Row]) -> list[str]:
    lines = [f"{'fault':<26}{'sent':>6}{'failed':>8}{'recovered in':>14}"
             f"{'acked lost':>12}{'answered twice':>16}{'restarts needed':>17}"
             f"{'unanswered':>12}"]
    for r in rows:
        back = f" ({r.after_back:.1f} s after back)" if r.after_back is not None else ""
        lines.append(f"{r.fault:<26}{r.sent:>6}{r.failed:>8}{r.recovered_in:>12.1f} s"
                     f"{r.lost:>12}{r.twice:>16}{r.restarts:>17}{r.unanswered:>12}{back}")
    lines.append(f"load: {RATE:.0f} chat requests/s over the replicas, each with its own text "
                 f"and idempotency key, a model answering in {THINKING * 1000:.0f} ms; a failed "
                 "attempt is retried on the next replica with the same key for up to "
                 f"{RETRY_FOR:.0f} s")
    lines.append("failed: requests the client saw fail (before retrying); recovered in: from "
                 "the fault until every new request succeeded at its first attempt; "
                 f"unanswered: messages never acknowledged within {RETRY_FOR:.0f} s (not lost: "
                 "never acknowledged, and kept claimed in the database)")
    for r in rows:
        kinds = ", ".join(f"{kind} x{n}" for kind, n in r.failures.most_common()) or "none"
        lines.append(f"  {r.fault}: failed attempts, retries included: {kinds}")
        logged = "; ".join(f"{event} x{n}" for event, n in r.logged.most_common())
        lines.append(f"    logged (warning and above, all replicas): {logged or 'nothing'}")
        lines += [f"    {note}" for note in r.notes]
    return lines


async def test_faults_under_chat_load_lose_nothing_and_answer_nothing_twice(
        services, tmp_path, pytestconfig):
    postgres, cache, model = services
    fleet = Fleet(tmp_path, database_url=postgres.url, cache_url=cache.url,
                  log_level="warning", settings={
                      "THREADLINE_RESPONDER": "openai", "THREADLINE_LLM_BASE_URL": model,
                      "THREADLINE_LLM_API_KEY": "sk-test", "THREADLINE_LLM_TIMEOUT": "10"})
    rows: list[Row] = []
    try:
        await fleet.start("a")  # migrates; then the others, at once
        await fleet.start_all("b", "c")
        async with httpx.AsyncClient(timeout=10) as http:  # every user exists before load
            for user in USERS:
                answer = await http.post(f"{fleet.replicas['a'].url}/v1/chat",
                                         json={"message": "hello"},
                                         headers={**CLIENT, "X-Muxi-User-ID": user})
                assert answer.status_code == 200, answer.text

        async def restart_postgres() -> float:
            await asyncio.to_thread(postgres.stop)
            await asyncio.sleep(OUTAGE)
            await asyncio.to_thread(postgres.start)
            return time.monotonic()

        async def drop_redis() -> float:
            cache.kill()
            await asyncio.sleep(OUTAGE)
            await asyncio.to_thread(cache.start)
            return time.monotonic()

        victim: list[str] = []

        async def kill_a_replica() -> None:
            async with httpx.AsyncClient() as http:  # the one running the scheduler
                victim[:] = (await _schedulers(http, fleet))[:1] or ["a"]
            await fleet.kill(victim[0])
            return None

        rows.append(await run_fault(f"PostgreSQL restart ({OUTAGE:.0f} s)", fleet,
                                    postgres.url, restart_postgres))
        rows.append(await run_fault(f"Redis dropped ({OUTAGE:.0f} s)", fleet, postgres.url,
                                    drop_redis))
        rows.append(await run_fault("SIGKILL one replica", fleet, postgres.url,
                                    kill_a_replica))
        rows[-1].notes.insert(0, f"killed {victim[0]} (it ran the scheduler)")
    finally:
        await fleet.close()
        report(pytestconfig, "faults under chat load (3 replicas, PostgreSQL + Redis)",
               _table(rows))
    assert len(rows) == 3
    for row in rows:
        assert row.lost == 0, row
        assert row.twice == 0, row
        assert row.restarts == 0, row
        assert row.unanswered == 0, row  # a dead turn's claim frees within its lease
        assert row.schedulers == 1, row  # work that must run once runs again, once
        assert row.recovered_in < PHASE_CAP - CALM, row  # new requests succeed again
