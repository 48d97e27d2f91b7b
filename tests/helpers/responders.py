"""Responder doubles for tests that need a reply in flight."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

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


@contextlib.asynccontextmanager
async def streaming_model(engine: Any, reply: str = "Your budget is five thousand dollars, "
                          "as you told me on the web.") -> AsyncIterator[Any]:
    """The engine answers through an OpenAI-compatible stand-in that streams `reply` a word
    at a time, a little apart; yields the stand-in."""
    from gateway.conversation.responders.openai import OpenAIResponder
    from tests.peers.llm import ChatCompletionsPeer

    model = ChatCompletionsPeer()
    model.reply, model.chunk_delay = reply, 0.02
    responder = OpenAIResponder(base_url=await model.start(), model="m", api_key=None)
    previous, engine.responder = engine.responder, responder
    try:
        yield model
    finally:
        engine.responder = previous
        await responder.close()
        await model.stop()
