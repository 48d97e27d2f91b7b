"""The Slack Web API (and a Socket Mode websocket) on 127.0.0.1, with scripted behaviour.

Speaks what slack_sdk sends: form-encoded calls (auth.test), JSON calls (chat.postMessage),
GET calls (users.info), bearer tokens in the Authorization header.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import WSMsgType, web

BOT_TOKEN = "xoxb-1-test-token"
APP_TOKEN = "xapp-1-test-token"
TEAM_ID = "T1"
BOT_USER_ID = "UBOT"
BOT_ID = "BBOT"


class SlackPeer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []  # every API call, in order
        self.posted: list[dict[str, Any]] = []  # chat.postMessage arguments
        self.updates: list[dict[str, Any]] = []  # chat.update arguments
        self.texts: dict[str, str] = {}  # ts -> the message's text now
        self.users: dict[str, dict[str, Any]] = {}  # Slack id -> users.info "user"
        self.rate_limited: dict[str, int] = {}  # method -> how many more 429 answers
        self.acks: list[str] = []  # Socket Mode envelope ids the client acknowledged
        self.url = ""
        self._posted = asyncio.Condition()
        self._ts = itertools.count(1)
        self._sockets: list[web.WebSocketResponse] = []
        self._connected = asyncio.Event()
        self._runner: web.AppRunner | None = None

    def add_user(self, user_id: str, email: str | None, *, name: str = "alice",
                 is_bot: bool = False) -> None:
        profile: dict[str, Any] = {"real_name": name.title(), "display_name": name,
                                   "image_48": "https://a.slack-edge.com/48.png"}
        if email is not None:
            profile["email"] = email
        self.users[user_id] = {
            "id": user_id, "team_id": TEAM_ID, "name": name, "deleted": False,
            "real_name": name.title(), "tz": "Europe/Paris", "is_bot": is_bot,
            "is_admin": False, "is_owner": False, "is_restricted": False,
            "is_ultra_restricted": False, "is_app_user": False, "is_email_confirmed": True,
            "updated": 1700000000, "profile": profile,
        }

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        return [args for name, args in self.calls if name == method]

    async def wait_posted(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Until `count` messages were posted (in total)."""
        async with asyncio.timeout(timeout):
            async with self._posted:
                await self._posted.wait_for(lambda: len(self.posted) >= count)
        return self.posted

    # --- Web API ----------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            args.update(await request.json())
        elif request.can_read_body:
            args.update(await request.post())
        self.calls.append((method, args))
        if self.rate_limited.get(method):
            self.rate_limited[method] -= 1
            return web.json_response({"ok": False, "error": "ratelimited"}, status=429,
                                     headers={"Retry-After": "1"})
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        expected = APP_TOKEN if method == "apps.connections.open" else BOT_TOKEN
        if token != expected:
            return web.json_response({"ok": False, "error": "invalid_auth"})
        handler = getattr(self, "_" + method.replace(".", "_"), None)
        if handler is None:
            return web.json_response({"ok": False, "error": "unknown_method"}, status=404)
        return web.json_response(await handler(args))

    async def _auth_test(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": "https://acme.slack.com/", "team": "Acme", "user": "threadline",
                "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": BOT_ID,
                "is_enterprise_install": False}

    async def _chat_postMessage(self, args: Mapping[str, Any]) -> dict[str, Any]:
        if not args.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        async with self._posted:
            self.posted.append(dict(args))
            self.texts[ts] = str(args.get("text"))
            self._posted.notify_all()
        message = {"type": "message", "subtype": "bot_message", "text": args.get("text"),
                   "ts": ts, "user": BOT_USER_ID, "bot_id": BOT_ID, "team": TEAM_ID}
        if args.get("thread_ts"):
            message["thread_ts"] = args["thread_ts"]
        return {"ok": True, "channel": args["channel"], "ts": ts, "message": message}

    async def _chat_update(self, args: Mapping[str, Any]) -> dict[str, Any]:
        ts = str(args.get("ts"))
        if ts not in self.texts:
            return {"ok": False, "error": "message_not_found"}
        self.updates.append(dict(args))
        self.texts[ts] = str(args.get("text"))
        return {"ok": True, "channel": args.get("channel"), "ts": ts, "text": args.get("text")}

    async def _users_info(self, args: Mapping[str, Any]) -> dict[str, Any]:
        user = self.users.get(str(args.get("user")))
        if user is None:
            return {"ok": False, "error": "user_not_found"}
        return {"ok": True, "user": user}

    async def _apps_connections_open(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return {"ok": True, "url": self.url.replace("http://", "ws://") + "socket"}

    # --- Socket Mode --------------------------------------------------------------------------

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.append(ws)
        await ws.send_json({
            "type": "hello", "num_connections": 1, "connection_info": {"app_id": "A1"},
            "debug_info": {"host": "applink-1", "approximate_connection_time": 18060},
        })
        self._connected.set()
        async for frame in ws:
            if frame.type == WSMsgType.TEXT:
                data = json.loads(frame.data)
                if "envelope_id" in data:
                    self.acks.append(data["envelope_id"])
        self._sockets.remove(ws)
        return ws

    async def push_socket_event(self, body: Mapping[str, Any], timeout: float = 10.0) -> str:
        """Send an Events API body as a Socket Mode envelope; returns its envelope id."""
        async with asyncio.timeout(timeout):
            await self._connected.wait()
        envelope_id = str(uuid.uuid4())
        await self._sockets[-1].send_json({
            "envelope_id": envelope_id, "payload": dict(body), "type": "events_api",
            "accepts_response_payload": False, "retry_attempt": 0, "retry_reason": "",
        })
        return envelope_id

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._api)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/"
        return self.url + "api/"

    async def stop(self) -> None:
        for ws in list(self._sockets):
            await ws.close()
        if self._runner:
            await self._runner.cleanup()
