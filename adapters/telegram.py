"""Telegram through python-telegram-bot: long polling (default) or a webhook route.

Private chats are answered; in groups only messages addressed to the bot (an @mention, a
reply to the bot, or a /command@bot). Both transports end in the same update handler: the
updater's long poll and the webhook route feed the application's update queue.

    channels:
      telegram:
        token: "123456:ABC…"
        mode: polling              # or webhook
        webhook_url: https://gateway.example.com/telegram/webhook   # webhook mode
        secret_token: …            # webhook mode; Telegram echoes it in a header
        path: /telegram/webhook
        api_url: https://api.telegram.org/bot
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hmac
import json
import re
import warnings
from collections.abc import Mapping
from typing import Any

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from telegram import Bot, ReplyParameters, Update
from telegram.constants import ChatAction
from telegram.error import BadRequest, Forbidden, InvalidToken, RetryAfter, TelegramError
from telegram.ext import Application, ApplicationBuilder, ContextTypes, TypeHandler

from adapters._common import GrowingReply, InFlight, choice, kept, number, setting, split_text
from gateway.conversation.messages import InboundMessage, OutboundMessage, Reply
from gateway.conversation.ports import QUIET, AdapterConfigError, Conversations, Ready

log = structlog.get_logger("threadline.channels.telegram")

CHANNEL = "telegram"
DEFAULT_API_URL = "https://api.telegram.org/bot"
DEFAULT_PATH = "/telegram/webhook"
MESSAGE_LIMIT = 4096  # characters as Telegram counts them: UTF-16 code units
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"
_SECRET_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # what setWebhook accepts
ALLOWED_UPDATES = ["message"]


# --- pure: Telegram updates to messages and back ----------------------------------------------

def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def entity_text(text: str, entity: Mapping[str, Any]) -> str:
    """The part of `text` an entity covers; Telegram offsets count UTF-16 code units."""
    raw = text.encode("utf-16-le")
    start, length = int(entity.get("offset", 0)), int(entity.get("length", 0))
    return raw[2 * start: 2 * (start + length)].decode("utf-16-le", errors="replace")


def addressed_to_bot(message: Mapping[str, Any], bot_id: int, bot_username: str) -> bool:
    """In a group: an @mention of the bot, a /command@bot, or a reply to one of its messages."""
    replied = message.get("reply_to_message") or {}
    if (replied.get("from") or {}).get("id") == bot_id:
        return True
    text = message.get("text") or ""
    handle = "@" + bot_username.lower()
    for entity in message.get("entities") or ():
        kind = entity.get("type")
        if kind == "text_mention" and (entity.get("user") or {}).get("id") == bot_id:
            return True
        if kind == "mention" and entity_text(text, entity).lower() == handle:
            return True
        if kind == "bot_command" and entity_text(text, entity).lower().endswith(handle):
            return True
    return False


def strip_bot_name(text: str, bot_username: str) -> str:
    """"@bot what's my budget?" -> "what's my budget?"; "/whoami@bot" -> "/whoami"."""
    name = re.escape(bot_username)
    text = re.sub(rf"^\s*@{name}\b[\s,:]*", "", text, flags=re.IGNORECASE)
    text = re.sub(rf"^(\s*/[A-Za-z0-9_]+)@{name}\b", r"\1", text, flags=re.IGNORECASE)
    return text.strip()


def inbound_from_update(update: Mapping[str, Any], *, bot_id: int, bot_username: str,
                        formation: str | None = None) -> InboundMessage | None:
    """A Bot API update as a message to answer, or None when it is not one for us."""
    message = update.get("message")
    if not isinstance(message, Mapping):
        return None  # edits, channel posts, callbacks: not conversation turns
    sender, chat, text = message.get("from") or {}, message.get("chat") or {}, message.get("text")
    if not sender.get("id") or sender.get("is_bot") or not text or "id" not in chat:
        return None
    if chat.get("type") != "private" and not addressed_to_bot(message, bot_id, bot_username):
        return None
    text = strip_bot_name(text, bot_username)
    if not text:
        return None
    chat_id, message_id = chat["id"], message["message_id"]
    return InboundMessage(
        channel=CHANNEL,
        identifier=(str(sender["id"]), "telegram"),
        conversation=str(chat_id),
        text=text,
        message_id=f"{chat_id}:{message_id}",
        formation=formation,
        shared=chat.get("type") != "private",
        extras={"chat_id": chat_id, "message_id": message_id, "chat_type": str(chat.get("type")),
                "user_id": sender["id"],
                "thread_id": message.get("message_thread_id")
                if message.get("is_topic_message") else None},
    )


def send_calls(text: str, chat_id: int | str, *, reply_to: int | None = None,
               thread_id: int | None = None) -> list[dict[str, Any]]:
    """The sendMessage arguments that say `text`, split at Telegram's limit; in a group the
    first piece replies to the message it answers."""
    calls = []
    for position, piece in enumerate(split_text(text, MESSAGE_LIMIT, size=utf16_len)):
        call: dict[str, Any] = {"chat_id": chat_id, "text": piece}
        if thread_id is not None:
            call["message_thread_id"] = thread_id
        if reply_to is not None and position == 0:
            call["reply_parameters"] = ReplyParameters(reply_to, allow_sending_without_reply=True)
        calls.append(call)
    return calls


def retry_seconds(exc: RetryAfter) -> float:
    with warnings.catch_warnings():  # PTB 22 warns about the int form; both are accepted
        warnings.simplefilter("ignore")
        after = exc.retry_after
    return after.total_seconds() if isinstance(after, dt.timedelta) else float(after)


# --- the adapter -----------------------------------------------------------------------------

class TelegramAdapter:
    name = CHANNEL

    def __init__(self, engine: Conversations, *, token: str, mode: str = "polling",
                 webhook_url: str | None = None, secret_token: str | None = None,
                 api_url: str = DEFAULT_API_URL, path: str = DEFAULT_PATH,
                 formation: str | None = None, poll_timeout: float = 30.0,
                 drain_timeout: float = 10.0, max_retries: int = 3,
                 edit_interval: float = 1.0) -> None:
        self.engine = engine
        self.mode = mode
        # Long polling from two replicas is refused by Telegram (409); a webhook is served
        # by whichever replica the request reaches.
        self.exclusive = mode == "polling"
        # Sending is a Bot API call any replica can make (`deliver` opens a Bot of its own
        # where this one is not polling): reminders go out from the scheduler's replica.
        self.delivers_on_standby = True
        self.webhook_url = webhook_url
        self.path = path
        self.formation = formation
        self.poll_timeout = poll_timeout
        self.drain_timeout = drain_timeout
        self.max_retries = max_retries
        self.edit_interval = edit_interval  # a streamed reply is edited at most this often
        if mode == "webhook" and not secret_token:
            raise AdapterConfigError("channels.telegram.secret_token is required")
        self._token = token
        self._secret = (secret_token or "").encode()
        self.api_url = api_url.rstrip("/")
        self.file_url = re.sub(r"/bot$", "/file/bot", self.api_url)
        self.application: Application | None = None  # one per run()
        self._inflight = InFlight(CHANNEL)

    def __repr__(self) -> str:
        return f"TelegramAdapter(mode={self.mode!r}, api_url={self.api_url!r})"

    def _build(self) -> Application:
        builder = (ApplicationBuilder().token(self._token).base_url(self.api_url)
                   .base_file_url(self.file_url))
        if self.mode == "webhook":
            builder = builder.updater(None)
        else:  # the long poll holds its connection open for up to poll_timeout
            builder = builder.get_updates_read_timeout(self.poll_timeout + 10)
        application = builder.build()
        application.add_handler(TypeHandler(Update, self._on_update))
        return application

    def _bot(self) -> Bot:
        return Bot(self._token, base_url=self.api_url, base_file_url=self.file_url)

    def routes(self) -> list[BaseRoute]:
        if self.mode != "webhook":
            return []
        return [Route(self.path, self._webhook, methods=["POST"])]

    async def _webhook(self, request: Request) -> Response:
        given = request.headers.get(SECRET_HEADER, "").encode()
        if not hmac.compare_digest(given, self._secret):
            return Response(status_code=403)
        application = self.application
        if application is None or not application.running:
            return Response(status_code=503)  # Telegram delivers it again later
        try:
            data = json.loads(await request.body())
            update = Update.de_json(data, application.bot) if isinstance(data, dict) else None
        except (ValueError, TypeError, KeyError):
            update = None
        if update is None:
            return Response(status_code=400)
        # Into the inbox before Telegram hears "200": if this process dies before answering,
        # another replica answers it. No database, no acknowledgement: Telegram retries.
        bot = application.bot
        message = inbound_from_update(data, bot_id=bot.id, bot_username=bot.username,
                                      formation=self.formation)
        if not await kept(self.engine, message, CHANNEL):
            return Response(status_code=503)
        await application.update_queue.put(update)
        return Response(status_code=200)

    async def run(self, ready: Ready = QUIET) -> None:
        application = self.application = self._build()
        try:
            await application.initialize()  # getMe
        except BaseException as exc:
            await application.bot.shutdown()  # the HTTP clients opened before getMe failed
            if isinstance(exc, InvalidToken):  # its message quotes the token: not passed on
                raise AdapterConfigError(
                    "channels.telegram.token was rejected by Telegram") from None
            raise
        try:
            if application.updater is not None:
                await application.updater.start_polling(
                    poll_interval=0, timeout=dt.timedelta(seconds=self.poll_timeout),
                    allowed_updates=ALLOWED_UPDATES)
            else:
                await application.bot.set_webhook(
                    url=self.webhook_url or "", secret_token=self._secret.decode(),
                    allowed_updates=ALLOWED_UPDATES)
            await application.start()
            ready(f"@{application.bot.username}, {self.mode}")
            await asyncio.Event().wait()
        finally:
            if application.updater is not None and application.updater.running:
                await application.updater.stop()
            if application.running:
                await application.stop()
            await self._inflight.drain(self.drain_timeout)
            await application.shutdown()

    async def check(self) -> str:
        try:
            async with self._bot() as bot:
                return f"telegram: bot @{bot.username} (id {bot.id})"
        except InvalidToken:
            raise AdapterConfigError("channels.telegram.token was rejected by Telegram") from None

    async def deliver(self, message: OutboundMessage) -> None:
        if self.application is not None and self.application.running:
            await self._say(self.application.bot, message.text, message.conversation)
        else:
            async with self._bot() as bot:
                await self._say(bot, message.text, message.conversation)

    async def _on_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        bot = context.bot
        message = inbound_from_update(update.to_dict(), bot_id=bot.id,
                                      bot_username=bot.username, formation=self.formation)
        if message is not None:
            self._inflight.spawn(self._answer(bot, message), key=message.conversation)

    async def _answer(self, bot: Bot, message: InboundMessage) -> None:
        extras = message.extras
        group = extras["chat_type"] != "private"
        chat_id, thread_id = extras["chat_id"], extras["thread_id"]
        reply_to = extras["message_id"] if group else None

        async def post(text: str) -> int:
            (call,) = send_calls(text, chat_id, reply_to=reply_to, thread_id=thread_id)
            sent = await self._call(bot.send_message, call)
            return int(sent.message_id)

        async def edit(message_id: int, text: str) -> None:
            await self._call(bot.edit_message_text, {"chat_id": chat_id,
                                                     "message_id": message_id, "text": text})

        growing = GrowingReply(post, edit, limit=MESSAGE_LIMIT, interval=self.edit_interval,
                               size=utf16_len)

        async def send(reply: Reply) -> None:
            text = reply.text
            if reply.private is not None and not await self._privately(
                    bot, reply.private.text, extras["user_id"]):
                text = reply.private.fallback
            if growing.started:
                await growing.finish(text)
            else:
                await self._say(bot, text, chat_id, reply_to=reply_to, thread_id=thread_id)

        # The person sees "typing…" while the model thinks (Telegram shows it for 5 s).
        with contextlib.suppress(TelegramError):
            await bot.send_chat_action(chat_id, ChatAction.TYPING,
                                       message_thread_id=thread_id)
        await self.engine.handle(message, send, on_delta=growing.add)

    async def _privately(self, bot: Bot, text: str, user_id: int) -> bool:
        """Say `text` in the person's private chat with the bot; False where Telegram will
        not let us (they never opened one, or blocked the bot)."""
        try:
            await self._say(bot, text, user_id)
        except (Forbidden, BadRequest) as exc:
            log.info("telegram private message refused", error=str(exc))
            return False
        return True

    async def _say(self, bot: Bot, text: str, chat_id: int | str, *,
                   reply_to: int | None = None, thread_id: int | None = None) -> None:
        for call in send_calls(text, chat_id, reply_to=reply_to, thread_id=thread_id):
            await self._send(bot, call)

    async def _send(self, bot: Bot, call: dict[str, Any]) -> None:
        await self._call(bot.send_message, call)

    async def _call(self, method: Any, call: dict[str, Any]) -> Any:
        for attempt in range(self.max_retries + 1):
            try:
                return await method(**call)
            except RetryAfter as exc:  # flood control: wait as told, then try again
                if attempt == self.max_retries:
                    raise
                wait = retry_seconds(exc)
                log.warning("telegram rate limited", retry_after=wait)
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")


def create(config: Mapping[str, Any], engine: Conversations) -> TelegramAdapter:
    mode = choice(config, CHANNEL, "mode", ("polling", "webhook"))
    token = setting(config, CHANNEL, "token", required=True)
    webhook = mode == "webhook"
    webhook_url = setting(config, CHANNEL, "webhook_url", required=webhook)
    secret_token = setting(config, CHANNEL, "secret_token", required=webhook)
    if secret_token is not None and not _SECRET_TOKEN.match(secret_token):
        raise AdapterConfigError(
            "channels.telegram.secret_token must be 1-256 letters, digits, '_' or '-'")
    assert token is not None
    return TelegramAdapter(
        engine, token=token, mode=mode, webhook_url=webhook_url, secret_token=secret_token,
        api_url=setting(config, CHANNEL, "api_url", DEFAULT_API_URL) or DEFAULT_API_URL,
        path=setting(config, CHANNEL, "path", DEFAULT_PATH) or DEFAULT_PATH,
        formation=setting(config, CHANNEL, "formation"),
        poll_timeout=number(config, CHANNEL, "poll_timeout", 30.0),
        drain_timeout=number(config, CHANNEL, "drain_timeout", 10.0),
        edit_interval=number(config, CHANNEL, "edit_interval", 1.0),
    )
