"""The Telegram Bot API on 127.0.0.1, with scripted behaviour.

Speaks what python-telegram-bot sends: form-encoded calls to /bot<token>/<method>, complex
arguments as JSON strings; getUpdates is a real long poll that honours offset and timeout.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

TOKEN = "7000000001:AAE-test-token-for-threadline-tests"
BOT: dict[str, Any] = {
    "id": 7000000001, "is_bot": True, "first_name": "Threadline", "username": "threadline_bot",
    "can_join_groups": True, "can_read_all_group_messages": False,
    "supports_inline_queries": False, "can_connect_to_business": False, "has_main_web_app": False,
}


class TelegramPeer:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.sent: list[dict[str, Any]] = []  # sendMessage arguments, JSON ones decoded
        self.edits: list[dict[str, Any]] = []  # editMessageText arguments
        self.texts: dict[tuple[str, int], str] = {}  # (chat, message id) -> its text now
        self.webhook: dict[str, Any] = {}
        self.drop_polls = 0  # how many next getUpdates calls lose their connection
        self.fail_polls = 0  # how many next getUpdates calls get 502 Bad Gateway
        self.no_private: set[int] = set()  # users who never opened a private chat with us
        self.dropped = 0
        # (monotonic time, client port) of each getUpdates call: which process polls
        self.polls: list[tuple[float, int]] = []
        self.rate_limited = 0  # how many next sendMessage calls get 429
        self.url = ""
        self._updates: list[dict[str, Any]] = []  # not yet confirmed by an offset
        self._update_ids = itertools.count(900000001)
        self._message_ids = itertools.count(1)
        self._chats: dict[int, dict[str, Any]] = {}
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None

    # --- scripting ----------------------------------------------------------------------------

    async def push(self, update: Mapping[str, Any]) -> dict[str, Any]:
        """Queue an update (its update_id is assigned here) for the next getUpdates."""
        queued: dict[str, Any] = copy.deepcopy(dict(update))
        queued["update_id"] = next(self._update_ids)
        message = queued.get("message") or {}
        if "chat" in message:
            self._chats[message["chat"]["id"]] = message["chat"]
        async with self._changed:
            self._updates.append(queued)
            self._changed.notify_all()
        return queued

    def remember_chat(self, chat: Mapping[str, Any]) -> None:
        self._chats[chat["id"]] = dict(chat)

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        return [args for name, args in self.calls if name == method]

    async def wait_sent(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Until `count` messages were sent (in total)."""
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.sent) >= count)
        return self.sent

    async def wait_for(self, method: str, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            async with self._changed:
                await self._changed.wait_for(lambda: bool(self.calls_to(method)))
        return self.calls_to(method)[-1]

    # --- Bot API ----------------------------------------------------------------------------

    async def _api(self, request: web.Request) -> web.StreamResponse:
        token, method = request.match_info["token"], request.match_info["method"]
        args: dict[str, Any] = dict(request.query)
        if request.content_type == "application/json":
            args.update(await request.json())
        elif request.can_read_body:
            args.update(await request.post())
        async with self._changed:
            self.calls.append((method, args))
            self._changed.notify_all()
        if token != TOKEN:
            return _error(401, "Unauthorized")
        if method == "getUpdates":
            return await self._get_updates(request, args)
        handler = getattr(self, "_" + method, None)
        if handler is None:
            return _error(404, "Not Found")
        return await handler(args)

    async def _getMe(self, args: Mapping[str, Any]) -> web.Response:
        return _ok(BOT)

    async def _deleteWebhook(self, args: Mapping[str, Any]) -> web.Response:
        self.webhook = {}
        return _ok(True, "Webhook is already deleted")

    async def _setWebhook(self, args: Mapping[str, Any]) -> web.Response:
        self.webhook = dict(args)
        return _ok(True, "Webhook was set")

    async def _sendMessage(self, args: Mapping[str, Any]) -> web.Response:
        if self.rate_limited:
            self.rate_limited -= 1
            return web.json_response({"ok": False, "error_code": 429,
                                      "description": "Too Many Requests: retry after 1",
                                      "parameters": {"retry_after": 1}}, status=429)
        text = str(args.get("text") or "")
        if not text:
            return _error(400, "Bad Request: message text is empty")
        if len(text.encode("utf-16-le")) // 2 > 4096:
            return _error(400, "Bad Request: message is too long")
        sent = {key: _decoded(value) for key, value in args.items()}
        chat_id = int(sent["chat_id"])
        if chat_id in self.no_private:
            return _error(403, "Forbidden: bot can't initiate conversation with a user")
        chat = self._chats.get(chat_id, {"id": chat_id, "type": "private", "first_name": "?"})
        message = {"message_id": next(self._message_ids), "from": BOT, "chat": chat,
                   "date": int(time.time()), "text": text}
        async with self._changed:
            self.sent.append(sent)
            self.texts[(str(chat_id), message["message_id"])] = text
            self._changed.notify_all()
        return _ok(message)

    async def _editMessageText(self, args: Mapping[str, Any]) -> web.Response:
        key = (str(args["chat_id"]), int(args["message_id"]))
        text = str(args.get("text") or "")
        if key not in self.texts:
            return _error(400, "Bad Request: message to edit not found")
        if text == self.texts[key]:
            return _error(400, "Bad Request: message is not modified")
        async with self._changed:
            self.edits.append({k: _decoded(v) for k, v in args.items()})
            self.texts[key] = text
            self._changed.notify_all()
        return _ok({"message_id": key[1], "from": BOT, "date": int(time.time()),
                    "chat": self._chats.get(int(key[0]), {"id": int(key[0]), "type": "private"}),
                    "text": text})

    async def _sendChatAction(self, args: Mapping[str, Any]) -> web.Response:
        return _ok(True)

    async def _get_updates(self, request: web.Request,
                           args: Mapping[str, Any]) -> web.StreamResponse:
        offset = int(args.get("offset") or 0)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer:
            self.polls.append((time.monotonic(), int(peer[1])))
        timeout = float(args.get("timeout") or 0)
        self._updates = [u for u in self._updates if u["update_id"] >= offset]  # confirmed
        if self.fail_polls:
            self.fail_polls -= 1
            self.dropped += 1
            return _error(502, "Bad Gateway")
        if self.drop_polls:
            self.drop_polls -= 1
            self.dropped += 1
            await asyncio.sleep(0.05)
            assert request.transport is not None
            request.transport.abort()  # the connection dies mid long poll
            return web.Response()

        def pending() -> list[dict[str, Any]]:
            return [u for u in self._updates if u["update_id"] >= offset][:100]

        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(lambda: bool(pending()))
        except TimeoutError:
            pass
        return _ok(pending())

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/bot"
        return self.url

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


def _ok(result: Any, description: str | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": True, "result": result}
    if description:
        body["description"] = description
    return web.json_response(body)


def _error(code: int, description: str) -> web.Response:
    return web.json_response({"ok": False, "error_code": code, "description": description},
                             status=code)


def _decoded(value: Any) -> Any:
    """PTB sends objects and lists as JSON strings inside the form."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value
