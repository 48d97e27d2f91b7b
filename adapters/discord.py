"""Discord through discord.py: direct messages, and messages that mention the bot in guilds.

    channels:
      discord:
        token: "…"                             # the bot token (required)
        api_url: https://discord.com/api/v10   # the REST base
        gateway_url: null                      # null: Discord's own gateway
        formation: default                     # optional; else the engine's formation
        drain_timeout: 10                      # seconds replies in flight get at shutdown
        shards: 1                              # gateway shards (Discord's sharding)

With `shards: N` (N > 1) the bot connects N gateway sessions, shard 0 to N-1 (a guild's
events go to shard (guild_id >> 22) % N; direct messages to shard 0), each one
`discord.Client(shard_id=i, shard_count=N)` run by `run_shard(i)`. The supervisor holds each
shard under a lease of its own and spreads them across the replicas
(`gateway.runtime.shards`); `run()` runs them all in this process.

The bot requests the privileged Message Content intent: enable "Message Content Intent" on the
application's Bot page in the Developer Portal, or the gateway closes with 4014.

discord.py has no per-client base URL: `api_url` and `gateway_url` are applied by setting
`discord.http.Route.BASE` and `discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY` when `run()`
starts. Both are process-wide, so every Discord adapter in one process uses the same URLs.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord
import discord.gateway
import discord.http
import structlog
import yarl

from adapters._common import GrowingReply, InFlight, number, setting, split_text
from gateway.conversation.messages import InboundMessage, OutboundMessage, Reply
from gateway.conversation.ports import QUIET, AdapterConfigError, Conversations, Ready

log = structlog.get_logger("threadline.discord")

CHANNEL = "discord"
MESSAGE_LIMIT = 2000
MAX_SHARDS = 1024  # far past what one bot needs (Discord: at most 2,500 guilds per shard)
DEFAULT_API_URL = "https://discord.com/api/v10"
DISCORD_GATEWAY = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
PORTAL = "https://discord.com/developers/applications"
# The application flags the portal's Message Content Intent toggle sets (limited: < 100 guilds).
MESSAGE_CONTENT_FLAGS = (1 << 18) | (1 << 19)
_ANSWERED = frozenset({discord.MessageType.default, discord.MessageType.reply})
# Model output must not ping @everyone, roles or users; a reply still notifies its asker.
_MENTIONS = discord.AllowedMentions(everyone=False, users=False, roles=False, replied_user=True)
_USER_MENTION = re.compile(r"<@!?(\d+)>")


class MessageContentIntentError(AdapterConfigError):
    """Discord refused the privileged Message Content intent (gateway close code 4014)."""

    def __init__(self) -> None:
        super().__init__(
            "discord: the bot is not allowed the privileged Message Content intent (the "
            "gateway refuses it with close code 4014). In the Discord Developer Portal "
            f"({PORTAL}) open this application, go to Bot → Privileged Gateway Intents, turn on "
            "'Message Content Intent' and save; then restart the channel."
        )


def _utf16_size(text: str) -> int:
    # Discord counts UTF-16 code units; never fewer than code points, so this never overflows.
    return len(text.encode("utf-16-le")) // 2


# -- platform events → InboundMessage ---------------------------------------------------------


def guild_of(message: discord.Message) -> int | None:
    """The guild a message was posted in; None for a direct message."""
    if message.guild is not None:
        return message.guild.id
    # A channel of a guild not (yet) in the cache arrives as a PartialMessageable.
    guild_id: int | None = getattr(message.channel, "guild_id", None)
    return guild_id


def clean_text(content: str, bot_id: int, names: Mapping[int, str] | None = None) -> str:
    """The text without the bot's mention; other user mentions become @name where known."""
    text = re.sub(rf"[ \t]*<@!?{bot_id}>[,:;]?[ \t]*", " ", content)
    if names:
        def named(match: re.Match[str]) -> str:
            name = names.get(int(match.group(1)))
            return f"@{name}" if name else match.group(0)

        text = _USER_MENTION.sub(named, text)
    return text.strip()


def to_inbound(message: discord.Message, bot_id: int, *,
               formation: str | None = None) -> InboundMessage | None:
    """The message for the engine, or None when the bot should not answer it.

    Answered: a person's direct message, and a person's guild message that mentions the bot.
    Ignored: bots (the bot itself included), webhooks, system messages, @everyone alone, and
    messages with no text once the mention is gone.
    """
    author = message.author
    if author.bot or author.system or author.id == bot_id or message.webhook_id is not None:
        return None
    if message.type not in _ANSWERED:
        return None
    guild_id = guild_of(message)
    if guild_id is not None and not any(user.id == bot_id for user in message.mentions):
        return None
    names = {user.id: user.display_name for user in message.mentions}
    text = clean_text(message.content, bot_id, names)
    if not text:
        return None
    return InboundMessage(
        channel=CHANNEL,
        identifier=(str(author.id), CHANNEL),
        conversation=str(message.channel.id),
        text=text,
        message_id=str(message.id),
        formation=formation,
        shared=guild_id is not None,
        extras={"guild_id": None if guild_id is None else str(guild_id),
                "author_name": author.display_name},
    )


# -- replies → platform calls -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Post:
    """One POST /channels/{channel_id}/messages."""

    channel_id: int
    content: str
    reply_to: int | None = None  # the message it answers, shown as a Discord reply
    guild_id: int | None = None


def plan_posts(text: str, channel_id: int, *, reply_to: int | None = None,
               guild_id: int | None = None) -> list[Post]:
    """The posts that say `text`: pieces of at most 2000 characters, the first one replying."""
    pieces = split_text(text, MESSAGE_LIMIT, size=_utf16_size)
    return [Post(channel_id, piece, reply_to if i == 0 else None, guild_id)
            for i, piece in enumerate(pieces)]


def plan_reply(message: discord.Message, text: str) -> list[Post]:
    """Posts answering `message` in its channel; in a guild the first references it."""
    guild_id = guild_of(message)
    return plan_posts(text, message.channel.id, guild_id=guild_id,
                      reply_to=None if guild_id is None else message.id)


def intents() -> discord.Intents:
    """Guild and direct messages with their content; nothing else is needed."""
    wanted = discord.Intents.none()
    wanted.guilds = True
    wanted.guild_messages = True
    wanted.dm_messages = True
    wanted.message_content = True
    return wanted


def apply_urls(api_url: str, gateway_url: str | None) -> None:
    """Point discord.py at `api_url` and `gateway_url` (None: Discord's). Process-wide."""
    discord.http.Route.BASE = api_url
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = (
        yarl.URL(gateway_url) if gateway_url else DISCORD_GATEWAY)


def user_tag(user: Mapping[str, Any]) -> str:
    """threadline#0001, or just the name for accounts without a discriminator."""
    discriminator = str(user.get("discriminator") or "0")
    name = str(user.get("username", "?"))
    return name if discriminator == "0" else f"{name}#{discriminator}"


# -- the adapter ------------------------------------------------------------------------------


class _Client(discord.Client):
    """One gateway session (one shard, or the whole bot unsharded) and the replies it is
    working on."""

    def __init__(self, adapter: DiscordAdapter, ready: Ready, shard: int | None = None,
                 count: int | None = None) -> None:
        # The bot never joins voice: discord.py's warnings about voice libraries are noise.
        discord.VoiceClient.warn_nacl = discord.VoiceClient.warn_dave = False
        super().__init__(intents=intents(), max_messages=None, chunk_guilds_at_startup=False,
                         shard_id=shard, shard_count=count)
        self._adapter = adapter
        self._connected = ready  # (discord.Client has a `_ready` of its own)
        self.accepting = False  # taking new messages; False once shutdown begins
        self.inflight = InFlight(CHANNEL)

    async def on_message(self, message: discord.Message) -> None:
        self._adapter.receive(message, self)

    async def on_ready(self) -> None:
        shard = "" if self.shard_id is None else f", shard {self.shard_id} of {self.shard_count}"
        self._connected(f"bot {self.user}{shard}")


class DiscordAdapter:
    name = CHANNEL
    exclusive = True  # one gateway connection per shard: one replica at a time

    def __init__(self, engine: Conversations, *, token: str, api_url: str = DEFAULT_API_URL,
                 gateway_url: str | None = None, formation: str | None = None,
                 drain_timeout: float = 10.0, edit_interval: float = 1.0,
                 shards: int = 1) -> None:
        self.engine = engine
        self.edit_interval = edit_interval  # a streamed reply is edited at most this often
        self.api_url = api_url
        self.gateway_url = gateway_url
        self.formation = formation
        self.drain_timeout = drain_timeout
        self.shards = shards
        self._token = token
        self._clients: dict[int, _Client] = {}  # shard -> its session, while it runs here
        self._order: dict[str, tuple[asyncio.Lock, int]] = {}

    def __repr__(self) -> str:
        return f"DiscordAdapter(api_url={self.api_url!r}, token=***)"

    def routes(self) -> list[Any]:
        return []  # Discord is reached over an outbound websocket, never by HTTP calls to us

    @property
    def accepting(self) -> bool:
        """Taking new messages on some shard; False once every session is shutting down."""
        return any(client.accepting for client in self._clients.values())

    async def run(self, ready: Ready = QUIET) -> None:
        """Connect and serve until the gateway stops or this is cancelled: every shard, in
        this process (`ready` once all are connected)."""
        if self.shards == 1:
            await self._serve(None, ready)
            return
        connected: set[int] = set()

        def one_ready(shard: int) -> Ready:
            def said(detail: str) -> None:
                connected.add(shard)
                if len(connected) == self.shards:
                    ready(f"bot {self._clients[shard].user}, {self.shards} shards")
            return said

        sessions = [asyncio.create_task(self._serve(shard, one_ready(shard)))
                    for shard in range(self.shards)]
        try:
            done, _ = await asyncio.wait(sessions, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for session in sessions:
                session.cancel()
            await asyncio.gather(*sessions, return_exceptions=True)
        for session in done:
            session.result()  # a shard that stopped says why (a rejected token, …)

    async def run_shard(self, shard: int, ready: Ready = QUIET) -> None:
        """Connect shard `shard` (of `shards`) and serve it until cancelled."""
        if not 0 <= shard < self.shards:
            raise ValueError(f"discord: no shard {shard} of {self.shards}")
        await self._serve(shard if self.shards > 1 else None, ready)

    async def _serve(self, shard: int | None, ready: Ready) -> None:
        """One gateway session until it stops or this is cancelled.

        On the way out new messages are no longer taken, replies in flight get
        `drain_timeout` seconds to be sent, and only then is the client closed (the replies
        need its HTTP session).
        """
        apply_urls(self.api_url, self.gateway_url)
        client = _Client(self, ready, shard, None if shard is None else self.shards)
        key = shard or 0
        self._clients[key] = client
        client.accepting = True
        try:
            await client.start(self._token)
        except discord.PrivilegedIntentsRequired:
            raise MessageContentIntentError() from None
        except discord.LoginFailure:
            raise AdapterConfigError(
                "discord: Discord rejected channels.discord.token (401 Unauthorized)") from None
        finally:
            client.accepting = False
            try:
                await client.inflight.drain(self.drain_timeout)
            finally:
                if self._clients.get(key) is client:
                    del self._clients[key]
                await client.close()

    def receive(self, message: discord.Message, client: _Client) -> None:
        """Take one gateway message from the session `client`; answering it runs as its
        own task, which that session's shutdown waits for."""
        if not client.accepting or client.user is None:
            return
        inbound = to_inbound(message, client.user.id, formation=self.formation)
        if inbound is not None:
            client.inflight.spawn(self._answer(client, message, inbound))

    async def _answer(self, client: _Client, message: discord.Message,
                      inbound: InboundMessage) -> None:
        # One conversation answers in order, so replies (and their pieces) never interleave.
        first = True

        async def post(text: str) -> discord.Message | None:
            nonlocal first
            # Only the first message of a reply quotes the question (as plan_reply does).
            posts = plan_reply(message, text) if first else plan_posts(text, message.channel.id)
            first = False
            return await _send(client, posts)

        async def edit(sent: discord.Message | None, text: str) -> None:
            if sent is not None:
                await sent.edit(content=text, allowed_mentions=_MENTIONS)

        growing = GrowingReply(post, edit, limit=MESSAGE_LIMIT, interval=self.edit_interval,
                               size=_utf16_size)

        async def send(reply: Reply) -> None:
            text = reply.text
            if reply.private is not None and not await _privately(message.author,
                                                                  reply.private.text):
                text = reply.private.fallback
            if growing.started:
                await growing.finish(text)
            else:
                await _send(client, plan_reply(message, text))

        async with self._in_order(inbound.conversation):
            with contextlib.suppress(discord.HTTPException):  # "… is typing", for 10 s
                await message.channel.typing()
            reply = await self.engine.handle(inbound, send, on_delta=growing.add)
        if reply is not None:
            log.info("replied", channel=CHANNEL, conversation=inbound.conversation,
                     user_id=reply.user_id, request_id=reply.request_id)

    async def deliver(self, message: OutboundMessage) -> None:
        """Say something unprompted in the channel whose id is `message.conversation`.
        Any connected shard will do: a post goes over REST, whichever shard the channel is on."""
        client = next((c for c in self._clients.values()
                       if not c.is_closed() and c.user is not None), None)
        if client is None:
            raise RuntimeError("discord: not connected; the message was not delivered")
        if not message.conversation.isdigit():
            raise ValueError(f"discord: a conversation is a channel id, "
                             f"got {message.conversation!r}")
        await _send(client, plan_posts(message.text, int(message.conversation)))

    async def check(self) -> str:
        """Verify the token and the Message Content intent; one line describing the bot."""
        headers = {"Authorization": f"Bot {self._token}"}
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            me = await _get(session, f"{self.api_url}/users/@me")
            application = await _get(session, f"{self.api_url}/oauth2/applications/@me")
        if not int(application.get("flags") or 0) & MESSAGE_CONTENT_FLAGS:
            raise MessageContentIntentError()
        return f"discord: bot {user_tag(me)}"

    @contextlib.asynccontextmanager
    async def _in_order(self, conversation: str) -> AsyncIterator[None]:
        lock, waiting = self._order.get(conversation, (asyncio.Lock(), 0))
        self._order[conversation] = (lock, waiting + 1)
        try:
            async with lock:
                yield
        finally:
            lock, waiting = self._order[conversation]
            if waiting == 1:
                del self._order[conversation]
            else:
                self._order[conversation] = (lock, waiting - 1)


async def _privately(user: discord.User | discord.Member, text: str) -> bool:
    """Say `text` in a direct message to `user`; False when Discord refuses (the person
    accepts no direct messages from this server's members)."""
    try:
        channel = await user.create_dm()
        for piece in split_text(text, MESSAGE_LIMIT, size=_utf16_size):
            await channel.send(piece)
    except discord.HTTPException as exc:
        log.info("discord private message refused", error=str(exc))
        return False
    return True


async def _send(client: discord.Client, posts: list[Post]) -> discord.Message | None:
    """Make the posts (returning the last); discord.py's rate-limit buckets wait out any
    429."""
    sent = None
    for post in posts:
        channel = client.get_partial_messageable(post.channel_id, guild_id=post.guild_id)
        if post.reply_to is None:
            sent = await channel.send(post.content, allowed_mentions=_MENTIONS)
            continue
        reference = discord.MessageReference(
            message_id=post.reply_to, channel_id=post.channel_id, guild_id=post.guild_id,
            fail_if_not_exists=False)  # a deleted question still gets its answer
        sent = await channel.send(post.content, reference=reference,
                                  allowed_mentions=_MENTIONS)
    return sent


async def _get(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(url) as response:
        if response.status == 401:
            raise AdapterConfigError(
                "discord: Discord rejected channels.discord.token (401 Unauthorized)")
        if response.status != 200:
            raise RuntimeError(f"discord: GET {yarl.URL(url).path} answered {response.status}")
        data: dict[str, Any] = await response.json(content_type=None)
        return data


def create(config: Mapping[str, Any], engine: Conversations) -> DiscordAdapter:
    token = setting(config, CHANNEL, "token", required=True)
    api_url = setting(config, CHANNEL, "api_url", DEFAULT_API_URL)
    gateway_url = setting(config, CHANNEL, "gateway_url")
    assert token is not None and api_url is not None
    if not api_url.startswith(("https://", "http://")):
        raise AdapterConfigError("channels.discord.api_url must be an http(s) URL")
    if gateway_url is not None and not gateway_url.startswith(("wss://", "ws://")):
        raise AdapterConfigError("channels.discord.gateway_url must be a ws(s) URL")
    shards = config.get("shards", 1)
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise AdapterConfigError(
            f"channels.discord.shards must be a whole number from 1 to {MAX_SHARDS}")
    return DiscordAdapter(
        engine, token=token, api_url=api_url.rstrip("/"), gateway_url=gateway_url,
        formation=setting(config, CHANNEL, "formation"),
        drain_timeout=number(config, CHANNEL, "drain_timeout", 10.0),
        edit_interval=number(config, CHANNEL, "edit_interval", 1.0),
        shards=shards,
    )
