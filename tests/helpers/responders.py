"""Responder doubles for tests that need a reply in flight."""

from __future__ import annotations

import asyncio

from gateway.conversation.responders.base import Changes, Context, Response


class Gated:
    """A responder that answers only when the test sets `release`."""

    name = "gated"

    def __init__(self, reply: str = "answered after all") -> None:
        self.reply = reply
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def respond(self, context: Context, changes: Changes) -> Response:
        self.entered.set()
        await self.release.wait()
        return Response(self.reply, changes)
