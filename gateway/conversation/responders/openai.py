"""A responder backed by any OpenAI-compatible chat-completions endpoint.

The model sees the user's synopsis, known facts, relevant memories, recent cross-channel
context and the session buffer. Memory extraction stays with the rule reader, so what the
user tells the assistant is kept whatever the model does.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from config.errors import ThreadlineError
from gateway.conversation.responders import tools
from gateway.conversation.responders.base import Changes, Context, Response

log = structlog.get_logger("threadline.responder")

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
        """The model answers and, through its tools, says what to remember; the rule
        reader's `changes` are not used (they are the fallback when the model is down)."""
        messages = messages_for(context, changes)
        text, calls = await self._complete(messages, on_delta, with_tools=True)
        outcome = tools.apply(calls, context.now)
        for reason in outcome.refused:
            log.warning("model tool call refused", reason=reason, user_id=context.user_id)
        if calls and not text:  # it only used tools: tell it how they went, then it answers
            messages.append({"role": "assistant", "content": None, "tool_calls": calls})
            messages += [{"role": "tool", "tool_call_id": call_id, "content": result}
                         for call_id, result in outcome.results.items()]
            text, _ = await self._complete(messages, on_delta, with_tools=False)
        if not text.strip():
            raise ResponderError("model endpoint sent an empty message")
        return Response(text.strip(), outcome.changes)

    async def _complete(self, messages: list[dict[str, Any]], on_delta: Delta | None, *,
                        with_tools: bool) -> tuple[str, list[dict[str, Any]]]:
        payload: dict[str, Any] = {"model": self.model, "messages": messages}
        if with_tools:
            payload["tools"] = tools.TOOLS
        if on_delta is not None:
            return await self._stream(payload, on_delta)
        try:
            answer = await self._client.post("chat/completions", json=payload)
        except httpx.HTTPError as exc:
            raise ResponderError(f"model endpoint unreachable: {exc!r}") from exc
        if answer.status_code != 200:
            raise ResponderError(f"model endpoint answered {answer.status_code}: "
                                 f"{answer.text[:200]}")
        try:
            message = answer.json()["choices"][0]["message"]
            text, calls = message.get("content") or "", message.get("tool_calls") or []
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ResponderError("model endpoint sent no message content") from exc
        if not isinstance(text, str) or not isinstance(calls, list):
            raise ResponderError("model endpoint sent a malformed message")
        if not text.strip() and not calls:
            raise ResponderError("model endpoint sent an empty message")
        return text, calls

    async def _stream(self, payload: dict[str, Any],
                      on_delta: Delta) -> tuple[str, list[dict[str, Any]]]:
        """chat-completions with `stream: true`: each `data:` chunk's text goes to
        `on_delta` as it arrives, tool calls are gathered; the stream must end in
        `[DONE]`."""
        parts: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
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
                    piece = _delta(data, calls)
                    if piece:
                        parts.append(piece)
                        await on_delta(piece)
        except httpx.HTTPError as exc:
            raise ResponderError(f"the model's stream broke off: {type(exc).__name__}") from exc
        if not finished:
            raise ResponderError("the model's stream ended before the answer was finished")
        return "".join(parts), [calls[n] for n in sorted(calls)]


def _delta(data: str, calls: dict[int, dict[str, Any]]) -> str | None:
    """A stream chunk's text; its tool-call pieces are joined into `calls` by index."""
    try:
        delta = json.loads(data)["choices"][0].get("delta") or {}
        for part in delta.get("tool_calls") or []:
            call = calls.setdefault(int(part.get("index", 0)), {
                "id": "", "type": "function", "function": {"name": "", "arguments": ""}})
            call["id"] = part.get("id") or call["id"]
            function = part.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""
        piece = delta.get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise ResponderError("model endpoint sent a malformed stream chunk") from exc
    return piece if isinstance(piece, str) else None


def messages_for(context: Context, changes: Changes) -> list[dict[str, Any]]:
    known = [f"- {f.key}: {f.value}" for f in context.facts if f.kind == "fact"]
    known += [f"- prefers {f.value}" for f in context.facts if f.kind == "preference"]
    notes = [f"- {m.content}" for m in context.memories]
    recent = [f"- [{w.channel}] {w.role}: {w.content}" for w in context.working[-8:]]
    system = "\n".join(filter(None, [
        "You are Threadline, a helpful assistant that remembers the user across channels "
        f"(this message came from {context.channel}). Answer from what you know about the "
        "user; when you do not know, say so plainly. When the user tells you something "
        "worth keeping (a fact, a preference, a note) or asks for a reminder or to forget "
        f"something, use your tools. The time now is {_iso(context.now)} (UTC).",
        f"Synopsis: {context.synopsis}" if context.synopsis else "",
        "Known about the user:\n" + "\n".join(known) if known else "",
        "Relevant notes:\n" + "\n".join(notes) if notes else "",
        "Recent activity on other channels:\n" + "\n".join(recent) if recent else "",
    ]))
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    messages += [{"role": m.role, "content": m.content} for m in context.buffer]
    messages.append({"role": "user", "content": context.text})
    return messages


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds")
