"""Slack through slack-bolt: the Events API over HTTP (routes()), or Socket Mode in run().

Direct messages and mentions in channels are answered in the message's thread. A Slack
user seen for the first time is matched by their profile email (users.info) to the user who
already owns that address, so someone known from the web is recognised on Slack at once.

    channels:
      slack:
        bot_token: xoxb-…
        signing_secret: …          # http mode
        app_token: xapp-…          # socket mode
        mode: http                 # or socket
        path: /slack/events
        api_url: https://slack.com/api/
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import re
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import structlog
from slack_bolt.adapter.starlette.async_handler import (
    to_async_bolt_request,
    to_starlette_response,
)
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from adapters._common import GrowingReply, InFlight, choice, kept, number, setting, split_text
from gateway.conversation.messages import InboundMessage, OutboundMessage, Reply
from gateway.conversation.ports import QUIET, AdapterConfigError, Conversations, Ready

log = structlog.get_logger("threadline.channels.slack")

CHANNEL = "slack"
DEFAULT_API_URL = "https://slack.com/api/"
DEFAULT_PATH = "/slack/events"
# chat.postMessage truncates at 40,000 characters; Slack advises staying under 4,000.
MESSAGE_LIMIT = 4000
# Subtypes that are still a person writing; every other subtype (bot_message,
# message_changed, channel_join, …) is not a message to answer.
_PERSON_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})
# What a signed request's headers look like: Unix seconds, and v0= with a SHA-256 HMAC.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"v0=[0-9a-f]{64}")
MAX_CLOCK_SKEW = 300  # seconds; older requests are refused as replays (Slack's own rule)
_AUTH_ERRORS = frozenset({"invalid_auth", "not_authed", "account_inactive", "token_revoked",
                          "token_expired", "not_allowed_token_type"})


# --- pure: Slack events to messages and back ----------------------------------------------

def strip_mention(text: str, bot_user_id: str | None) -> str:
    """Remove the leading "<@BOT>" (or "<@BOT|name>") that addresses the bot."""
    if bot_user_id:
        text = re.sub(rf"^\s*<@{re.escape(bot_user_id)}(?:\|[^>]*)?>[\s,:]*", "", text)
    return text.strip()


def inbound_from_event(body: Mapping[str, Any], *, bot_user_id: str | None,
                       formation: str | None = None) -> InboundMessage | None:
    """An Events API envelope as a message to answer, or None when it is not one for us:
    only direct messages (message.im) and mentions (app_mention) from people count."""
    event = body.get("event")
    if not isinstance(event, Mapping) or event.get("type") not in ("message", "app_mention"):
        return None
    user, channel, ts = event.get("user"), event.get("channel"), event.get("ts")
    if event.get("bot_id") or event.get("subtype") not in _PERSON_SUBTYPES:
        return None
    if not _texts(user, channel, ts) or user == bot_user_id:
        return None
    direct = event["type"] == "message"
    if direct and event.get("channel_type") != "im":
        return None  # in channels the mention arrives (again) as app_mention
    text = event.get("text") or ""
    thread_ts = event.get("thread_ts") or ts
    if not _texts(text, thread_ts) or not (text := strip_mention(text, bot_user_id)):
        return None
    return InboundMessage(
        channel=CHANNEL,
        identifier=(user, "slack"),
        conversation=conversation_key(str(channel), None if direct else thread_ts),
        text=text,
        # Slack's retries of one event carry the same event_id; the engine answers it once.
        message_id=body.get("event_id") or event.get("client_msg_id") or f"{channel}:{ts}",
        formation=formation,
        shared=not direct,
        extras={"channel": channel, "thread_ts": thread_ts, "ts": ts,
                "team": event.get("team") or body.get("team_id")},
    )


def _texts(*values: Any) -> bool:
    return all(isinstance(v, str) and v for v in values)


def conversation_key(channel: str, thread_ts: str | None) -> str:
    """A channel thread is "C123:1700000000.000100"; a direct message channel is "D123"."""
    return f"{channel}:{thread_ts}" if thread_ts else channel


def parse_conversation(key: str) -> tuple[str, str | None]:
    channel, _, thread_ts = key.partition(":")
    return channel, thread_ts or None


def profile_email(user_info: Mapping[str, Any], team_id: str | None) -> str | None:
    """The email a users.info answer vouches for: a person of our workspace (`team_id`)
    whose address Slack has confirmed. None for everyone else: bots, guests from other
    workspaces, profiles without `is_email_confirmed: true`."""
    user = user_info.get("user")
    if not isinstance(user, Mapping) or user.get("is_bot") or user.get("deleted"):
        return None
    if user.get("is_email_confirmed") is not True:
        return None
    if team_id is None or user.get("team_id") != team_id:
        return None
    email = (user.get("profile") or {}).get("email")
    return email.strip() if isinstance(email, str) and "@" in email else None


def escape(text: str) -> str:
    """Slack reads &, < and > as markup; a reply means them literally."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def post_calls(text: str, channel: str, thread_ts: str | None) -> list[dict[str, Any]]:
    """The chat.postMessage arguments that say `text`, split at Slack's limit."""
    calls = []
    for piece in split_text(text, MESSAGE_LIMIT):
        call: dict[str, Any] = {"channel": channel, "text": escape(piece)}
        if thread_ts:
            call["thread_ts"] = thread_ts
        calls.append(call)
    return calls


# --- the adapter -----------------------------------------------------------------------------

class SlackAdapter:
    name = CHANNEL
    # Events over HTTP reach any replica; Socket Mode lets Slack spread events over several
    # connections. Either way no lease is needed.
    exclusive = False

    def __init__(self, engine: Conversations, *, bot_token: str, signing_secret: str | None = None,
                 app_token: str | None = None, mode: str = "http",
                 api_url: str = DEFAULT_API_URL, path: str = DEFAULT_PATH,
                 formation: str | None = None, drain_timeout: float = 10.0,
                 team_id: str | None = None, edit_interval: float = 1.0) -> None:
        self.engine = engine
        self.edit_interval = edit_interval  # a streamed reply is updated at most this often
        self.team_id = team_id  # our workspace: only its confirmed emails link accounts
        self.mode = mode
        self.path = path
        self.formation = formation
        self.drain_timeout = drain_timeout
        self._app_token = app_token
        self.client = AsyncWebClient(
            token=bot_token, base_url=api_url if api_url.endswith("/") else api_url + "/",
            retry_handlers=[AsyncConnectionErrorRetryHandler(),
                            AsyncRateLimitErrorRetryHandler(max_retry_count=3)],
        )
        self.app = AsyncApp(client=self.client, signing_secret=signing_secret or "",
                            request_verification_enabled=mode == "http", name="threadline")
        self.app.event("message")(self._on_event)
        self.app.event("app_mention")(self._on_event)
        self._signing_key = signing_secret.encode() if signing_secret else None
        self._inflight = InFlight(CHANNEL)
        self._first_contact: dict[str, asyncio.Lock] = {}
        self._stopping = False
        self._bot_user_id: str | None = None

    def __repr__(self) -> str:
        return f"SlackAdapter(mode={self.mode!r}, api_url={self.client.base_url!r})"

    def routes(self) -> list[BaseRoute]:
        if self.mode != "http":
            return []
        return [Route(self.path, self._events, methods=["POST"])]

    async def _events(self, request: Request) -> Response:
        if self._stopping:  # Slack retries elsewhere or later
            return Response(status_code=503)
        # Checked here before slack-bolt dispatches: it answers 500 to a timestamp that is
        # not a number and to a body it cannot read. The signature comes first, so an
        # unsigned caller learns nothing about what we accept.
        raw = await request.body()
        if not self._signed(raw, request.headers.get("x-slack-request-timestamp", ""),
                            request.headers.get("x-slack-signature", "")):
            return JSONResponse({"error": "invalid request"}, status_code=401)
        try:  # reading the body into a request (and its context) is all parsing
            bolt_request = to_async_bolt_request(request, raw)
            readable = isinstance(bolt_request.body.get("event", {}), Mapping)
        except (ValueError, TypeError, AttributeError, KeyError, IndexError):
            readable = False
        if not readable:
            return JSONResponse({"error": "malformed request body"}, status_code=400)
        # Into the inbox before Slack hears "200": if this process dies before answering,
        # another replica answers it. No database, no acknowledgement: Slack retries.
        message = inbound_from_event(bolt_request.body, bot_user_id=self._bot_user_id,
                                     formation=self.formation)
        if not await kept(self.engine, message, CHANNEL):
            return JSONResponse({"error": "try again later"}, status_code=503,
                                headers={"Retry-After": "5"})
        return to_starlette_response(await self.app.async_dispatch(bolt_request))

    def _signed(self, raw: bytes, timestamp: str, signature: str) -> bool:
        """Slack's v0 signature, over the body's bytes (slack_sdk's verifier decodes them
        as UTF-8 first, and raises on anything else)."""
        if self._signing_key is None or not _SIGNATURE.fullmatch(signature):
            return False
        if not _TIMESTAMP.fullmatch(timestamp):
            return False
        if abs(time.time() - int(timestamp)) > MAX_CLOCK_SKEW:  # a replay
            return False
        digest = hmac.new(self._signing_key, b"v0:" + timestamp.encode() + b":" + raw,
                          hashlib.sha256).hexdigest()
        return hmac.compare_digest(f"v0={digest}", signature)

    async def run(self, ready: Ready = QUIET) -> None:
        bot = await self.check()
        self._stopping = False
        try:
            if self.mode == "socket":
                await self._run_socket_mode(ready, bot)
            else:
                ready(f"{bot}, events at {self.path}")
                await asyncio.Event().wait()  # events arrive through routes()
        finally:
            self._stopping = True
            await self._inflight.drain(self.drain_timeout)

    async def _run_socket_mode(self, ready: Ready, bot: str) -> None:
        from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler

        handler = AsyncSocketModeHandler(self.app, self._app_token, web_client=self.client)
        try:
            await handler.connect_async()
            ready(f"{bot}, socket mode")
            await asyncio.Event().wait()
        finally:
            await handler.close_async()

    async def check(self) -> str:
        try:
            answer = await self.client.auth_test()
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error in _AUTH_ERRORS:
                raise AdapterConfigError(
                    f"channels.slack.bot_token was rejected by Slack ({error})") from None
            raise
        self._bot_user_id = answer.get("user_id")  # events that are our own are not answered
        if self.team_id is None:  # the workspace the token belongs to, unless configured
            self.team_id = answer.get("team_id")
        elif answer.get("team_id") != self.team_id:
            raise AdapterConfigError(
                f"channels.slack.team_id is {self.team_id}, but the bot token belongs to "
                f"workspace {answer.get('team_id')}")
        return f"slack: bot @{answer.get('user')} in team {answer.get('team_id')}"

    async def deliver(self, message: OutboundMessage) -> None:
        channel, thread_ts = parse_conversation(message.conversation)
        await self._say(message.text, channel, thread_ts)

    async def _on_event(self, body: dict[str, Any], context: Any) -> None:
        message = inbound_from_event(body, bot_user_id=context.bot_user_id,
                                     formation=self.formation)
        if message is not None:
            self._inflight.spawn(self._answer(message), key=message.conversation)

    async def _answer(self, message: InboundMessage) -> None:
        await self._recognise(message)
        channel, thread_ts = message.extras["channel"], message.extras["thread_ts"]

        async def post(text: str) -> str:
            (call,) = post_calls(text, channel, thread_ts)
            answer = await self.client.chat_postMessage(**call)
            return str(answer["ts"])

        async def edit(ts: str, text: str) -> None:
            await self.client.chat_update(channel=channel, ts=ts, text=escape(text))

        growing = GrowingReply(post, edit, limit=MESSAGE_LIMIT, interval=self.edit_interval)

        async def send(reply: Reply) -> None:
            text = reply.text
            if reply.private is not None and not await self._privately(
                    reply.private.text, message.identifier[0]):
                text = reply.private.fallback
            if growing.started:
                await growing.finish(text)
            else:
                await self._say(text, channel, thread_ts)

        await self.engine.handle(message, send, on_delta=growing.add)

    async def _privately(self, text: str, user_id: str) -> bool:
        """Say `text` in the app's direct messages with the person (posting to a user id)."""
        try:
            await self._say(text, user_id, None)
        except SlackApiError as exc:
            log.info("slack private message refused", error=exc.response.get("error"))
            return False
        return True

    async def _say(self, text: str, channel: str, thread_ts: str | None) -> None:
        for call in post_calls(text, channel, thread_ts):
            await self.client.chat_postMessage(**call)

    async def _recognise(self, message: InboundMessage) -> None:
        """On first contact, link the Slack id to whoever owns its profile email. "First"
        is asked of the identity core each time (a cached lookup), so an id unlinked later
        is matched afresh on its next message."""
        slack_id = message.identifier[0]
        formation = message.formation or self.engine.formation
        if await self.engine.owner(message.identifier, formation=formation) is not None:
            return
        lock = self._first_contact.setdefault(slack_id, asyncio.Lock())
        async with lock:
            if await self.engine.owner(message.identifier, formation=formation) is None:
                email = await self._email_of(slack_id)
                if email is not None:
                    await self.engine.link_by_email(message.identifier, email,
                                                    formation=formation)
        self._first_contact.pop(slack_id, None)

    async def _email_of(self, slack_id: str) -> str | None:
        try:
            answer = await self.client.users_info(user=slack_id)
        except SlackApiError as exc:  # e.g. missing_scope without users:read.email
            log.warning("slack profile unavailable", error=exc.response.get("error"))
            return None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:  # answered all the same
            log.warning("slack profile unavailable", error=repr(exc))
            return None
        if not isinstance(answer.data, dict):
            return None
        email = profile_email(answer.data, self.team_id)
        if email is None:
            log.info("slack profile email not used: unconfirmed, or not of this workspace")
        return email


def create(config: Mapping[str, Any], engine: Conversations) -> SlackAdapter:
    mode = choice(config, CHANNEL, "mode", ("http", "socket"))
    bot_token = setting(config, CHANNEL, "bot_token", required=True)
    signing_secret = setting(config, CHANNEL, "signing_secret", required=mode == "http")
    app_token = setting(config, CHANNEL, "app_token", required=mode == "socket")
    assert bot_token is not None
    return SlackAdapter(
        engine, bot_token=bot_token, signing_secret=signing_secret, app_token=app_token,
        mode=mode, api_url=setting(config, CHANNEL, "api_url") or DEFAULT_API_URL,
        path=setting(config, CHANNEL, "path", DEFAULT_PATH) or DEFAULT_PATH,
        formation=setting(config, CHANNEL, "formation"),
        team_id=setting(config, CHANNEL, "team_id"),
        edit_interval=number(config, CHANNEL, "edit_interval", 1.0),
        drain_timeout=number(config, CHANNEL, "drain_timeout", 10.0),
    )
