"""/events: a per-user stream of what the assistant says unprompted (reminders), as
server-sent events. The official SDK reads it with `stream_events(user_id)`."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from gateway.api.deps import client_access, runtime, user_of
from gateway.runtime.formations import Formation
from gateway.runtime.wiring import Runtime

router = APIRouter()
KEEP_ALIVE = 15.0  # seconds between comments that keep proxies from closing an idle stream


@router.get("/events", tags=["events"], responses={200: {
    "description": "`event: message` frames with {type, text, channel, conversation, "
                   "user_id, task_id}, as they happen; comments keep the connection alive",
    "content": {"text/event-stream": {}}}})
async def events(request: Request, rt: Annotated[Runtime, Depends(runtime)],
                 f: Annotated[Formation, Depends(client_access)]) -> StreamingResponse:
    user = await user_of(request, f, rt, create=True)
    assert user is not None
    return StreamingResponse(_stream(rt, user), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _stream(rt: Runtime, user_id: str) -> AsyncIterator[str]:
    with rt.events.listen(user_id, "api") as queue:
        yield f"event: connected\ndata: {json.dumps({'user_id': user_id})}\n\n"
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), KEEP_ALIVE)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            yield f"id: {event.id}\nevent: message\ndata: {json.dumps(event.data)}\n\n"
