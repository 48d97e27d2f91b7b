"""A chat-completions server (the OpenAI protocol) on 127.0.0.1, with scripted behaviour."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web


class ChatCompletionsPeer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.mode = "answer"  # answer | error | slow | garbage
        self.reply = "Your budget is $5,000."
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        if self.mode == "error":
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        if self.mode == "slow":
            await asyncio.sleep(1.5)
        if self.mode == "garbage":
            return web.json_response({"choices": []})
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": self.reply}}],
        })

    async def _models(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "error":
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        return web.json_response({"object": "list", "data": [{"id": "test-model",
                                                              "object": "model"}]})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/v1"
        return self.url

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
