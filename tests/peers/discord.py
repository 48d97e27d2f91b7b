"""A Discord stand-in on 127.0.0.1: the REST calls discord.py makes and the gateway websocket.

    peer = DiscordPeer(token="…")
    await peer.start()               # peer.api_url, peer.gateway_url
    await peer.wait_for(lambda: peer.ready)
    await peer.push(peer.message("message_create_dm", content="hi"))
    await peer.wait_for(lambda: peer.posts)

Payloads come from tests/fixtures/discord/. Gateway frames are plain JSON text (no zlib).
Every dispatch gets the next sequence number of its session and is kept, so a RESUME replays
what the client missed while disconnected, as Discord does.

Sharding as Discord does it: an IDENTIFY with `shard: [id, count]` makes that session shard
`id` of `count`; a guild's events go to the sessions of shard (guild_id >> 22) % count and
direct messages to shard 0. `peer.live()` says how many sessions each shard has connected
now. `add_guild` adds a guild (sent in GUILD_CREATE to its shard); `guild_on_shard` makes a
guild id that lands on a given shard.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
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


def shard_of(guild_id: str | int | None, count: int) -> int:
    """The shard a guild's events go to (Discord's formula); direct messages: shard 0."""
    return 0 if guild_id is None else (int(guild_id) >> 22) % count


def guild_on_shard(shard: int, count: int, n: int = 0) -> str:
    """A guild id (a snowflake near GUILD_ID's) whose events go to `shard` of `count`."""
    base = (int(GUILD_ID) >> 22) // count * count + 1000 * count * (n + 1)
    return str(((base + shard) << 22) | 1)


@dataclass
class _Session:
    """One gateway session: its shard, and what it was sent (replayed on RESUME)."""

    id: str
    shard: int
    count: int
    seq: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    ws: web.WebSocketResponse | None = None
    request: web.Request | None = None

    def wants(self, data: dict[str, Any]) -> bool:
        return shard_of(data.get("guild_id"), self.count) == self.shard


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
        self.recommended_shards = 1  # what GET /gateway/bot advises
        self.guilds: dict[str, str] = {GUILD_ID: GUILD_CHANNEL_ID}  # guild -> its text channel
        self._limit_next = 0
        self._retry_after = 0.05
        self._sessions: dict[str, _Session] = {}
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

    def add_guild(self, guild_id: str, channel_id: str) -> None:
        """A guild the bot is in, with one text channel; sessions identifying later get it."""
        self.guilds[guild_id] = channel_id

    def guild_message(self, guild_id: str, message_id: str, **changes: Any) -> dict[str, Any]:
        """A mention of the bot in `guild_id`'s channel."""
        return self.message("message_create_guild_mention", guild_id=guild_id,
                            channel_id=self.guilds[guild_id], id=message_id, **changes)

    def live(self) -> Counter[int]:
        """Shard -> how many sessions of it are connected now."""
        return Counter(session.shard for session in self._sessions.values()
                       if session.ws is not None and not session.ws.closed)

    async def push(self, message: dict[str, Any]) -> None:
        await self.dispatch("MESSAGE_CREATE", message)

    async def dispatch(self, event: str, data: dict[str, Any]) -> None:
        """Send a dispatch to every session of the shard it belongs to, now, or kept for
        the RESUME of a dropped connection."""
        for session in list(self._sessions.values()):
            if session.wants(data):
                await self._send(session, event, data)

    async def _send(self, session: _Session, event: str, data: dict[str, Any]) -> None:
        async with self._send_lock:
            session.seq += 1
            frame = {"op": 0, "t": event, "s": session.seq, "d": data}
            session.events.append(frame)
            if session.ws is not None and not session.ws.closed:
                await session.ws.send_str(json.dumps(frame))

    def rate_limit_next(self, count: int = 1, retry_after: float = 0.05) -> None:
        """Answer the next `count` message posts with 429 and this retry_after."""
        self._limit_next, self._retry_after = count, retry_after

    async def drop(self) -> None:
        """Cut the gateway connections without a close frame, as a network failure would."""
        async with self._send_lock:
            requests = [session.request for session in self._sessions.values()]
            for session in self._sessions.values():
                session.ws = session.request = None
        for request in requests:
            if request is not None and request.transport is not None:
                request.transport.abort()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)

    def bodies(self, channel_id: str | None = None) -> list[dict[str, Any]]:
        return [body for cid, body in self.posts if channel_id in (None, cid)]

    def answered(self) -> list[str]:
        """The message ids replies quote, one per reply (a guild reply quotes its question)."""
        return [str(body["message_reference"]["message_id"]) for body in self.bodies()
                if body.get("message_reference")]

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
        return _json({"url": self.gateway_url, "shards": self.recommended_shards,
                      "session_start_limit": {
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
        async with self._send_lock:  # gone (closed, or the client's process died)
            for session in self._sessions.values():
                if session.ws is ws:
                    session.ws = session.request = None
        await self._notify()
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
        shard, count = data.get("shard") or (0, 1)
        if not (isinstance(shard, int) and isinstance(count, int) and 0 <= shard < count):
            await ws.close(code=4010, message=b"Invalid shard.")
            return
        session = _Session(uuid.uuid4().hex, shard, count, ws=ws, request=request)
        self._sessions[session.id] = session
        guilds = [guild for guild in self.guilds if shard_of(guild, count) == shard]
        ready = fixture("ready")["d"]
        ready.update(session_id=session.id, resume_gateway_url=self.gateway_url,
                     guilds=[{"id": guild, "unavailable": True} for guild in guilds])
        if data.get("shard"):
            ready["shard"] = [shard, count]
        await self._send(session, "READY", ready)
        if self.send_guild_create:
            for guild in guilds:
                await self._send(session, "GUILD_CREATE", self._guild_create(guild))
        self.ready += 1
        await self._notify()

    def _guild_create(self, guild_id: str) -> dict[str, Any]:
        guild = fixture("guild_create")["d"]
        if guild_id != guild["id"]:
            channel_id = self.guilds[guild_id]
            guild.update(id=guild_id, name=f"Guild {guild_id}", system_channel_id=channel_id,
                         channels=[dict(guild["channels"][0], id=channel_id)],
                         roles=[dict(guild["roles"][0], id=guild_id)])
        return guild

    async def _resume(self, ws: web.WebSocketResponse, request: web.Request,
                      data: dict[str, Any]) -> None:
        if data.get("token") != self.token:
            await ws.close(code=4004, message=b"Authentication failed.")
            return
        session = self._sessions.get(data.get("session_id") or "")
        if session is None:
            await ws.send_str(json.dumps({"op": 9, "d": False}))
            return
        self.resumes.append(data)
        async with self._send_lock:
            for frame in session.events:
                if frame["s"] > (data.get("seq") or 0):
                    await ws.send_str(json.dumps(frame))
            session.ws, session.request = ws, request
        await self._send(session, "RESUMED", {})
        await self._notify()
