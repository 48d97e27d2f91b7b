"""X-Request-ID: accepted from the caller when sane, else made; bound for every log line of
the request, kept for the envelope's `request.id`, and sent back on every response."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.conversation.request_ids import HEADER, accepted, bound_request_id

_HEADER = HEADER.lower().encode("latin-1")


class RequestIds:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode("latin-1") for k, v in scope.get("headers", ())
                      if k == _HEADER), None)
        request_id = accepted(given)
        scope.setdefault("state", {})["request_id"] = request_id  # request.state.request_id
        raw = request_id.encode("latin-1")

        async def stamped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != _HEADER]
                message = {**message, "headers": [*headers, (_HEADER, raw)]}
            await send(message)

        with bound_request_id(request_id):
            await self.app(scope, receive, stamped)
