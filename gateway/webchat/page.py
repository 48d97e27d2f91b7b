"""The web chat page: a person types, the reply streams in.

Who is typing comes from a token the host application signs with the webchat secret
(`server.webchat_secret` / THREADLINE_WEBCHAT_SECRET), so nobody can speak as another
user's identifier. The host signs one per visit and opens the page with it:

    from gateway.webchat import sign_token

    token = sign_token(b"the webchat secret", "alice@example.com", ttl=3600)
    url = f"https://chat.example.com/?token={token}"
    # or, on a page the host serves itself: <script>window.THREADLINE_TOKEN = "…"</script>

A token is `<base64url(payload)>.<base64url(HMAC-SHA-256(secret, <base64url(payload)>))>`
(base64url without padding) with the payload {"sub": identifier, "exp": unix seconds} and
optionally "type": the identifier's type ("slack", "email", …). Any language can make one.

In development, for a client on this machine (loopback) and with no webchat secret set,
the page instead asks for a name: whatever identifier is typed is who is talking.

Routes: GET / and /chat (the page; /chat?embed=1 inside the launcher's panel);
GET /webchat/config (token or name mode, and why); POST /webchat/verify {"token"} (who the
token names, checked before the page says so: {"identifier", "type", "expires_in"} or a 401);
POST /webchat/messages {"text", "conversation", "token" | "name", "message_id"?} answering a
text/event-stream of `data: {"token": …}` frames, then `event: done` {"user_id",
"session_id", "request_id"}, or `event: error` {"error", "type"} (a retry with the same
message_id gets the same reply, never a second turn);
GET /webchat/events?conversation=…&token=…|name=… a text/event-stream of `event: push`
frames (reminders) while the page is open; GET /webchat/transcript?conversation=…&… the
conversation so far, for a page opened again; GET /webchat/launcher.js (the script another
site includes to open the chat in a corner of its pages, see launcher.js).

Framing: the page may be framed by its own origin and by the origins in
`server.webchat_frame_ancestors` / THREADLINE_WEBCHAT_FRAME_ANCESTORS, by nobody else.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from config.settings import ConfigError, Settings
from gateway.api.envelope import error_response
from gateway.conversation.engine import StreamBrokenError, describe
from gateway.conversation.live import sse, stream_turn
from gateway.conversation.messages import InboundMessage
from gateway.runtime.formations import Formation
from gateway.runtime.wiring import Runtime
from gateway.webchat.tokens import TokenError, read_token, verify_token
from identity import InvalidIdentifierError
from memory.lifecycle import iso

log = structlog.get_logger("threadline.webchat")

CHANNEL = "web"
MAX_TEXT = 20_000
MAX_BODY = 1 << 20  # a 20,000-character text fits even written as \uXXXX escapes
MIN_SECRET = 16
PAGE = Path(__file__).parent / "static" / "webchat.html"
LAUNCHER = Path(__file__).parent / "static" / "launcher.js"
_STATUS_CODES = {413: "PAYLOAD_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE"}
_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

_CONVERSATION = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
_TOKENS = re.compile(r"\S+\s*|\s+")
_INLINE = re.compile(r"<(script|style)>(.*?)</\1>", re.DOTALL)
_NO_SECRET = "this gateway has no webchat secret, so it cannot check tokens"


class _Invalid(Exception):
    def __init__(self, field: str, message: str, *, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.status = status


def _is_loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def _loopback_name(host: str) -> bool:
    """`localhost`, `127.0.0.1`, `[::1]` … (a port allowed): a name that nobody else's DNS
    can point at this machine."""
    if host.startswith("["):  # [::1]:8000
        name = host[1:host.find("]")] if "]" in host else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def name_mode_refusal(request: Request, settings: Settings) -> str | None:
    """Why this request may not say who it is by name, or None when it may.

    Beside the loopback client, the Host must be a loopback name (a page of another site
    whose DNS name was rebound to 127.0.0.1 sends its own name), and an Origin, when a
    browser sends one, must be this very host (a cross-site page posting here sends its
    own)."""
    if settings.webchat_secret is not None:
        return ("a webchat secret is configured, so who is talking comes only from a token "
                "signed by the host application")
    if settings.env != "development":
        return "name mode is for development only, and this gateway runs in production"
    if not _is_loopback(request):
        return "name mode is only for a browser on the gateway's own machine (loopback)"
    host = request.headers.get("host", "")
    if not _loopback_name(host):
        return f"name mode answers only requests for a loopback host, not {host[:80]!r}"
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
        return f"name mode refuses requests from another site ({origin[:80]})"
    return None


async def _read_body(request: Request) -> dict[str, Any]:
    # Only JSON: a form or text/plain post is what another site can send without asking.
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/json":
        raise _Invalid("body", "the request body must be JSON (Content-Type: application/json)",
                       status=415)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise _Invalid("body", f"the request body is larger than {MAX_BODY} bytes", status=413)
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise _Invalid("body", f"the request body is larger than {MAX_BODY} bytes",
                           status=413)
    try:
        body = json.loads(raw)
    except ValueError:
        raise _Invalid("body", "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise _Invalid("body", "the request body must be a JSON object")
    return body


async def _json(request: Request) -> dict[str, Any] | Response:
    """The request's JSON object, or the response refusing it."""
    try:
        return await _read_body(request)
    except _Invalid as exc:
        if exc.status in _STATUS_CODES:
            return error_response(request, exc.status, _STATUS_CODES[exc.status], exc.message)
        return _invalid(request, exc.field, exc.message)
    except ClientDisconnect:
        return Response(status_code=400)


def _text(body: dict[str, Any]) -> str:
    text = body.get("text")
    if text is None:
        raise _Invalid("text", "text is required")
    if not isinstance(text, str):
        raise _Invalid("text", "text must be a string")
    if not text.strip():
        raise _Invalid("text", "text must not be empty")
    if len(text) > MAX_TEXT:
        raise _Invalid("text", f"text is longer than {MAX_TEXT} characters")
    if "\x00" in text:
        raise _Invalid("text", "text must not contain a NUL character (\\u0000)")
    return text


def _conversation(body: dict[str, Any]) -> str:
    conversation = body.get("conversation")
    if conversation is None or conversation == "":
        raise _Invalid("conversation", "conversation is required (an id the page makes per tab)")
    if not isinstance(conversation, str) or not _CONVERSATION.match(conversation):
        raise _Invalid("conversation", "conversation must be 1-100 letters, digits, '_', '.', "
                                       "':' or '-'")
    return conversation


def _invalid(request: Request, field: str, message: str) -> JSONResponse:
    return error_response(request, 422, "INVALID_PARAMS", f"{field}: {message}", {
        "field": field, "errors": [{"field": field, "msg": message, "type": "value_error"}]})


def _sse(event: str | None, data: dict[str, Any]) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n"


class WebChat:
    def __init__(self, runtime: Runtime, settings: Settings, formation: Formation) -> None:
        self.runtime = runtime
        self.settings = settings
        self.formation = formation
        self.secret = (settings.webchat_secret.get_secret_value().encode()
                       if settings.webchat_secret is not None else None)
        if self.secret is not None and len(self.secret) < MIN_SECRET:
            raise ConfigError(f"THREADLINE_WEBCHAT_SECRET must be at least {MIN_SECRET} "
                              "characters (make one with: python -c 'import secrets; "
                              "print(secrets.token_urlsafe(32))')")
        if self.secret is None and settings.env == "production":
            log.warning("web chat has no webchat secret in production: the page will refuse "
                        "every message until THREADLINE_WEBCHAT_SECRET is set")
        self.html = PAGE.read_text(encoding="utf-8")
        self.launcher = LAUNCHER.read_text(encoding="utf-8")
        self.page_headers = {
            "Content-Security-Policy": _policy(self.html, settings.webchat_frame_ancestors),
            "Referrer-Policy": "no-referrer",  # the page's URL may carry ?token=
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        }
        if not settings.webchat_frame_ancestors:  # it can only say one origin: our own
            self.page_headers["X-Frame-Options"] = "SAMEORIGIN"

    async def page(self, request: Request) -> Response:
        return HTMLResponse(self.html, headers=self.page_headers)

    async def launcher_script(self, request: Request) -> Response:
        # Included by other sites: their pages may load it (CORP), never as anything but JS.
        return Response(self.launcher, media_type="text/javascript", headers={
            "X-Content-Type-Options": "nosniff", "Cross-Origin-Resource-Policy": "cross-origin",
            "Cache-Control": "public, max-age=300"})

    async def config(self, request: Request) -> Response:
        refusal = name_mode_refusal(request, self.settings)
        return JSONResponse(
            {"mode": "token" if refusal else "name", "name_allowed": refusal is None,
             "reason": refusal, "channel": CHANNEL, "max_text": MAX_TEXT},
            headers={"Cache-Control": "no-store"},
        )

    async def verify(self, request: Request) -> Response:
        """Who a token names, so the page says "Signed in as" only for one the gateway
        accepts; refused tokens get the same 401 a message would. Nobody is created."""
        body = await _json(request)
        if isinstance(body, Response):
            return body
        token = body.get("token")
        if not isinstance(token, str) or not token:
            return _invalid(request, "token", "token is required (a string)")
        if self.secret is None:
            return self._refuse(request, 401, "TOKEN_INVALID", _NO_SECRET)
        try:
            claims = read_token(self.secret, token)
            self.runtime.identity.parse(claims.who)
        except TokenError as exc:
            return self._refuse(request, 401, exc.code, exc.message)
        except InvalidIdentifierError as exc:
            return _invalid(request, "token", str(exc))
        return JSONResponse({"identifier": claims.identifier, "type": claims.type,
                             "expires_in": max(0, int(claims.expires_at - time.time()))},
                            headers={"Cache-Control": "no-store"})

    async def message(self, request: Request) -> Response:
        body = await _json(request)
        if isinstance(body, Response):
            return body
        try:
            text, conversation = _text(body), _conversation(body)
            message_id = body.get("message_id")
            if message_id is not None and (not isinstance(message_id, str)
                                           or not _CONVERSATION.match(message_id)):
                raise _Invalid("message_id", "message_id must be 1-100 letters, digits, '_', "
                                             "'.', ':' or '-'")
        except _Invalid as exc:
            return _invalid(request, exc.field, exc.message)
        who = await self._who(request, body)
        if isinstance(who, Response):
            return who
        identifier, user_id = who
        message = InboundMessage(
            channel=CHANNEL, identifier=identifier, conversation=conversation, text=text,
            formation=self.formation.id, user_id=user_id, replay=True,
            message_id=f"{user_id}:{message_id}" if message_id else None)
        return StreamingResponse(self._stream(message), media_type="text/event-stream",
                                 headers=_STREAM_HEADERS)

    async def events(self, request: Request) -> Response:
        """What the assistant says unprompted in this conversation, while the page is open."""
        asked = await self._asking(request)
        if isinstance(asked, Response):
            return asked
        conversation, (_, user_id) = asked
        stream = sse(self.runtime.events, user_id, CHANNEL, conversation, event="push",
                     hello={"conversation": conversation})
        return StreamingResponse(stream, media_type="text/event-stream", headers=_STREAM_HEADERS)

    async def transcript(self, request: Request) -> Response:
        """The conversation so far (its latest session), for a page opened again."""
        asked = await self._asking(request, create=False)
        if isinstance(asked, Response):
            return asked
        conversation, (_, user_id) = asked
        messages: list[dict[str, Any]] = []
        sessions = self.runtime.memory.sessions
        session = await sessions.find(user_id, CHANNEL, conversation) if user_id else None
        if session is not None:
            rows, _ = await sessions.messages(session.id, limit=200)
            messages = [{"role": m.role, "content": m.content, "created_at": iso(m.created_at)}
                        for m in rows]
        return JSONResponse({"conversation": conversation, "messages": messages},
                            headers={"Cache-Control": "no-store"})

    async def _asking(self, request: Request, *, create: bool = True
                      ) -> tuple[str, tuple[Any, str]] | Response:
        """A GET's conversation and who asks (from the query), or the refusal."""
        query = dict(request.query_params)
        try:
            conversation = _conversation(query)
        except _Invalid as exc:
            return _invalid(request, exc.field, exc.message)
        who = await self._who(request, query, create=create)
        return who if isinstance(who, Response) else (conversation, who)

    async def _who(self, request: Request, given: dict[str, Any], *,
                   create: bool = True) -> tuple[Any, str] | Response:
        """Who is talking (a verified token, or a name in development) and their user, or
        the response refusing the request."""
        token, name = given.get("token"), given.get("name")
        if token is not None and name is not None:
            return _invalid(request, "token", "send either a token or a name, not both")
        if token is not None and not isinstance(token, str):
            return _invalid(request, "token", "token must be a string")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            return _invalid(request, "name", "name must be a non-empty string")
        if token is not None:
            field = "token"
            if self.secret is None:
                return self._refuse(request, 401, "TOKEN_INVALID", _NO_SECRET)
            try:
                identifier = verify_token(self.secret, token)
            except TokenError as exc:
                return self._refuse(request, 401, exc.code, exc.message)
        elif name is not None:
            field = "name"
            refusal = name_mode_refusal(request, self.settings)
            if refusal is not None:
                return self._refuse(request, 403, "NAME_MODE_DISABLED",
                                    f"name mode is refused: {refusal}")
            identifier = name.strip()
        elif self.secret is not None or name_mode_refusal(request, self.settings):
            return self._refuse(request, 401, "TOKEN_REQUIRED",
                                "a token signed by the host application is required")
        else:
            return _invalid(request, "name", "name is required (who is talking)")
        try:
            user_id = await self.runtime.identity.resolve(self.formation.id, identifier,
                                                          create=create)
        except InvalidIdentifierError as exc:
            return _invalid(request, field, str(exc))
        return identifier, user_id or ""

    def _refuse(self, request: Request, status: int, code: str, message: str) -> JSONResponse:
        log.info("web chat message refused", code=code, status=status)
        return error_response(request, status, code, message)

    async def _stream(self, message: InboundMessage) -> AsyncIterator[str]:
        """The reply as it is written (the model's pieces, or the offline answer word by
        word), then `done`; the turn runs to its end even when the tab goes away."""
        streamed = False
        async for kind, value in stream_turn(self.runtime.engine, message):
            if kind == "delta":
                streamed = True
                yield _sse(None, {"token": value})
            elif kind == "error":
                yield _sse("error", _turn_error(value, message))
            elif value is None:
                yield _sse("error", {"error": "this message is being answered already",
                                     "type": "in_progress"})
            else:
                if not streamed:
                    for piece in _TOKENS.findall(value.text):
                        yield _sse(None, {"token": piece})
                yield _sse("done", {"user_id": value.user_id, "session_id": value.session_id,
                                    "request_id": value.request_id})


def _turn_error(exc: BaseException, message: InboundMessage) -> dict[str, str]:
    if isinstance(exc, StreamBrokenError):
        return {"error": str(exc), "type": "stream_broken"}
    if isinstance(exc, InvalidIdentifierError):
        return {"error": str(exc), "type": "invalid_request"}
    log.warning("web chat turn failed", user_id=message.user_id, error=describe(exc))
    return {"error": "the gateway could not answer just now; please try again",
            "type": "internal"}


def _policy(html: str, frame_ancestors: list[str]) -> str:
    """A Content-Security-Policy allowing exactly the page's own inline script and style,
    framed only by itself and the listed sites."""
    allowed: dict[str, list[str]] = {"script": [], "style": []}
    for tag, body in _INLINE.findall(html):
        digest = base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode()
        allowed[tag].append(f"'sha256-{digest}'")
    script = " ".join(allowed["script"]) or "'none'"
    style = " ".join(allowed["style"]) or "'none'"
    ancestors = " ".join(["'self'", *frame_ancestors])
    return (f"default-src 'none'; script-src {script}; style-src {style}; connect-src 'self'; "
            f"img-src 'self' data:; frame-ancestors {ancestors}; base-uri 'none'; "
            "form-action 'none'")


def routes(runtime: Runtime, settings: Settings, formation: Formation) -> list[Route]:
    chat = WebChat(runtime, settings, formation)
    return [
        Route("/", chat.page, methods=["GET"], name="webchat_page"),
        Route("/chat", chat.page, methods=["GET"], name="webchat_page_chat"),
        Route("/webchat/config", chat.config, methods=["GET"], name="webchat_config"),
        Route("/webchat/verify", chat.verify, methods=["POST"], name="webchat_verify"),
        Route("/webchat/launcher.js", chat.launcher_script, methods=["GET"],
              name="webchat_launcher"),
        Route("/webchat/messages", chat.message, methods=["POST"], name="webchat_messages"),
        Route("/webchat/events", chat.events, methods=["GET"], name="webchat_events"),
        Route("/webchat/transcript", chat.transcript, methods=["GET"], name="webchat_transcript"),
    ]
