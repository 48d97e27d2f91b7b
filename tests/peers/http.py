"""Serve an ASGI app (or Starlette routes) on a real uvicorn socket for a test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """`app` (or a list of routes) on 127.0.0.1, a free port; yields its base URL."""
    if isinstance(app, list):
        app = Starlette(routes=app)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           lifespan="off"))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:
            if task.done():
                task.result()  # raises why it could not start
            await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def stop(task: asyncio.Task[Any]) -> None:
    """Cancel a background task and wait for it to finish."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
