"""Work cut into shards (a Discord bot's gateway shards), spread across the replicas.

Each shard is a lease of its own, `<group>:shard:<i>`, held by one replica at a time. On
PostgreSQL every replica running the group is a member (a shared advisory lock of its lease
keeper), and every `interval` (a second) it reads the roster from `pg_locks` and acts on
one rule:

- a free shard is taken by the replicas holding the fewest (no replica takes more than one
  past the least loaded other member);
- a replica holding two more than the least loaded member gives one up, and only while no
  shard is free and none of its own is still being given up;
- a shard left free for `patience` seconds is taken by anyone (a member that never takes it
  must not leave it unserved).

Members whose keeper has said nothing for `stale` seconds (a frozen process: its connection
stays open) do not hold the others back. When a replica dies its connection closes, its
locks are freed and the next round hands its shards to the least loaded. On SQLite (one
process) every shard runs here.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable, Collection, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from gateway.conversation.ports import Ready
from gateway.runtime.leases import WARN_EVERY, Leases, PostgresLeases, Roster, until_lost
from memory.lifecycle import iso

log = structlog.get_logger("threadline.leases")

# `work(shard)`: run one shard until cancelled; returning means the whole group must stop
# (bad credentials or settings), on every shard.
ShardWork = Callable[[int], Coroutine[Any, Any, None]]


class ShardedAdapter(Protocol):
    """An exclusive channel cut into `shards` shards, each run on its own by `run_shard`."""

    name: str
    shards: int

    async def run_shard(self, shard: int, ready: Ready) -> None: ...


class _State(Protocol):  # the supervisor's ChannelState, one per shard running here
    status: str
    detail: str
    failures: int
    last_error: str
    since: float

    def report(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Seen:
    """The group as this replica last saw it, for its status report."""

    here: tuple[int, ...]  # shards running here
    elsewhere: tuple[int, ...] = ()  # shards other replicas hold
    replicas: int = 1  # live members, this one included


@dataclass(frozen=True)
class Plan:
    take: list[int] = field(default_factory=list)  # free shards to try, in this order
    want: int = 0  # how many of them to take
    give: int | None = None  # a shard to give up


def plan(roster: Roster, names: list[str], *, releasing: bool = False,
         overdue: Collection[int] = (), stale: float = 10.0) -> Plan:
    """What this replica does this round (see the module's rule). `names[i]` is shard i's
    lease; `overdue`: free shards that have waited longer than the patience."""
    load = Counter(roster.holders.values())
    mine = load[roster.me]
    others = [load[pid] for pid, quiet in roster.members.items()
              if pid != roster.me and quiet < stale]
    least = min(others, default=None)
    free = [i for i, name in enumerate(names) if name not in roster.holders]
    random.shuffle(free)  # replicas racing for shards try different ones first
    if least is None:
        return Plan(free, len(free))
    want = max(0, least + 1 - mine)
    if want == 0 and overdue:
        return Plan([i for i in free if i in overdue], len(overdue))
    give = None
    if not free and not releasing and mine >= least + 2:
        give = max(i for i, name in enumerate(names) if roster.holders.get(name) == roster.me)
    return Plan(free, min(want, len(free)), give)


async def run_shards(leases: Leases, group: str, count: int, work: ShardWork, *,
                     seen: Callable[[Seen], None] | None = None) -> None:
    """Run the shards of `group` this replica gets, until cancelled or a shard's work
    returns (then every shard stops and this returns)."""
    if isinstance(leases, PostgresLeases):
        await _Spread(leases, group, count, work, seen).run()
        return
    if seen is not None:
        seen(Seen(tuple(range(count))))
    tasks = [asyncio.create_task(work(i), name=f"{group}:shard:{i}") for i in range(count)]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()  # raises what the work raised


class _Spread:
    def __init__(self, leases: PostgresLeases, group: str, count: int, work: ShardWork,
                 seen: Callable[[Seen], None] | None) -> None:
        self.leases, self.group, self.work, self.seen = leases, group, work, seen
        self.names = [f"{group}:shard:{i}" for i in range(count)]
        self.interval = leases.interval
        self.patience = 5 * self.interval
        self.stale = max(10.0, 10 * self.interval)
        self.running: dict[int, asyncio.Task[bool]] = {}  # shard -> its task (True: ended)
        self.releasing: set[int] = set()
        self.free_since: dict[int, float] = {}
        self.wake = asyncio.Event()
        self._warned = -WARN_EVERY

    async def run(self) -> None:
        await self._join()
        try:
            # Replicas that start together see each other before any takes a shard.
            await asyncio.sleep(self.interval)
            while not self._ended():
                try:
                    await self._round()
                except Exception as exc:  # noqa: BLE001 - the database may be back soon
                    self._warn("cannot read who runs the shards", exc)
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), self.interval)
        finally:
            tasks = list(self.running.values())
            for shard, task in self.running.items():
                if shard not in self.releasing:  # those are stopping already
                    task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self.running.clear()
            await self.leases.leave(self.group)
            self._report(None)

    async def _join(self) -> None:
        while True:
            try:
                await self.leases.join(self.group)
                return
            except Exception as exc:  # noqa: BLE001 - the database may be back soon
                self._warn("cannot join the replicas running the shards", exc)
                await asyncio.sleep(self.interval)

    def _warn(self, event: str, exc: Exception) -> None:
        """One warning per WARN_EVERY while the database is away, not one a second."""
        if time.monotonic() - self._warned >= WARN_EVERY:
            self._warned = time.monotonic()
            log.warning(event, group=self.group, error=f"{type(exc).__name__}: {exc}")

    def _ended(self) -> bool:
        """True once a shard's work returned by itself: the group stops everywhere here."""
        for shard, task in list(self.running.items()):
            if not task.done():
                continue
            del self.running[shard]
            self.releasing.discard(shard)
            if not task.cancelled() and task.result():
                return True
        return False

    async def _round(self) -> None:
        roster = await self.leases.roster(self.group, self.names)
        now = time.monotonic()
        for i, name in enumerate(self.names):
            if name in roster.holders:
                self.free_since.pop(i, None)
            else:
                self.free_since.setdefault(i, now)
        overdue = {i for i, since in self.free_since.items() if now - since > self.patience}
        todo = plan(roster, self.names, releasing=bool(self.releasing), overdue=overdue,
                    stale=self.stale)
        taken: list[int] = []
        for shard in todo.take:
            if len(taken) >= todo.want:
                break
            lost = await self.leases.take(self.names[shard])
            if lost is not None:
                taken.append(shard)
                self.running[shard] = asyncio.create_task(self._hold(shard, lost),
                                                          name=self.names[shard])
        if taken:
            log.info("shards taken", group=self.group, shards=taken)
        if todo.give is not None and todo.give in self.running:
            log.info("shard given up for a less loaded replica", group=self.group,
                     shard=todo.give, replicas=len(roster.members))
            self.releasing.add(todo.give)
            self.running[todo.give].cancel()
        self._report(roster, taken)

    async def _hold(self, shard: int, lost: asyncio.Event) -> bool:
        """Run one shard while its lease is held; True when its work returned by itself."""
        name = self.names[shard]
        try:
            if await until_lost(lambda: self.work(shard), lost):
                return True
            log.warning("shard lease lost; shard stopped", group=self.group, shard=shard)
            return False
        finally:
            await self.leases.release(name, lost)
            self.wake.set()  # the next round looks again at once

    def _report(self, roster: Roster | None, taken: Collection[int] = ()) -> None:
        if self.seen is None:
            return
        here = tuple(sorted(shard for shard in self.running if shard not in self.releasing))
        if roster is None:
            self.seen(Seen(here, (), 0))
            return
        elsewhere = tuple(sorted(
            i for i, name in enumerate(self.names)
            if name in roster.holders and roster.holders[name] != roster.me))
        live = sum(1 for quiet in roster.members.values() if quiet < self.stale)
        self.seen(Seen(here, elsewhere, max(live, 1)))


def _listed(shards: Iterable[int]) -> str:
    return ",".join(str(i) for i in shards)


class ShardedState:
    """A sharded channel as this replica runs it, for health and metrics: each shard it
    runs has a state of its own (`shards`), and the channel reads as the worst of them
    (`standby` while it runs none), with a detail such as "running shards 0,2 of 4"."""

    def __init__(self, name: str, count: int) -> None:
        self.name, self.count = name, count
        self.shards: dict[int, _State] = {}  # the shards running here (the supervisor's)
        self.seen = Seen(())
        self.stopped: _State | None = None  # a shard stopped for good: so is the channel
        self.changed = time.time()

    def see(self, seen: Seen) -> None:
        if seen.here != self.seen.here:
            self.changed = time.time()
        self.seen = seen

    @property
    def status(self) -> str:
        if self.stopped is not None:
            return "stopped"
        states = {state.status for state in self.shards.values()}
        for worst in ("stopped", "retrying", "starting"):
            if worst in states:
                return worst
        return "up" if states else "standby"

    @property
    def detail(self) -> str:
        if self.stopped is not None:
            return self.stopped.detail
        here = sorted(self.shards)
        text = (f"running shard{'s' if len(here) > 1 else ''} {_listed(here)} of {self.count}"
                if here else f"running none of {self.count} shards")
        elsewhere = [i for i in self.seen.elsewhere if i not in self.shards]
        if elsewhere:
            text += f"; {_listed(elsewhere)} on other replicas ({self.seen.replicas} in all)"
        unheld = [i for i in range(self.count) if i not in here and i not in elsewhere]
        if unheld and self.seen.replicas:
            text += f"; {_listed(unheld)} not running anywhere yet"
        return text

    @property
    def last_error(self) -> str:
        failing = [state for state in self.shards.values() if state.last_error]
        if self.stopped is not None:
            failing = [self.stopped]
        return max(failing, key=lambda state: state.since).last_error if failing else ""

    @property
    def since(self) -> float:
        return max([self.changed, *(state.since for state in self.shards.values())])

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "since": iso(self.since),
                               "detail": self.detail}
        if self.last_error:
            out["last_error"] = self.last_error
        failures = sum(state.failures for state in self.shards.values())
        if failures:
            out["failures"] = failures
        out["shards"] = {str(i): state.report() for i, state in sorted(self.shards.items())}
        return out
