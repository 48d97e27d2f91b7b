"""Fires due scheduled tasks, and keeps the promise: each reminder reaches the person once.

Where it goes: the conversation where it was asked, when that channel can reach the person
now; otherwise the most recently active conversation on a channel that can; otherwise it is
kept in the transcript of the conversation where it was asked (a web chat page finds it
there when reopened). A delivery that fails is tried again with exponential backoff, and
after `max_attempts` the task is marked `failed` with the reason.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass

import structlog

from gateway.conversation.channels import ChannelRegistry
from gateway.conversation.engine import describe
from gateway.conversation.live import NobodyListeningError
from gateway.conversation.messages import OutboundMessage
from memory import Memory
from memory.types import Session, Task, now

log = structlog.get_logger("threadline.scheduler")


@dataclass(frozen=True)
class Backoff:
    first: float = 30.0
    cap: float = 3600.0
    max_attempts: int = 6

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.first * 2 ** (attempt - 1))


class Scheduler:
    def __init__(self, memory: Memory, channels: ChannelRegistry, *,
                 interval: float = 1.0, backoff: Backoff | None = None,
                 formation: str | None = None) -> None:
        self.memory = memory
        self.formation = formation  # None: every formation's tasks
        self.channels = channels
        self.interval = interval
        self.backoff = backoff or Backoff()
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._stopped = asyncio.Event()
        self.running = False  # while `run` is looping (the admin API reports it)

    async def lag(self, at: float | None = None) -> float:
        """Seconds the most overdue task has waited past its time (0 when none waits):
        how far behind the schedulers sharing this database are."""
        at = now() if at is None else at
        oldest = await self.memory.tasks.oldest_due(at)
        return max(0.0, at - oldest) if oldest is not None else 0.0

    async def run_once(self, at: float | None = None) -> int:
        """Fire every due task once; returns how many were delivered."""
        delivered = 0
        for task in await self.memory.tasks.claim_due(self.worker, at=at,
                                                      formation=self.formation):
            if await self._fire(task):
                delivered += 1
        return delivered

    async def _fire(self, task: Task) -> bool:
        text = task.message if task.kind == "notice" else f"⏰ Reminder: {task.message}"
        target = await self._reachable(task)
        if target is None:  # nobody reachable now: the transcript keeps it
            target = await self._origin(task)
            if target is None:
                return await self._failed(task, "no conversation of this user to deliver to")
            via = f"transcript:{target[0]}:{target[1]}"
        else:
            try:
                await self.channels.deliver(
                    OutboundMessage(target[0], target[1], text, task.user_id,
                                    {"task_id": task.id}))
                via = f"{target[0]}:{target[1]}"
            except NobodyListeningError:  # the page closed since: its transcript keeps it
                via = f"transcript:{target[0]}:{target[1]}"
            except Exception as exc:  # noqa: BLE001 - any failure is retried, then given up
                return await self._failed(task, f"{target[0]}: {describe(exc)}")
        session = await self.memory.sessions.open(task.user_id, task.formation_id, *target)
        async with self.memory.tasks.db.transaction() as tx:
            await self.memory.sessions.add_message(session.id, "assistant", text, q=tx)
            await self.memory.tasks.finish(task, self.worker, via=via, q=tx)
        log.info("task delivered", task_id=task.id, user_id=task.user_id, via=via)
        return not via.startswith("transcript:")

    async def _reachable(self, task: Task) -> tuple[str, str] | None:
        """Where it was asked if that can reach the person now, else their most recently
        active conversation on a channel that can."""
        places: list[tuple[str, str]] = []
        if task.channel and task.conversation:
            places.append((task.channel, task.conversation))
        for session in await self.memory.sessions.list(task.user_id, limit=50):
            places.append((session.channel, session.conversation))
        for channel, conversation in dict.fromkeys(places):
            if self.channels.can_reach(channel, task.user_id, conversation):
                return channel, conversation
        return None

    async def _origin(self, task: Task) -> tuple[str, str] | None:
        if task.channel and task.conversation:
            return task.channel, task.conversation
        latest: Session | None = await self.memory.sessions.latest(task.user_id)
        return (latest.channel, latest.conversation) if latest is not None else None

    async def _failed(self, task: Task, error: str) -> bool:
        attempt = task.attempts + 1
        if attempt >= self.backoff.max_attempts:
            await self.memory.tasks.fail(task, self.worker, error=error)
            log.error("task failed; giving up", task_id=task.id, user_id=task.user_id,
                      attempts=attempt, error=error)
        else:
            delay = self.backoff.delay(attempt)
            await self.memory.tasks.retry(task, self.worker, delay=delay, error=error)
            log.warning("task delivery failed; retrying", task_id=task.id, attempts=attempt,
                        retry_in=delay, error=error)
        return False

    async def run(self) -> None:
        self.running = True
        try:
            while not self._stopped.is_set():
                try:
                    await self.run_once()
                except Exception as exc:  # noqa: BLE001 - the next pass tries again
                    log.warning("scheduler pass failed", error=describe(exc))
                try:
                    await asyncio.wait_for(self._stopped.wait(), self.interval)
                except TimeoutError:
                    pass
        finally:
            self.running = False

    def stop(self) -> None:
        self._stopped.set()
