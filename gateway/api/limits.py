"""Request bodies over a limit get 413 before they are read, and after the key is checked
(an unauthenticated caller learns nothing and costs nothing)."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.runtime.formations import Formation

_API_PATH = re.compile(r"^/(?:api/([^/]+)/)?v1/")


class _TooLarge(BaseException):
    """Raised from `receive` mid-body; a BaseException, so that the framework's body parser
    (which turns an Exception into a 400) lets it through to us."""


class BodyLimit:
    def __init__(self, app: ASGIApp, *, limit: int, formations: dict[str, Formation],
                 default: str) -> None:
        self.app, self.limit = app, limit
        self.formations, self.default = formations, default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, headers, send)
            return
        seen, started = 0, False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:  # a chunked body with no length said, found too large as it came
            if not started:
                await self._refuse(scope, headers, send)

    async def _refuse(self, scope: Scope, headers: dict[str, str], send: Send) -> None:
        match = _API_PATH.match(scope.get("path", ""))
        if match:
            formation = self.formations.get(match.group(1) or self.default)
            keys = (headers.get("x-muxi-admin-key"), headers.get("x-muxi-client-key"))
            if formation is None or not (formation.is_admin(keys[0])
                                         or formation.is_client(keys[1])):
                await _answer(send, 401, "UNAUTHORIZED", "send a valid X-Muxi-Client-Key or "
                              "X-Muxi-Admin-Key")
                return
        await _answer(send, 413, "PAYLOAD_TOO_LARGE",
                      f"the request body is larger than {self.limit} bytes "
                      "(THREADLINE_MAX_BODY_BYTES)")


async def _answer(send: Send, status: int, code: str, message: str) -> None:
    # The shape of every other error (envelope.error_response), without a Request to hand.
    body: dict[str, Any] = {"object": "error", "type": code.lower(),
                            "timestamp": int(time.time() * 1000),
                            "request": {"id": f"req_{uuid.uuid4().hex[:20]}"},
                            "success": False, "code": code, "message": message,
                            "error": {"code": code, "message": message}, "details": {}}
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(raw)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": raw})
