"""A channel that lives in memory, so the whole gateway can be driven in tests.

    channel = InMemoryChannel(engine)
    reply = await channel.push("user_123", "my budget is $5,000")
    channel.outbox  # everything said to people, replies and reminders alike
"""

from __future__ import annotations

import itertools
from typing import Any

from gateway.conversation.messages import InboundMessage, OutboundMessage, Reply
from gateway.conversation.ports import Conversations


class InMemoryChannel:
    def __init__(self, engine: Conversations, name: str = "test") -> None:
        self.engine = engine
        self.name = name
        self.outbox: list[OutboundMessage] = []
        self.reachable = True  # False: like a closed page, it cannot push right now
        self._ids = itertools.count(1)

    async def push(self, identifier: Any, text: str, *, conversation: str = "main",
                   message_id: str | None = None) -> Reply | None:
        """Say something as `identifier`; returns the reply (None for a redelivery)."""
        message = InboundMessage(
            channel=self.name, identifier=identifier, conversation=conversation, text=text,
            message_id=message_id or f"{self.name}-{next(self._ids)}",
        )

        async def send(reply: Reply) -> None:
            self.outbox.append(OutboundMessage(self.name, conversation, reply.text,
                                               reply.user_id))

        return await self.engine.handle(message, send)

    def can_reach(self, user_id: str, conversation: str) -> bool:
        return self.reachable

    async def deliver(self, message: OutboundMessage) -> None:
        self.outbox.append(message)

    def pop(self) -> OutboundMessage:
        return self.outbox.pop(0)
