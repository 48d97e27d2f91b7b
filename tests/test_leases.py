"""Work that must run once runs once: each exclusive channel and the scheduler run in one
replica at a time, and move to another within seconds when the holder dies."""

import asyncio
import sys
import time
from pathlib import Path

from gateway.runtime.leases import PostgresLeases, run_under
from gateway.runtime.supervisor import Supervisor

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
