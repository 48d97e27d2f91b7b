"""The Discord channel end to end: real discord.py against a local Discord stand-in."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import discord
import pytest

from adapters.discord import (
    DEFAULT_API_URL,
    DISCORD_GATEWAY,
    MESSAGE_LIMIT,
    DiscordAdapter,
    MessageContentIntentError,
    apply_urls,
    clean_text,
    create,
    plan_posts,
)
from adapters.inmemory import InMemoryChannel
from gateway.conversation.channels import ChannelRegistry
from gateway.conversation.messages import OutboundMessage
from gateway.conversation.responders.base import Changes, Context, Response
from gateway.conversation.scheduler import Scheduler
from gateway.runtime.supervisor import AdapterConfigError, Supervisor
from tests.helpers.responders import Gated, streaming_model
from tests.peers.discord import (
    ALICE_ID,
    BOB_ID,
    BOT_ID,
    DM_CHANNEL_ID,
    GUILD_CHANNEL_ID,
    MESSAGE_CONTENT,
    DiscordPeer,
    guild_on_shard,
    shard_of,
)

TOKEN = "MTEwMDAwMDAwMDAwMDAwMDAwMQ.GtEsT0.threadline-test-token"
WAIT = 10.0  # seconds any single wait may take before the test fails


@pytest.fixture(autouse=True)
def _discord_urls_restored() -> Any:
    yield
    apply_urls(DEFAULT_API_URL, None)


@pytest.fixture
async def peer() -> AsyncIterator[DiscordPeer]:
    peer = DiscordPeer(TOKEN)
    await peer.start()
    yield peer
    await peer.stop()


def settings(peer: DiscordPeer, **more: Any) -> dict[str, Any]:
    return {"token": TOKEN, "api_url": peer.api_url, "gateway_url": peer.gateway_url,
            "drain_timeout": 5, **more}


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)


@contextlib.asynccontextmanager
async def running(adapter: DiscordAdapter, peer: DiscordPeer) -> AsyncIterator[asyncio.Task[None]]:
    """The adapter connected to the peer; stopping it waits for every reply in flight."""
    task = asyncio.create_task(adapter.run())
    ready = asyncio.create_task(peer.wait_for(lambda: peer.ready, WAIT))
    try:
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():  # it failed before the session started: show why
            ready.cancel()
            task.result()
        await ready
        yield task
    finally:
        await stop(task)


@pytest.fixture
async def bot(peer: DiscordPeer, engine: Any) -> AsyncIterator[DiscordAdapter]:
    adapter = create(settings(peer), engine)
    async with running(adapter, peer):
        yield adapter


async def until(condition: Callable[[], Any]) -> None:
    async with asyncio.timeout(WAIT):
        while not condition():
            await asyncio.sleep(0.01)


# -- answering --------------------------------------------------------------------------------


async def test_a_direct_message_is_answered_in_its_channel(peer, bot, engine):
    await peer.push(peer.message("message_create_dm"))
    await peer.wait_for(lambda: peer.posts)

    [(channel_id, body)] = peer.posts
    assert channel_id == DM_CHANNEL_ID
    assert "$5,000" in body["content"]
    assert "message_reference" not in body  # a DM is answered plainly
    assert body["allowed_mentions"]["parse"] == []
    identify = peer.identifies[0]
    assert identify["token"] == TOKEN and identify["intents"] & MESSAGE_CONTENT
    user_id = await engine.identity.resolve(engine.formation, f"discord_{ALICE_ID}", create=False)
    assert user_id is not None
    [linked] = await engine.identity.identifiers_of(engine.formation, user_id)
    assert (linked.identifier, linked.type) == (f"discord_{ALICE_ID}", "discord")


async def test_a_guild_mention_is_answered_as_a_reply_without_the_mention(peer, bot, engine):
    mention = peer.message("message_create_guild_mention")
    await peer.push(mention)
    await peer.wait_for(lambda: peer.posts)

    [(channel_id, body)] = peer.posts
    assert channel_id == GUILD_CHANNEL_ID
    assert "$5,000" in body["content"]
    reference = body["message_reference"]
    assert str(reference["message_id"]) == mention["id"]
    assert str(reference["channel_id"]) == GUILD_CHANNEL_ID
    assert reference["fail_if_not_exists"] is False
    assert body["allowed_mentions"] == {"parse": [], "replied_user": True}
    user_id = await engine.identity.resolve(engine.formation, (ALICE_ID, "discord"))
    [session] = await engine.memory.sessions.list(user_id)
    assert session.conversation == GUILD_CHANNEL_ID
    said = await engine.memory.sessions.buffer(session.id)
    assert said[0].content == "my budget is $5,000"  # the mention is stripped


async def test_guild_chatter_and_bot_messages_are_ignored(peer, engine):
    adapter = create(settings(peer), engine)
    async with running(adapter, peer):
        await peer.push(peer.message("message_create_guild_plain"))
        await peer.push(peer.message("message_create_guild_from_bot"))
        bot_author = peer.message("message_create_guild_from_bot")["author"]
        await peer.push(peer.message("message_create_guild_mention", id="1500000000000000077",
                                     author=bot_author | {"id": BOT_ID}))  # its own message
        await peer.push(peer.message("message_create_guild_plain", id="1500000000000000078",
                                     content="@everyone standup in 5", mention_everyone=True))
        # Frames are handled in order: once this DM is answered the ones before it have been
        # looked at, and leaving `running` waits for any reply they started.
        await peer.push(peer.message("message_create_dm", content="hello"))
        await peer.wait_for(lambda: peer.posts)

    assert [channel_id for channel_id, _ in peer.posts] == [DM_CHANNEL_ID]
    for someone in (BOB_ID, "1400000000000000009", BOT_ID):
        assert await engine.identity.resolve(engine.formation, (someone, "discord"),
                                             create=False) is None


async def test_commands_pass_through_once_the_mention_is_stripped(peer, bot):
    await peer.push(peer.message("message_create_guild_mention",
                                 content=f"<@{BOT_ID}> /whoami"))
    await peer.wait_for(lambda: peer.posts)
    assert "discord: " in peer.posts[0][1]["content"]


async def test_a_redelivered_message_gets_one_reply(peer, engine):
    adapter = create(settings(peer), engine)
    async with running(adapter, peer):
        message = peer.message("message_create_dm")
        await peer.push(message)
        await peer.push(message)  # Discord may deliver an event twice, e.g. around a resume
        await peer.push(peer.message("message_create_dm", id="1500000000000000010",
                                     content="hello"))
        await peer.wait_for(lambda: len(peer.posts) >= 2)
    # Stopped: every reply that was started has been sent.
    assert len(peer.posts) == 2
    assert "$5,000" in peer.posts[0][1]["content"]


async def test_a_fact_told_on_discord_is_recalled_on_another_channel(peer, bot, engine):
    await peer.push(peer.message("message_create_dm", content="my budget is $5,000"))
    await peer.wait_for(lambda: peer.posts)
    alice = await engine.identity.resolve(engine.formation, (ALICE_ID, "discord"))
    await engine.identity.associate(engine.formation, [("U98765ABC", "slack")], user_id=alice)

    slack = InMemoryChannel(engine, "slack")
    asked = await slack.push(("U98765ABC", "slack"), "What's my budget?")
    assert asked.user_id == alice and "$5,000" in asked.text

    await slack.push(("U98765ABC", "slack"), "my color is teal")
    await peer.push(peer.message("message_create_dm", id="1500000000000000011",
                                 content="what's my color?"))
    await peer.wait_for(lambda: len(peer.posts) == 2)
    assert "teal" in peer.posts[1][1]["content"]


class Scripted:
    name = "scripted"

    def __init__(self, text: str) -> None:
        self.text = text

    async def respond(self, context: Context, changes: Changes) -> Response:
        return Response(self.text, changes)


async def test_a_long_reply_is_split_at_discords_limit(peer, bot, engine):
    paragraphs = [" ".join(f"p{p}w{w:03d}" for w in range(110)) for p in range(6)]
    long = "\n\n".join(paragraphs)  # 6 paragraphs of ~800 characters
    assert len(long) > 2 * MESSAGE_LIMIT
    engine.responder = Scripted(long)
    mention = peer.message("message_create_guild_mention")
    await peer.push(mention)
    await peer.wait_for(lambda: len(peer.posts) == 3)

    contents = [body["content"] for body in peer.bodies()]
    assert all(len(c) <= MESSAGE_LIMIT for c in contents)
    assert "\n\n".join(contents) == long  # cut between paragraphs, nothing lost
    references = [body.get("message_reference") for body in peer.bodies()]
    assert str(references[0]["message_id"]) == mention["id"]
    assert references[1:] == [None, None]


async def test_a_rate_limited_reply_is_retried_after_the_wait(peer, bot):
    peer.rate_limit_next(1, retry_after=0.05)
    await peer.push(peer.message("message_create_dm"))
    await peer.wait_for(lambda: peer.posts)

    assert len(peer.rate_limited) == 1
    [(channel_id, body)] = peer.posts
    assert channel_id == DM_CHANNEL_ID and body == peer.rate_limited[0][1]


async def test_a_dropped_connection_resumes_without_losing_the_next_message(peer, bot):
    await peer.drop()
    # Sent while the bot is disconnected; Discord replays it when the session resumes.
    await peer.push(peer.message("message_create_dm"))
    await peer.wait_for(lambda: peer.posts)

    assert "$5,000" in peer.posts[0][1]["content"]
    assert peer.connections == 2
    assert len(peer.identifies) == 1 and len(peer.resumes) == 1


async def test_reminders_go_to_the_discord_channel_they_were_asked_in(peer, bot, engine):
    await peer.push(peer.message("message_create_dm", content="remind me in 1 minute to stretch"))
    await peer.wait_for(lambda: peer.posts)
    registry = ChannelRegistry()
    registry.add(bot)
    alice = await engine.identity.resolve(engine.formation, (ALICE_ID, "discord"))
    later = (await engine.memory.tasks.list(alice))[0].next_run + 1

    scheduler = Scheduler(engine.memory, registry, formation=engine.formation)
    assert await scheduler.run_once(at=later) == 1
    channel_id, body = peer.posts[-1]
    assert channel_id == DM_CHANNEL_ID and body["content"] == "⏰ Reminder: stretch"


async def test_deliver_splits_and_sends_to_the_channel_id(peer, bot):
    text = "line\n" * 700  # 3,500 characters of short lines
    await bot.deliver(OutboundMessage("discord", GUILD_CHANNEL_ID, text, "usr_x"))

    contents = [body["content"] for body in peer.bodies(GUILD_CHANNEL_ID)]
    assert len(contents) == 2 and all(len(c) <= MESSAGE_LIMIT for c in contents)
    assert "".join(contents).replace("\n", "") == "line" * 700
    with pytest.raises(ValueError, match="channel id"):
        await bot.deliver(OutboundMessage("discord", "general", "hi", "usr_x"))


# -- shards -----------------------------------------------------------------------------------


def guilds_on_every_shard(peer: DiscordPeer, count: int) -> list[str]:
    """One guild (with a channel of its own) per shard; shard i's guild is the i-th."""
    guilds = [guild_on_shard(shard, count) for shard in range(count)]
    for shard, guild in enumerate(guilds):
        peer.add_guild(guild, str(int(GUILD_CHANNEL_ID) + 100 + shard))
    return guilds


async def test_with_shards_every_shard_connects_and_each_guild_is_answered_on_its_own(
        peer, engine):
    guilds = guilds_on_every_shard(peer, 4)
    adapter = create(settings(peer, shards=4), engine)
    said: list[str] = []
    task = asyncio.create_task(adapter.run(said.append))
    try:
        await peer.wait_for(lambda: peer.ready == 4)
        assert peer.live() == {0: 1, 1: 1, 2: 1, 3: 1}
        assert sorted(tuple(i["shard"]) for i in peer.identifies) == [(i, 4) for i in range(4)]
        asked = [f"15000000000000003{shard:02d}" for shard in range(4)]
        for guild, message_id in zip(guilds, asked, strict=True):
            await peer.push(peer.guild_message(guild, message_id))
        await peer.push(peer.message("message_create_dm"))  # direct messages: shard 0
        await peer.wait_for(lambda: len(peer.posts) == 5)
        assert sorted(peer.answered()) == asked
        replied_in = {channel for channel, _ in peer.posts}
        assert replied_in == {DM_CHANNEL_ID, *(peer.guilds[guild] for guild in guilds)}
        await until(lambda: said)  # once every shard's guilds have arrived
        assert said == ["bot threadline#0001, 4 shards"]
    finally:
        await stop(task)
    assert peer.live() == {}


async def test_a_shard_answers_only_its_own_guilds(peer, engine):
    guilds = guilds_on_every_shard(peer, 4)
    assert [shard_of(guild, 4) for guild in guilds] == [0, 1, 2, 3]
    adapter = create(settings(peer, shards=4), engine)
    async with asyncio.timeout(WAIT):
        shard = asyncio.create_task(adapter.run_shard(2))
        await peer.wait_for(lambda: peer.ready)
    try:
        assert peer.live() == {2: 1} and peer.identifies[0]["shard"] == [2, 4]
        for n, guild in enumerate(guilds):  # Discord sends each to its shard only
            await peer.push(peer.guild_message(guild, f"150000000000000040{n}"))
        await peer.wait_for(lambda: peer.posts)
        await asyncio.sleep(0.3)  # room for a wrong answer to show
        assert peer.answered() == ["1500000000000000402"]
    finally:
        await stop(shard)


async def test_on_one_process_the_supervisor_runs_every_shard_and_reports_them(peer, engine):
    """SQLite and one replica: every shard runs here, each with its state."""
    guilds = guilds_on_every_shard(peer, 3)
    supervisor = Supervisor()
    supervisor.add(create(settings(peer, shards=3), engine))
    supervisor.start()
    try:
        await until(lambda: supervisor.is_up("discord"))
        report = supervisor.states["discord"].report()
        assert report["detail"] == "running shards 0,1,2 of 3"
        assert {shard: state["status"] for shard, state in report["shards"].items()} == {
            "0": "up", "1": "up", "2": "up"}
        assert report["shards"]["1"]["detail"] == "bot threadline#0001, shard 1 of 3"
        assert peer.live() == {0: 1, 1: 1, 2: 1}
        for n, guild in enumerate(guilds):
            await peer.push(peer.guild_message(guild, f"150000000000000050{n}"))
        await peer.wait_for(lambda: len(peer.posts) == 3)
        assert sorted(peer.answered()) == [f"150000000000000050{n}" for n in range(3)]
    finally:
        await supervisor.stop()
    assert supervisor.states["discord"].report()["detail"] == "shut down"
    assert peer.live() == {}


async def test_a_rejected_token_stops_every_shard_with_the_reason(peer, engine):
    supervisor = Supervisor()
    supervisor.add(create(settings(peer, shards=2, token="not-the-token"), engine))
    supervisor.start()
    try:
        await until(lambda: supervisor.states["discord"].status == "stopped")
        report = supervisor.states["discord"].report()
        assert report["detail"] == "bad credentials or settings"
        assert "channels.discord.token" in report["last_error"]
    finally:
        await supervisor.stop()


# -- shutdown ---------------------------------------------------------------------------------


async def test_stopping_lets_a_reply_in_flight_finish(peer, engine):
    engine.responder = gate = Gated()
    adapter = create(settings(peer), engine)
    task = asyncio.create_task(adapter.run())
    await peer.wait_for(lambda: peer.ready)
    await peer.push(peer.message("message_create_dm"))
    await asyncio.wait_for(gate.entered.wait(), WAIT)

    task.cancel()
    await until(lambda: not adapter.accepting)  # shutting down, waiting on the reply
    gate.release.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, WAIT)
    assert [body["content"] for body in peer.bodies()] == ["answered after all"]


async def test_one_conversation_is_answered_in_order(peer, engine):
    class SlowFirst(Gated):
        async def respond(self, context: Context, changes: Changes) -> Response:
            if context.text == "first":
                return await super().respond(context, changes)
            return Response("second answer", changes)

    engine.responder = gate = SlowFirst()
    async with running(create(settings(peer), engine), peer):
        await peer.push(peer.message("message_create_dm", id="1500000000000000021",
                                     content="first"))
        await peer.push(peer.message("message_create_dm", id="1500000000000000022",
                                     content="second"))
        await asyncio.wait_for(gate.entered.wait(), WAIT)
        # Room for the second to overtake the first if it could; it must wait its turn.
        await asyncio.sleep(0.3)
        assert peer.posts == []
        gate.release.set()
        await peer.wait_for(lambda: len(peer.posts) == 2)
    assert [body["content"] for body in peer.bodies()] == ["answered after all", "second answer"]


async def test_stopping_gives_up_on_a_stuck_reply_after_the_drain_timeout(peer, engine):
    engine.responder = gate = Gated()
    adapter = create(settings(peer, drain_timeout=0.2), engine)
    task = asyncio.create_task(adapter.run())
    await peer.wait_for(lambda: peer.ready)
    await peer.push(peer.message("message_create_dm"))
    await asyncio.wait_for(gate.entered.wait(), WAIT)

    with pytest.raises(asyncio.CancelledError):
        task.cancel()
        await asyncio.wait_for(task, WAIT)
    assert peer.posts == []


# -- failures that name their cause -----------------------------------------------------------


async def test_a_refused_message_content_intent_names_the_portal_setting(peer, engine):
    peer.message_content_enabled = False
    adapter = create(settings(peer), engine)

    with pytest.raises(MessageContentIntentError) as run_error:
        await asyncio.wait_for(adapter.run(), WAIT)
    assert "4014" in str(run_error.value)
    assert "Message Content Intent" in str(run_error.value)
    assert "Developer Portal" in str(run_error.value)
    assert peer.identifies[0]["intents"] & MESSAGE_CONTENT
    with pytest.raises(MessageContentIntentError):
        await adapter.check()


async def test_check_describes_the_bot_behind_the_token(peer):
    adapter = create(settings(peer), engine=None)  # type: ignore[arg-type]
    assert await adapter.check() == "discord: bot threadline#0001"
    assert TOKEN not in repr(adapter)


async def test_a_rejected_token_is_a_config_error_naming_the_setting(peer):
    adapter = create(settings(peer, token="not-the-token"), engine=None)  # type: ignore[arg-type]
    with pytest.raises(AdapterConfigError, match="channels.discord.token"):
        await adapter.check()
    with pytest.raises(AdapterConfigError, match="channels.discord.token"):
        await asyncio.wait_for(adapter.run(), WAIT)


@pytest.mark.parametrize("config, named", [
    ({}, "channels.discord.token"),
    ({"token": "  "}, "channels.discord.token"),
    ({"token": "t", "api_url": "discord.com"}, "channels.discord.api_url"),
    ({"token": "t", "gateway_url": "https://gateway.discord.gg"}, "channels.discord.gateway_url"),
    ({"token": "t", "drain_timeout": "soon"}, "channels.discord.drain_timeout"),
    ({"token": "t", "shards": 0}, "channels.discord.shards"),
    ({"token": "t", "shards": "4"}, "channels.discord.shards"),
    ({"token": "t", "shards": 2.5}, "channels.discord.shards"),
])
def test_bad_settings_name_the_setting(config, named):
    with pytest.raises(AdapterConfigError, match=named):
        create(config, engine=None)  # type: ignore[arg-type]


async def test_the_urls_apply_process_wide_when_run_starts(peer, engine):
    adapter = create(settings(peer), engine)
    assert discord.http.Route.BASE == DEFAULT_API_URL  # creating changes nothing
    async with running(adapter, peer):
        assert peer.api_url == discord.http.Route.BASE
        assert str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == peer.gateway_url
    apply_urls(DEFAULT_API_URL, None)
    assert discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY == DISCORD_GATEWAY


# -- the pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize("content, expected", [
    (f"<@{BOT_ID}> my budget is $5,000", "my budget is $5,000"),
    (f"<@!{BOT_ID}>, what's my budget?", "what's my budget?"),
    (f"hey <@{BOT_ID}> what's my budget", "hey what's my budget"),
    (f"what's my budget <@{BOT_ID}>", "what's my budget"),
    (f"<@{BOT_ID}>\n/link ABCD1234", "/link ABCD1234"),
    (f"<@{BOT_ID}> ask <@{BOB_ID}> and <@42>", "ask @Bob and <@42>"),
    (f"<@{BOT_ID}>", ""),
])
def test_the_bot_mention_is_stripped(content, expected):
    assert clean_text(content, int(BOT_ID), {int(BOB_ID): "Bob"}) == expected


def test_replies_are_cut_at_paragraphs_then_lines_then_words():
    paragraph = "word " * 300  # 1,500 characters
    posts = plan_posts(f"{paragraph}\n\n{paragraph}", 7, reply_to=9, guild_id=3)
    assert [p.content for p in posts] == [paragraph.strip()] * 2
    assert [(p.channel_id, p.reply_to, p.guild_id) for p in posts] == [(7, 9, 3), (7, None, 3)]

    lines = "\n".join(f"line {i:04d}" for i in range(400))  # no blank lines
    pieces = [p.content for p in plan_posts(lines, 7)]
    assert all(len(p) <= MESSAGE_LIMIT for p in pieces)
    assert "\n".join(pieces) == lines

    words = " ".join(["abcdefghi"] * 450)  # one paragraph, one line
    pieces = [p.content for p in plan_posts(words, 7)]
    assert all(len(p) <= MESSAGE_LIMIT for p in pieces) and " ".join(pieces) == words

    unbroken = "x" * 4500
    assert [len(p.content) for p in plan_posts(unbroken, 7)] == [2000, 2000, 500]
    assert plan_posts("  \n ", 7) == []


def test_the_limit_counts_what_discord_counts():
    emoji = "🙂" * 1500  # 1,500 code points, 3,000 UTF-16 units
    pieces = [p.content for p in plan_posts(emoji, 7)]
    assert len(pieces) == 2 and "".join(pieces) == emoji
    assert all(len(p.encode("utf-16-le")) // 2 <= MESSAGE_LIMIT for p in pieces)



async def test_a_link_code_asked_for_in_a_guild_goes_by_direct_message(peer, bot, engine):
    mention = peer.message("message_create_guild_mention")
    await peer.push(dict(mention, content=mention["content"].split(">")[0] + "> /link",
                         id="1500000000000000091"))
    await peer.wait_for(lambda: len(peer.posts) >= 2)
    in_guild = [body for channel, body in peer.posts if channel == GUILD_CHANNEL_ID]
    direct = [body for channel, body in peer.posts if channel != GUILD_CHANNEL_ID]
    assert len(in_guild) == 1 and "private message" in in_guild[0]["content"]
    assert len(direct) == 1 and "Your link code is" in direct[0]["content"]
    # Someone who takes no direct messages: told so in the guild, and no code anywhere.
    peer.no_dm.add(ALICE_ID)
    await peer.push(dict(mention, content=mention["content"].split(">")[0] + "> /link",
                         id="1500000000000000092"))
    await peer.wait_for(lambda: len(peer.posts) >= 3)
    assert "couldn't message you privately" in peer.posts[2][1]["content"]
    assert sum("Your link code is" in body["content"] for _, body in peer.posts) == 1


async def test_a_streamed_reply_grows_in_place_after_a_typing_indicator(peer, engine):
    adapter = create(settings(peer, edit_interval=0), engine)
    async with streaming_model(engine) as model, running(adapter, peer):
        await peer.push(peer.message("message_create_dm", content="what's my budget?"))
        await peer.wait_for(lambda: model.reply in peer.texts.values(), timeout=10)
    assert peer.typing == [DM_CHANNEL_ID]
    assert len(peer.posts) == 1 and peer.posts[0][1]["content"] != model.reply
    assert len(peer.edits) >= 2
