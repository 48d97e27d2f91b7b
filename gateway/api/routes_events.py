"""/events: a per-user stream of what the assistant says unprompted (reminders), as
server-sent events. The official SDK reads it with `stream_events(user_id)`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from gateway.api.deps import NAMES_USER, client_access, runtime, user_of
from gateway.api.models import sse_event
from gateway.conversation.live import sse
from gateway.runtime.formations import Formation
from gateway.runtime.wiring import Runtime

router = APIRouter()


@router.get("/events", tags=["events"], dependencies=[NAMES_USER],
            response_class=StreamingResponse, responses={200: {
                "description": "`event: connected` with {user_id}, then `event: message` "
                               "frames with {type, text, channel, conversation, user_id, "
                               "task_id}, as they happen; comments keep the connection alive",
                "content": {"text/event-stream": {"schema": sse_event("connected", "message")}}}})
async def events(request: Request, rt: Annotated[Runtime, Depends(runtime)],
                 f: Annotated[Formation, Depends(client_access)]) -> StreamingResponse:
    user = await user_of(request, f, rt, create=True)
    assert user is not None
    stream = sse(rt.events, user, "api", None, event="message", hello={"user_id": user})
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
