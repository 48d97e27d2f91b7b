"""The inbox worker: answers the messages no process is answering.

A channel keeps each platform message in the inbox before acknowledging it (see
`Conversations.accept`), and every turn keeps its message with its claim. If the process
that acknowledged or claimed a message dies before saying the answer, the message waits:
queued for longer than `grace`, or claimed past its lease. Every replica runs this worker;
the claim lets exactly one of them answer, and the reply goes out through the channel's
delivery (the way reminders do), to the conversation the message came from."""

from __future__ import annotations

import asyncio
import time

import structlog

from gateway.conversation.channels import ChannelRegistry
from gateway.conversation.engine import Engine, describe
from gateway.conversation.live import NobodyListeningError
from gateway.conversation.messages import OutboundMessage, Reply, from_payload

log = structlog.get_logger("threadline.inbox")


class InboxWorker:
    def __init__(self, engine: Engine, channels: ChannelRegistry, *, grace: float = 10.0,
                 interval: float = 2.0) -> None:
        self.engine, self.channels = engine, channels
        self.grace, self.interval = grace, interval
        self._stop = asyncio.Event()
        self._warned = 0.0

    async def run_once(self) -> int:
        """Answer what is waiting; returns how many were answered here."""
        answered = 0
        # Only channels this replica can say something on (not a terminal chat, say).
        for payload in await self.engine.memory.claims.due(grace=self.grace,
                                                           channels=self.channels.names()):
            message = from_payload(payload)

            async def send(reply: Reply, message=message) -> None:  # type: ignore[no-untyped-def]
                try:
                    await self.channels.deliver(OutboundMessage(
                        message.channel, message.conversation, reply.text, reply.user_id))
                except NobodyListeningError:
                    pass  # a closed page or stream: the reply waits in its transcript

            try:
                if await self.engine.handle(message, send) is not None:
                    answered += 1
                    log.info("answered from the inbox", channel=message.channel)
            except Exception as exc:  # noqa: BLE001 - back in the inbox: tried again later
                if time.monotonic() - self._warned > 60:
                    self._warned = time.monotonic()
                    log.warning("inbox message not answered yet", channel=message.channel,
                                error=describe(exc))
        return answered

    async def run(self) -> None:
        self._stop.clear()
        while not self._stop.is_set():
            try:
                await self.run_once()
            except Exception as exc:  # noqa: BLE001 - the database may be back next round
                if time.monotonic() - self._warned > 60:
                    self._warned = time.monotonic()
                    log.warning("inbox not read", error=describe(exc))
            try:
                await asyncio.wait_for(self._stop.wait(), self.interval)
            except TimeoutError:
                pass

    def stop(self) -> None:
        self._stop.set()
