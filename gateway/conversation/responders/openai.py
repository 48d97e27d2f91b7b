"""A responder backed by any OpenAI-compatible chat-completions endpoint.

The model sees the user's synopsis, known facts, relevant memories, recent cross-channel
context and the session buffer. Memory extraction stays with the rule reader, so what the
user tells the assistant is kept whatever the model does.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from config.errors import ThreadlineError
from gateway.conversation.responders.base import Changes, Context, Response

Delta = Callable[[str], Awaitable[None]]


class ResponderError(ThreadlineError):
    pass


class OpenAIResponder:
    name = "openai"
    streams = True  # respond(..., on_delta=…) forwards the model's text as it is written

    def __init__(self, *, base_url: str, model: str, api_key: str | None,
                 timeout: float = 30.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.model = model
        self._client = httpx.AsyncClient(base_url=base_url.rstrip("/") + "/", headers=headers,
                                         timeout=timeout)

    def __repr__(self) -> str:
        return f"OpenAIResponder(base_url={str(self._client.base_url)!r}, model={self.model!r})"

    async def close(self) -> None:
        await self._client.aclose()

    async def check(self) -> str:
        """Whether the endpoint answers (`GET models`, as every compatible server serves);
        raises ResponderError saying why not."""
        try:
            answer = await self._client.get("models", timeout=3.0)
        except httpx.HTTPError as exc:
            raise ResponderError(f"model endpoint unreachable: {type(exc).__name__}") from exc
        if answer.status_code in (401, 403):
            raise ResponderError(f"model endpoint refused the API key ({answer.status_code})")
        if answer.status_code >= 500:
            raise ResponderError(f"model endpoint answered {answer.status_code}")
        return f"{self.model} at {self._client.base_url}"

    async def respond(self, context: Context, changes: Changes, *,
                      on_delta: Delta | None = None) -> Response:
        payload = {"model": self.model, "messages": messages_for(context, changes)}
        if on_delta is not None:
            return Response(await self._stream(payload, on_delta), changes)
        try:
            answer = await self._client.post("chat/completions", json=payload)
        except httpx.HTTPError as exc:
            raise ResponderError(f"model endpoint unreachable: {exc!r}") from exc
        if answer.status_code != 200:
            raise ResponderError(f"model endpoint answered {answer.status_code}: "
                                 f"{answer.text[:200]}")
        try:
            text = answer.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ResponderError("model endpoint sent no message content") from exc
        if not isinstance(text, str) or not text.strip():
            raise ResponderError("model endpoint sent an empty message")
        return Response(text.strip(), changes)

    async def _stream(self, payload: dict[str, Any], on_delta: Delta) -> str:
        """chat-completions with `stream: true`: each `data:` chunk's delta goes to
        `on_delta` as it arrives; the stream must end with `[DONE]`."""
        parts: list[str] = []
        finished = False
        try:
            async with self._client.stream("POST", "chat/completions",
                                           json={**payload, "stream": True}) as answer:
                if answer.status_code != 200:
                    body = (await answer.aread()).decode(errors="replace")[:200]
                    raise ResponderError(f"model endpoint answered {answer.status_code}: {body}")
                async for line in answer.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        finished = True
                        break
                    piece = _delta(data)
                    if piece:
                        parts.append(piece)
                        await on_delta(piece)
        except httpx.HTTPError as exc:
            raise ResponderError(f"the model's stream broke off: {type(exc).__name__}") from exc
        if not finished:
            raise ResponderError("the model's stream ended before the answer was finished")
        text = "".join(parts).strip()
        if not text:
            raise ResponderError("model endpoint sent an empty message")
        return text


def _delta(data: str) -> str | None:
    try:
        choice = json.loads(data)["choices"][0]
        piece = (choice.get("delta") or {}).get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ResponderError("model endpoint sent a malformed stream chunk") from exc
    return piece if isinstance(piece, str) else None


def messages_for(context: Context, changes: Changes) -> list[dict[str, Any]]:
    known = [f"- {f.key}: {f.value}" for f in context.facts if f.kind == "fact"]
    known += [f"- {k}: {v} (just told)" for k, v in changes.facts.items()]
    known += [f"- prefers {f.value}" for f in context.facts if f.kind == "preference"]
    notes = [f"- {m.content}" for m in context.memories]
    recent = [f"- [{w.channel}] {w.role}: {w.content}" for w in context.working[-8:]]
    system = "\n".join(filter(None, [
        "You are Threadline, a helpful assistant that remembers the user across channels "
        f"(this message came from {context.channel}). Answer from what you know about the "
        "user; when you do not know, say so plainly.",
        f"Synopsis: {context.synopsis}" if context.synopsis else "",
        "Known about the user:\n" + "\n".join(known) if known else "",
        "Relevant notes:\n" + "\n".join(notes) if notes else "",
        "Recent activity on other channels:\n" + "\n".join(recent) if recent else "",
    ]))
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    messages += [{"role": m.role, "content": m.content} for m in context.buffer]
    messages.append({"role": "user", "content": context.text})
    return messages
