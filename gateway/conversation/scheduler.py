"""Fires due scheduled tasks into the user's most recently active conversation."""

from __future__ import annotations

import asyncio
import os
import socket

import structlog

from gateway.conversation.channels import ChannelRegistry
from gateway.conversation.messages import OutboundMessage
from memory import Memory
from memory.types import Task

log = structlog.get_logger("threadline.scheduler")


class Scheduler:
    def __init__(self, memory: Memory, channels: ChannelRegistry, *,
                 interval: float = 1.0) -> None:
        self.memory = memory
        self.channels = channels
        self.interval = interval
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self._stopped = asyncio.Event()

    async def run_once(self, at: float | None = None) -> int:
        """Fire every due task once; returns how many were delivered."""
        delivered = 0
        for task in await self.memory.tasks.claim_due(self.worker, at=at):
            if await self._fire(task):
                delivered += 1
        return delivered

    async def _fire(self, task: Task) -> bool:
        session = await self.memory.sessions.latest(task.user_id)
        if session is None:
            log.warning("task has no conversation to go to yet", task_id=task.id,
                        user_id=task.user_id)
            await self.memory.tasks.release(task, self.worker, retry_in=300)
            return False
        text = f"⏰ Reminder: {task.message}"
        try:
            await self.channels.deliver(
                OutboundMessage(session.channel, session.conversation, text, task.user_id)
            )
        except Exception:
            log.exception("task delivery failed; retrying in a minute", task_id=task.id,
                          channel=session.channel)
            await self.memory.tasks.release(task, self.worker)
            return False
        await self.memory.sessions.add_message(session.id, "assistant", text)
        await self.memory.tasks.finish(task, self.worker)
        log.info("task fired", task_id=task.id, user_id=task.user_id, channel=session.channel)
        return True

    async def run(self) -> None:
        while not self._stopped.is_set():
            try:
                await self.run_once()
            except Exception:
                log.exception("scheduler pass failed")
            try:
                await asyncio.wait_for(self._stopped.wait(), self.interval)
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stopped.set()
