"""A Discord stand-in on 127.0.0.1: the REST calls discord.py makes and the gateway websocket.

    peer = DiscordPeer(token="…")
    await peer.start()               # peer.api_url, peer.gateway_url
    await peer.wait_for(lambda: peer.ready)
    await peer.push(peer.message("message_create_dm", content="hi"))
    await peer.wait_for(lambda: peer.posts)

Payloads come from tests/fixtures/discord/. Gateway frames are plain JSON text (no zlib).
Every dispatch gets the next sequence number and is kept, so a RESUME replays what the client
missed while disconnected, as Discord does.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "discord"
MESSAGE_CONTENT = 1 << 15
MESSAGE_CONTENT_LIMITED_FLAG = 1 << 19

BOT_ID = "1100000000000000001"
GUILD_ID = "1200000000000000001"
GUILD_CHANNEL_ID = "1300000000000000001"
DM_CHANNEL_ID = "1300000000000000002"
ALICE_ID = "1400000000000000001"
BOB_ID = "1400000000000000002"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # discord.py parses a body as JSON only when Content-Type is exactly application/json;
    # web.json_response would add "; charset=utf-8".
    return web.Response(body=json.dumps(data).encode(), status=status,
                        content_type="application/json", headers=headers)


class DiscordPeer:
    def __init__(self, token: str) -> None:
        self.token = token
        self.message_content_enabled = True  # the Developer Portal's intent toggle
        self.send_guild_create = True
        self.posts: list[tuple[str, dict[str, Any]]] = []  # (channel id, body) accepted
        self.rate_limited: list[tuple[str, dict[str, Any]]] = []  # answered with a 429
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.connections = 0
        self.ready = 0  # READY dispatches sent: sessions the client can be pushed messages on
        self.no_dm: set[str] = set()  # users who accept no direct messages from the bot
        self._dm_owner: dict[str, str] = {}  # direct-message channel -> its recipient
        self.typing: list[str] = []  # channels a typing indicator was shown in
        self.edits: list[tuple[str, str, dict[str, Any]]] = []  # (channel, message, body)
        self.texts: dict[str, str] = {}  # message id -> its content now
        self.url = ""
        self._limit_next = 0
        self._retry_after = 0.05
        self._seq = 0
        self._session_id: str | None = None
        self._events: list[dict[str, Any]] = []
        self._ws: web.WebSocketResponse | None = None
        self._request: web.Request | None = None
        self._send_lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._ids = itertools.count(1600000000000000001)
        self._runner: web.AppRunner | None = None

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/gw"

    async def start(self) -> None:
        app = web.Application(middlewares=[self._authorized])
        app.router.add_get("/api/v10/users/@me", self._me)
        app.router.add_get("/api/v10/oauth2/applications/@me", self._application)
        app.router.add_get("/api/v10/gateway", self._gateway_info)
        app.router.add_get("/api/v10/gateway/bot", self._gateway_info)
        app.router.add_post("/api/v10/channels/{channel_id}/messages", self._create_message)
        app.router.add_post("/api/v10/users/@me/channels", self._open_dm)
        app.router.add_post("/api/v10/channels/{channel_id}/typing", self._typing)
        app.router.add_patch("/api/v10/channels/{channel_id}/messages/{message_id}",
                             self._edit_message)
        app.router.add_get("/gw", self._gateway)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner:
            await self._runner.shutdown()
            await self._runner.cleanup()

    # -- what tests do ----------------------------------------------------------------------

    def message(self, name: str, **changes: Any) -> dict[str, Any]:
        """The `d` of a MESSAGE_CREATE fixture, with fields replaced."""
        data = copy.deepcopy(fixture(name)["d"])
        data.update(changes)
        return data

    async def push(self, message: dict[str, Any]) -> None:
        await self.dispatch("MESSAGE_CREATE", message)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a dispatch now, or keep it for the RESUME of a dropped connection."""
        async with self._send_lock:
            self._seq += 1
            frame = {"op": 0, "t": event, "s": self._seq, "d": data}
            self._events.append(frame)
            if self._ws is not None and not self._ws.closed:
                await self._ws.send_str(json.dumps(frame))

    def rate_limit_next(self, count: int = 1, retry_after: float = 0.05) -> None:
        """Answer the next `count` message posts with 429 and this retry_after."""
        self._limit_next, self._retry_after = count, retry_after

    async def drop(self) -> None:
        """Cut the gateway connection without a close frame, as a network failure would."""
        async with self._send_lock:
            request, self._ws, self._request = self._request, None, None
        if request is not None and request.transport is not None:
            request.transport.abort()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    def bodies(self, channel_id: str | None = None) -> list[dict[str, Any]]:
        return [body for cid, body in self.posts if channel_id in (None, cid)]

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # -- REST --------------------------------------------------------------------------------

    @web.middleware
    async def _authorized(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/api/") and (
            request.headers.get("Authorization") != f"Bot {self.token}"
        ):
            return _json(fixture("unauthorized"), status=401)
        response: web.StreamResponse = await handler(request)
        return response

    async def _me(self, request: web.Request) -> web.Response:
        return _json(fixture("user_me"))

    async def _application(self, request: web.Request) -> web.Response:
        application = fixture("application")
        if not self.message_content_enabled:
            application["flags"] &= ~MESSAGE_CONTENT_LIMITED_FLAG
        return _json(application)

    async def _gateway_info(self, request: web.Request) -> web.Response:
        return _json({"url": self.gateway_url, "shards": 1, "session_start_limit": {
            "total": 1000, "remaining": 999, "reset_after": 14400000, "max_concurrency": 1}})

    async def _typing(self, request: web.Request) -> web.Response:
        self.typing.append(request.match_info["channel_id"])
        return web.Response(status=204)

    async def _edit_message(self, request: web.Request) -> web.Response:
        channel_id, message_id = request.match_info["channel_id"], request.match_info["message_id"]
        body = await request.json()
        self.edits.append((channel_id, message_id, body))
        self.texts[message_id] = body.get("content", "")
        edited = fixture("message_created_reply")
        edited.update(id=message_id, channel_id=channel_id, content=self.texts[message_id])
        await self._notify()
        return _json(edited)

    async def _open_dm(self, request: web.Request) -> web.Response:
        """A direct-message channel with a user; refused for those in `no_dm`."""
        recipient = str((await request.json())["recipient_id"])
        if recipient in self.no_dm:
            return _json({"message": "Cannot send messages to this user", "code": 50007},
                         status=403)
        author = dict(fixture("message_create_dm")["d"]["author"], id=recipient)
        channel_id = f"77{recipient[-10:]}"
        self._dm_owner[channel_id] = recipient
        return _json({"id": channel_id, "type": 1, "last_message_id": None,
                      "flags": 0, "recipients": [author]})

    async def _create_message(self, request: web.Request) -> web.Response:
        channel_id = request.match_info["channel_id"]
        body = await request.json()
        if self._dm_owner.get(channel_id) in self.no_dm:
            return _json({"message": "Cannot send messages to this user", "code": 50007},
                         status=403)
        if self._limit_next > 0:
            self._limit_next -= 1
            self.rate_limited.append((channel_id, body))
            limited = fixture("rate_limited") | {"retry_after": self._retry_after}
            return _json(limited, status=429, headers={
                "Via": "1.1 google", "Retry-After": "1", "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0", "X-RateLimit-Reset-After": str(self._retry_after),
                "X-RateLimit-Bucket": "80c17d2f203122d936070c88c8d10f33",
                "X-RateLimit-Scope": "user"})
        self.posts.append((channel_id, body))
        created = fixture("message_created_reply")
        reference = body.get("message_reference")
        created.update(id=str(next(self._ids)), channel_id=channel_id,
                       content=body.get("content", ""))
        self.texts[created["id"]] = created["content"]
        if reference:
            created.update(type=19, message_reference=reference)
        await self._notify()
        return _json(created, headers={
            "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "4",
            "X-RateLimit-Reset-After": "1.0",
            "X-RateLimit-Bucket": "80c17d2f203122d936070c88c8d10f33"})

    # -- the gateway -------------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.connections += 1
        await ws.send_str(json.dumps(fixture("gateway_hello")))
        async for frame in ws:
            if frame.type is not WSMsgType.TEXT:
                continue
            payload = json.loads(frame.data)
            op = payload.get("op")
            if op == 1:
                await ws.send_str(json.dumps({"op": 11}))
            elif op == 2:
                await self._identify(ws, request, payload["d"])
            elif op == 6:
                await self._resume(ws, request, payload["d"])
        return ws

    async def _identify(self, ws: web.WebSocketResponse, request: web.Request,
                        data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        self.identifies.append(data)
        if int(data.get("intents", 0)) & MESSAGE_CONTENT and not self.message_content_enabled:
            await self._notify()
            await ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        async with self._send_lock:
            self._ws, self._request = ws, request
            self._seq, self._events = 0, []
            self._session_id = uuid.uuid4().hex
        ready = fixture("ready")["d"]
        ready.update(session_id=self._session_id, resume_gateway_url=self.gateway_url)
        await self.dispatch("READY", ready)
        if self.send_guild_create:
            await self.dispatch("GUILD_CREATE", fixture("guild_create")["d"])
        self.ready += 1
        await self._notify()

    async def _resume(self, ws: web.WebSocketResponse, request: web.Request,
                      data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        if data.get("session_id") != self._session_id:
            await ws.send_str(json.dumps({"op": 9, "d": False}))
            return
        self.resumes.append(data)
        async with self._send_lock:
            for frame in self._events:
                if frame["s"] > (data.get("seq") or 0):
                    await ws.send_str(json.dumps(frame))
            self._ws, self._request = ws, request
        await self.dispatch("RESUMED", {})
        await self._notify()
