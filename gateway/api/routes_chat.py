"""/chat: one turn with the assistant, as JSON or as a server-sent event stream."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Literal

import structlog
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.deps import NAMES_USER, client_access, identify, runtime
from gateway.api.envelope import ApiError, Envelope, ErrorBody, Text, ok
from gateway.api.models import sse_event
from gateway.conversation.engine import StreamBrokenError, describe
from gateway.conversation.live import stream_turn
from gateway.conversation.messages import InboundMessage, Reply
from gateway.runtime.formations import Formation
from gateway.runtime.wiring import Runtime
from memory.types import NotFoundError

router = APIRouter()
log = structlog.get_logger("threadline.api")
_TOKENS = re.compile(r"\S+\s*|\s+")


class ChatBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    message: Text = Field(min_length=1, max_length=20_000)
    session_id: Text | None = Field(None, max_length=200)
    stream: bool = False


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatReply(BaseModel):
    message: AssistantMessage
    session_id: str
    request_id: str
    user_id: str


IDEMPOTENCY_HEADER = "X-Muxi-Idempotency-Key"
_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")


async def _message(request: Request, body: ChatBody, rt: Runtime,
                   f: Formation) -> InboundMessage:
    caller = await identify(request, f, rt, create=True)
    user = caller.user_id
    assert user is not None
    # Without a session id, each identifier has its own API conversation: a client that
    # speaks as U98765ABC is another conversation than one speaking as user_123. An api
    # key is named by its fingerprint, never by itself.
    conversation = f"api:{caller.label}"
    if body.session_id:
        # Continue that session's conversation (a new session if it went idle).
        try:
            conversation = (await rt.memory.sessions.get(user, body.session_id)).conversation
        except NotFoundError:
            conversation = f"api:{body.session_id}"
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not _IDEMPOTENCY_KEY.match(key):
        raise ApiError(422, "INVALID_PARAMS", f"{IDEMPOTENCY_HEADER}: 1-200 printable ASCII "
                       "characters without spaces")
    # A retry with the same key gets the same reply, never a second turn.
    return InboundMessage(
        channel="api", identifier=caller.identifier,
        conversation=conversation, text=body.message, formation=f.id, user_id=user,
        message_id=f"{user}:{key}" if key else None, replay=True)


IN_PROGRESS = f"a request with this {IDEMPOTENCY_HEADER} is being answered; retry shortly"


@router.post("/chat", tags=["chat"], dependencies=[NAMES_USER],
             response_model=Envelope[ChatReply], responses={200: {
                 "description": "The reply as JSON, or with stream=true as server-sent "
                                "events: `data: {\"token\"}` frames, then `event: done` with "
                                "{finished, session_id, request_id, user_id}, or `event: "
                                "error` with {error, type}",
                 "content": {"text/event-stream": {
                     "schema": sse_event("message", "done", "error")}}},
                 409: {"model": ErrorBody,
                       "description": "REQUEST_IN_PROGRESS: a request with this "
                                      "X-Muxi-Idempotency-Key is being answered; Retry-After"}})
async def chat(request: Request, body: ChatBody,
               rt: Annotated[Runtime, Depends(runtime)],
               f: Annotated[Formation, Depends(client_access)]) -> Response:
    message = await _message(request, body, rt, f)  # bad input: a JSON error, before any event
    if body.stream:
        return StreamingResponse(_sse(rt, message), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})
    reply = await rt.engine.handle(message)
    if reply is None:
        raise ApiError(409, "REQUEST_IN_PROGRESS", IN_PROGRESS, headers={"Retry-After": "1"})
    return ok(request, {"message": {"role": "assistant", "content": reply.text},
                        "session_id": reply.session_id, "request_id": reply.request_id,
                        "user_id": reply.user_id}, obj="chat", type_="chat.response")


async def _sse(rt: Runtime, message: InboundMessage) -> AsyncIterator[str]:
    """Each piece as the model writes it (the offline assistant's answer word by word),
    then `event: done`; or `event: error` when the turn fails."""
    streamed = False
    async for kind, value in stream_turn(rt.engine, message):
        if kind == "delta":
            streamed = True
            yield f"data: {json.dumps({'token': value})}\n\n"
        elif kind == "error":
            yield _error(value)
        elif value is None:
            busy = {"error": IN_PROGRESS, "type": "in_progress"}
            yield f"event: error\ndata: {json.dumps(busy)}\n\n"
        else:
            reply: Reply = value
            if not streamed:
                for token in _TOKENS.findall(reply.text):
                    yield f"data: {json.dumps({'token': token})}\n\n"
            done = {"finished": True, "session_id": reply.session_id,
                    "request_id": reply.request_id, "user_id": reply.user_id}
            yield f"event: done\ndata: {json.dumps(done)}\n\n"


def _error(exc: BaseException) -> str:
    if isinstance(exc, StreamBrokenError):
        data = {"error": str(exc), "type": "stream_broken"}
    else:
        log.warning("streamed turn failed", error=describe(exc))
        data = {"error": "the gateway could not answer just now; please try again",
                "type": "internal"}
    return f"event: error\ndata: {json.dumps(data)}\n\n"
