"""A chat-completions server (the OpenAI protocol) on 127.0.0.1, with scripted behaviour."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from aiohttp import web

# The peer's embedding model: each word belongs to a concept, one dimension per concept,
# so texts about the same thing in different words point the same way.
CONCEPTS = {
    "car": "vehicle", "vehicle": "vehicle", "drive": "vehicle", "subaru": "vehicle",
    "budget": "money", "spend": "money", "money": "money", "cost": "money", "$5,000": "money",
    "peanuts": "allergy", "allergic": "allergy", "avoid": "allergy", "foods": "allergy",
    "sister": "family", "sibling": "family", "brother": "family",
}
_DIMENSIONS = sorted(set(CONCEPTS.values())) + ["other"]


def concept_vector(text: str) -> list[float]:
    vector = [0.0] * len(_DIMENSIONS)
    for word in text.lower().replace("?", " ").replace(".", " ").split():
        vector[_DIMENSIONS.index(CONCEPTS.get(word, "other"))] += 1.0
    vector[-1] *= 0.1  # words outside every concept barely count
    return vector


class ChatCompletionsPeer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.mode = "answer"  # answer | error | slow | garbage | drop (mid-stream)
        self.reply = "Your budget is $5,000."
        self.chunk_delay = 0.0  # seconds between streamed chunks
        self.delay = 0.0  # seconds every answer takes (a model thinking)
        self.released = asyncio.Event()  # a stream waits for this before its last chunk
        self.released.set()
        self.finished = asyncio.Event()  # set once a stream has sent its last chunk
        # Tool calls the model makes first (name, arguments: a dict, or raw text for a
        # malformed call); it answers in words once told how they went.
        self.tool_calls: list[tuple[str, Any]] = []
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
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.mode == "garbage":
            return web.json_response({"choices": []})
        calls = self._calls_for(body)
        if body.get("stream"):
            return await self._stream(request, body, calls)
        if calls:
            return web.json_response({
                "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"index": 0, "finish_reason": "tool_calls",
                             "message": {"role": "assistant", "content": None,
                                         "tool_calls": calls}}]})
        return web.json_response({
            "id": "chatcmpl-1", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": self.reply}}],
        })

    def _calls_for(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        told = any(m.get("role") == "tool" for m in body.get("messages") or [])
        if not self.tool_calls or "tools" not in body or told:
            return []
        return [{"id": f"call_{n}", "type": "function",
                 "function": {"name": name, "arguments": args if isinstance(args, str)
                              else json.dumps(args)}}
                for n, (name, args) in enumerate(self.tool_calls)]

    async def _stream(self, request: web.Request, body: dict[str, Any],
                      calls: list[dict[str, Any]]) -> web.StreamResponse:
        """The reply as chat-completions server-sent events, a word per chunk (or the tool
        calls, their arguments cut in two pieces)."""
        self.finished.clear()
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        if calls:
            for n, call in enumerate(calls):
                args = call["function"]["arguments"]
                half = len(args) // 2
                for piece in ({"index": n, "id": call["id"], "type": "function",
                               "function": {"name": call["function"]["name"],
                                            "arguments": args[:half]}},
                              {"index": n, "function": {"arguments": args[half:]}}):
                    chunk = {"choices": [{"index": 0, "delta": {"tool_calls": [piece]}}]}
                    await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await response.write(b"data: [DONE]\n\n")
            return response
        words = self.reply.split(" ")
        for n, word in enumerate(words):
            if n == len(words) - 1:
                await self.released.wait()
            if self.mode == "drop" and n == len(words) // 2:
                assert request.transport is not None
                request.transport.abort()  # the endpoint goes away mid-answer
                return response
            piece = word if n == 0 else " " + word
            chunk = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
                     "model": body.get("model"),
                     "choices": [{"index": 0, "delta": {"content": piece},
                                  "finish_reason": None}]}
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(self.chunk_delay)
        done = {"id": "chatcmpl-1", "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        await response.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
        self.finished.set()
        return response

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        if self.mode == "error":
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if self.mode == "garbage":
            texts = texts[:-1]  # one vector short
        return web.json_response({"object": "list", "model": body.get("model"), "data": [
            {"object": "embedding", "index": i, "embedding": concept_vector(t)}
            for i, t in enumerate(texts)]})

    async def _models(self, request: web.Request) -> web.StreamResponse:
        if self.mode == "error":
            return web.json_response({"error": {"message": "overloaded"}}, status=503)
        return web.json_response({"object": "list", "data": [{"id": "test-model",
                                                              "object": "model"}]})

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/embeddings", self._embeddings)
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
