"""Work that must run once runs once: each exclusive channel and the scheduler run in one
replica at a time, and move to another within seconds when the holder dies."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from gateway.runtime.leases import PostgresLeases, Roster, run_under
from gateway.runtime.shards import Plan, plan, run_shards
from gateway.runtime.supervisor import Supervisor
from tests.conftest import ADMIN, ADMIN_URL, CLIENT, free_port
from tests.peers.discord import DiscordPeer, guild_on_shard

HOLDER = Path(__file__).parent / "helpers" / "lease_holder.py"


async def wait_for(check, timeout: float = 10.0) -> float:
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "not in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_a_lease_moves_to_a_waiting_replica_when_its_holder_is_killed(postgres_url):
    name = f"test-{time.time_ns()}"
    holder = await asyncio.create_subprocess_exec(
        sys.executable, str(HOLDER), postgres_url, name, stdout=asyncio.subprocess.PIPE)
    leases = PostgresLeases(postgres_url, interval=0.2)
    running = asyncio.Event()

    async def work() -> None:
        running.set()
        await asyncio.Event().wait()

    try:
        assert (await asyncio.wait_for(holder.stdout.readline(), 30)).strip() == b"held"
        here = asyncio.create_task(run_under(leases, name, work))
        await asyncio.sleep(1.5)
        assert not running.is_set()  # the other replica holds it: this one stands by
        holder.kill()  # as a crash: no release, only the connection going away
        await holder.wait()
        took = await wait_for(running.is_set)
        assert took < 5
        here.cancel()
    finally:
        if holder.returncode is None:
            holder.kill()
            await holder.wait()
        await leases.close()


class Exclusive:
    """A channel that must run in one replica at a time, counting where it runs."""

    exclusive = True

    def __init__(self, name: str, running: set[str], replica: str) -> None:
        self.name, self.running, self.replica = name, running, replica

    async def run(self, ready) -> None:
        self.running.add(self.replica)
        ready("connected")
        try:
            await asyncio.Event().wait()
        finally:
            self.running.discard(self.replica)


async def test_an_exclusive_channel_runs_in_one_replica_and_fails_over(postgres_url):
    name = f"poller{time.time_ns()}"
    running: set[str] = set()
    a = Supervisor(leases=PostgresLeases(postgres_url, interval=0.2))
    b = Supervisor(leases=PostgresLeases(postgres_url, interval=0.2))
    a.add(Exclusive(name, running, "a"))
    a.start()
    await wait_for(lambda: a.is_up(name))
    b.add(Exclusive(name, running, "b"))
    b.start()
    try:
        await wait_for(lambda: b.states[name].status == "standby")
        await asyncio.sleep(1.0)
        assert running == {"a"} and b.states[name].status == "standby"
        await a.stop()  # a replica shutting down hands the channel over
        await wait_for(lambda: b.is_up(name), timeout=5)
        assert running == {"b"}
    finally:
        await a.stop()
        await b.stop()
        await a.leases.close()
        await b.leases.close()


async def test_a_holder_that_loses_its_database_connection_stops_the_work(postgres_url):
    name = f"cut-{time.time_ns()}"
    leases, other = (PostgresLeases(postgres_url, interval=0.2),
                     PostgresLeases(postgres_url, interval=0.2))
    states: list[str] = []

    async def work() -> None:
        states.append("started")
        try:
            await asyncio.Event().wait()
        finally:
            states.append("stopped")

    here = asyncio.create_task(run_under(leases, name, work))
    try:
        await wait_for(lambda: states == ["started"])
        leases._conn.terminate()  # the connection, and with it the lock, is gone
        await wait_for(lambda: states[:2] == ["started", "stopped"])
        # The keeper connects again and, the lease being free, takes it again.
        await wait_for(lambda: states == ["started", "stopped", "started"])
        here.cancel()  # shutting down releases it for someone else
        async with asyncio.timeout(5), other.hold(name):
            pass
    finally:
        here.cancel()
        await leases.close()
        await other.close()


# -- shards spread across replicas ------------------------------------------------------------

NAMES = [f"channel:x:shard:{i}" for i in range(4)]


def roster(me: int, holders: dict[int, int], members: dict[int, float] | None = None) -> Roster:
    """`holders`: shard -> replica; every replica named is a live member unless told."""
    if members is None:
        members = {pid: 0.0 for pid in {me, *holders.values()}}
    return Roster(me, members, {NAMES[shard]: pid for shard, pid in holders.items()})


def test_a_lone_replica_takes_every_shard():
    todo = plan(roster(1, {}), NAMES)
    assert sorted(todo.take) == [0, 1, 2, 3] and todo.want == 4 and todo.give is None


def test_a_replica_holding_two_more_than_another_gives_one_up():
    everything = {0: 1, 1: 1, 2: 1, 3: 1}
    newcomer = roster(2, everything, {1: 0.0, 2: 0.0})
    assert plan(newcomer, NAMES).want == 0  # nothing free to take yet
    assert plan(roster(1, everything, {1: 0.0, 2: 0.0}), NAMES).give == 3
    # …but not while one of its own is still being given up, nor while a shard is free.
    assert plan(roster(1, everything, {1: 0.0, 2: 0.0}), NAMES, releasing=True).give is None
    assert plan(roster(1, {0: 1, 1: 1, 2: 1}, {1: 0.0, 2: 0.0}), NAMES).give is None


def test_a_free_shard_goes_to_the_least_loaded():
    held = {0: 1, 1: 1, 2: 2}  # shard 3 is free (its holder died)
    assert plan(roster(1, held), NAMES).want == 0
    assert plan(roster(2, held), NAMES).take == [3] and plan(roster(2, held), NAMES).want == 1
    balanced = {0: 1, 1: 1, 2: 2, 3: 3}
    assert plan(roster(1, balanced), NAMES) == plan(roster(1, balanced), NAMES, releasing=False)
    assert all(plan(roster(me, balanced), NAMES).give is None for me in (1, 2, 3))


def test_a_member_that_has_gone_quiet_holds_nobody_back_and_overdue_shards_are_taken():
    frozen = roster(1, {0: 1, 1: 1}, {1: 0.0, 2: 60.0})  # replica 2 is frozen
    assert sorted(plan(frozen, NAMES).take) == [2, 3] and plan(frozen, NAMES).want == 2
    loaded = roster(1, {0: 1, 1: 1}, {1: 0.0, 2: 0.0})  # replica 2 does not take them
    assert plan(loaded, NAMES).want == 0
    assert plan(loaded, NAMES, overdue={3}) == Plan([3], 1)


class Shards:
    """One replica's shards of group `group`, run by `run_shards` on a lease keeper of its
    own, recording which shards run where."""

    def __init__(self, url: str, group: str, count: int, running: dict[int, set[str]],
                 name: str) -> None:
        self.leases = PostgresLeases(url, interval=0.2)
        self.name, self.running = name, running

        async def work(shard: int) -> None:
            running.setdefault(shard, set()).add(name)
            try:
                await asyncio.Event().wait()
            finally:
                running[shard].discard(name)

        self.task = asyncio.create_task(run_shards(self.leases, group, count, work))

    def held(self) -> set[int]:
        return {shard for shard, where in self.running.items() if self.name in where}

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.leases.close()


async def test_shards_spread_over_replicas_and_move_when_a_keeper_connection_dies(postgres_url):
    group, running = f"channel:spread{time.time_ns()}", {}
    first = Shards(postgres_url, group, 4, running, "a")
    replicas = [first]

    def one_each() -> bool:
        return len(running) == 4 and all(len(where) == 1 for where in running.values())

    def balanced(among) -> bool:
        loads = [len(r.held()) for r in among]
        return one_each() and sum(loads) == 4 and max(loads) - min(loads) <= 1

    try:
        await wait_for(lambda: first.held() == {0, 1, 2, 3})  # alone, it runs them all
        replicas += [Shards(postgres_url, group, 4, running, name) for name in "bc"]
        await wait_for(lambda: balanced(replicas))  # it gives two up, one at a time
        assert sorted(len(r.held()) for r in replicas) == [1, 1, 2]
        victim = max(replicas, key=lambda r: len(r.held()))
        survivors = [r for r in replicas if r is not victim]
        victim.leases._conn.terminate()  # as a crash: its keeper connection goes
        victim.task.cancel()
        took = await wait_for(lambda: balanced(survivors))
        assert took < 5 and sorted(len(r.held()) for r in survivors) == [2, 2]
    finally:
        for replica in replicas:
            await replica.stop()


# -- Discord shards across `threadline serve` replicas ----------------------------------------

THREADLINE = str(Path(sys.executable).parent / "threadline")
DISCORD_TOKEN = "MTEwMDAwMDAwMDAwMDAwMDAwMQ.GtEsT0.threadline-test-token"


@pytest.fixture
async def fleet_database() -> AsyncIterator[str]:
    """A database of this test's own: its advisory locks are seen by nobody else."""
    name = f"threadline_shards_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(ADMIN_URL, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield ADMIN_URL.rpartition("/")[0] + f"/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


class Replica:
    """`threadline serve` on a free port, its log in a file."""

    def __init__(self, tmp_path: Path, name: str, env: dict[str, str]) -> None:
        self.name, self.log = name, tmp_path / f"{name}.log"
        self.port = free_port()
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                [THREADLINE, "serve", "--port", str(self.port)], cwd=tmp_path, env=env,
                stdout=subprocess.DEVNULL, stderr=log)
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=5)
        self.last: dict = {}

    async def discord(self) -> dict:
        """This replica's report of the Discord channel ({} while it does not answer)."""
        with contextlib.suppress(httpx.HTTPError):
            ready = (await self.http.get("/v1/ready")).json()["data"]
            self.last = ready["components"]["channels"]["discord"]
            return self.last
        return {}

    async def stop(self) -> None:
        await self.http.aclose()  # a kept-alive connection would hold up the shutdown
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(self.proc.wait, 20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                await asyncio.to_thread(self.proc.wait)


async def test_discord_shards_spread_over_serve_replicas_and_move_when_one_is_killed(
        tmp_path, fleet_database):
    peer = DiscordPeer(DISCORD_TOKEN)
    await peer.start()
    guilds = [guild_on_shard(shard, 4) for shard in range(4)]
    for shard, guild in enumerate(guilds):
        peer.add_guild(guild, f"13000000000000001{shard:02d}")
    formation = tmp_path / "formation.yaml"
    formation.write_text(json.dumps({"channels": {"discord": {
        "token": DISCORD_TOKEN, "api_url": peer.api_url, "gateway_url": peer.gateway_url,
        "shards": 4, "drain_timeout": 2}}}))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    env.update(THREADLINE_DATABASE_URL=fleet_database, THREADLINE_FORMATION_FILE=str(formation),
               THREADLINE_DATA_DIR=str(tmp_path / "data"), THREADLINE_LOG_FORMAT="json",
               THREADLINE_ADMIN_KEY=ADMIN, THREADLINE_CLIENT_KEY=CLIENT)
    replicas = [Replica(tmp_path, "a", env)]
    asked = iter(range(1500000000000000700, 1500000000000000800))

    async def held(among: list[Replica]) -> dict[str, set[int]] | None:
        """Replica -> the shards it runs, once each shard is up in exactly one replica
        (and connected to Discord once); None until then."""
        reports = {r.name: await r.discord() for r in among}
        running = {name: {int(s) for s, state in report.get("shards", {}).items()
                          if state["status"] == "up"} for name, report in reports.items()}
        every = sorted(shard for shards in running.values() for shard in shards)
        if every != [0, 1, 2, 3] or peer.live() != {0: 1, 1: 1, 2: 1, 3: 1}:
            return None
        loads = [len(shards) for shards in running.values()]
        return running if max(loads) - min(loads) <= 1 else None

    async def settled(among: list[Replica], timeout: float) -> tuple[dict[str, set[int]], float]:
        started = time.monotonic()
        while (running := await held(among)) is None:
            assert time.monotonic() - started < timeout, (
                f"shards not spread in time: {[r.last for r in among]}, live {peer.live()}")
            await asyncio.sleep(0.2)
        return running, time.monotonic() - started

    async def every_guild_answered_once() -> None:
        ids = [str(next(asked)) for _ in guilds]
        for guild, message_id in zip(guilds, ids, strict=True):
            await peer.push(peer.guild_message(guild, message_id))
        await peer.wait_for(lambda: set(ids) <= set(peer.answered()), timeout=10)
        await asyncio.sleep(0.5)  # room for a second answer to show
        replies = Counter(peer.answered())
        assert [replies[message_id] for message_id in ids] == [1, 1, 1, 1]

    try:
        running, _ = await settled(replicas, timeout=60)
        assert running == {"a": {0, 1, 2, 3}}  # alone, it runs every shard
        replicas += [Replica(tmp_path, name, env) for name in ("b", "c")]
        running, took = await settled(replicas, timeout=60)
        print(f"two more replicas started and the shards spread in {took:.1f} s")
        assert sorted(len(shards) for shards in running.values()) == [1, 1, 2]
        for replica in replicas:
            report = replica.last
            assert report["status"] == "up"
            here = ",".join(str(s) for s in sorted(running[replica.name]))
            assert report["detail"].startswith(f"running shard{'s' * (len(here) > 1)} {here} of 4")
        await every_guild_answered_once()

        victim = next(r for r in replicas if len(running[r.name]) == 2)
        survivors = [r for r in replicas if r is not victim]
        victim.proc.kill()  # SIGKILL: no goodbye, only its connections closing
        running, took = await settled(survivors, timeout=10)
        assert sorted(len(shards) for shards in running.values()) == [2, 2]
        print(f"shards moved to the survivors in {took:.1f} s")
        await every_guild_answered_once()
    finally:
        await asyncio.gather(*(replica.stop() for replica in replicas))
        await peer.stop()


class Sends(Exclusive):
    """An exclusive channel whose messages any replica can send (Telegram's Bot API)."""

    delivers_on_standby = True


async def test_a_replica_standing_by_delivers_on_a_channel_that_sends_from_anywhere(
        postgres_url):
    polled, gateway = f"polled{time.time_ns()}", f"gateway{time.time_ns()}"
    running: set[str] = set()
    a = Supervisor(leases=PostgresLeases(postgres_url, interval=0.2))
    b = Supervisor(leases=PostgresLeases(postgres_url, interval=0.2))
    for supervisor, replica in ((a, "a"), (b, "b")):
        supervisor.add(Sends(polled, running, replica))
        supervisor.add(Exclusive(gateway, running, replica))
    a.start()
    try:
        await wait_for(lambda: a.is_up(polled) and a.is_up(gateway))
        b.start()
        await wait_for(lambda: b.states[polled].status == b.states[gateway].status == "standby")
        # The scheduler in b can send a reminder on the first (its API works from any
        # replica), not on the second (only the replica holding the connection can).
        assert b.can_deliver(polled) and not b.can_deliver(gateway)
        assert a.can_deliver(polled) and a.can_deliver(gateway)
        assert not b.is_up(polled)
    finally:
        await a.stop()
        await b.stop()
        await a.leases.close()
        await b.leases.close()


async def test_a_database_that_is_down_costs_one_warning_per_interval_not_one_per_attempt(
        capsys):
    leases = PostgresLeases("postgresql://postgres@127.0.0.1:1/nowhere", interval=0.05)
    waiting = asyncio.create_task(run_under(leases, f"down-{time.time_ns()}",
                                            asyncio.Event().wait))
    try:
        await asyncio.sleep(1.0)  # about twenty attempts
        assert not waiting.done()
    finally:
        waiting.cancel()
        await leases.close()
    logged = capsys.readouterr()
    warnings = [line for line in (logged.out + logged.err).splitlines()
                if "cannot ask for a lease" in line]
    assert len(warnings) == 1, warnings
