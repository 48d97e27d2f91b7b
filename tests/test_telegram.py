"""Telegram end to end: python-telegram-bot against a Bot API stand-in, by long polling and by
a webhook route on a real uvicorn server; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from telegram.error import RetryAfter

from adapters import telegram
from adapters._common import split_text
from gateway.conversation.messages import OutboundMessage
from gateway.conversation.responders.base import Response
from gateway.runtime.supervisor import AdapterConfigError
from tests.helpers.responders import Gated, streaming_model
from tests.peers.http import serving, stop
from tests.peers.telegram import BOT, TOKEN, TelegramPeer

FIXTURES = Path(__file__).parent / "fixtures" / "telegram"
SECRET = "s3cr3t-token_for-webhooks"
GROUP = -1001234567890
# PTB 22 itself warns when it builds RetryAfter with int seconds (until PTB_TIMEDELTA is the
# default); that is the library talking to itself, not something the adapter can change.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Deprecated since version v22.2:telegram.warnings.PTBDeprecationWarning")


def fixture(name: str, **message: Any) -> dict[str, Any]:
    """A stored update; keyword arguments replace fields of its message."""
    update = json.loads((FIXTURES / f"{name}.json").read_text())
    if "message" in update:
        update["message"].update(message)
    return update


def private(text: str, message_id: int, user: int = 4242) -> dict[str, Any]:
    update = fixture("private_message", text=text, message_id=message_id)
    update["message"]["from"]["id"] = update["message"]["chat"]["id"] = user
    return update


@pytest.fixture
async def peer() -> AsyncIterator[TelegramPeer]:
    peer = TelegramPeer()
    await peer.start()
    yield peer
    await peer.stop()


@asynccontextmanager
async def polling(engine, peer: TelegramPeer, **config: Any
                  ) -> AsyncIterator[telegram.TelegramAdapter]:
    adapter = telegram.create({"token": TOKEN, "api_url": peer.url, "poll_timeout": 1,
                               **config}, engine)
    run = asyncio.create_task(adapter.run())
    try:
        yield adapter
    finally:
        await stop(run)


@pytest.fixture
async def bot(engine, peer: TelegramPeer) -> AsyncIterator[telegram.TelegramAdapter]:
    async with polling(engine, peer) as adapter:
        yield adapter


# --- long polling -------------------------------------------------------------------------------

async def test_a_private_message_is_answered_by_long_polling(bot, peer: TelegramPeer):
    await peer.push(private("my budget is $5,000", 101))
    await peer.push(private("what's my budget?", 102))
    told, asked = await peer.wait_sent(2)
    assert told["chat_id"] == asked["chat_id"] == "4242"
    assert "$5,000" in asked["text"]
    assert "reply_parameters" not in asked  # a private chat needs no quoting
    assert peer.calls_to("deleteWebhook")  # polling made sure no webhook was set
    offsets = [int(c.get("offset") or 0) for c in peer.calls_to("getUpdates")]
    assert offsets == sorted(offsets)


async def test_group_messages_are_answered_only_when_addressed_to_the_bot(bot, peer, engine):
    for name in ("group_unaddressed", "group_mention", "group_reply_to_bot", "group_command"):
        await peer.push(fixture(name))
    mention, reply, command = await peer.wait_sent(3)
    assert all(m["chat_id"] == str(GROUP) for m in (mention, reply, command))
    assert mention["reply_parameters"]["message_id"] == 202  # quotes what it answers
    assert reply["reply_parameters"]["message_id"] == 204
    assert command["text"].startswith("You are linked on")  # "/whoami@bot" reached the engine
    await peer.push(private("hello", 103))  # later messages still flow, nothing else was sent
    await peer.wait_sent(4)
    assert len(peer.sent) == 4
    assert await engine.identity.resolve(engine.formation, ("5151", "telegram"),
                                         create=False) is None  # Bob was never a user


async def test_start_greets_a_new_user_and_a_group_command_in_any_case_works(bot, peer):
    await peer.push(private("/start", 101))
    await peer.push(fixture("group_command", text="/help@Threadline_Bot", message_id=206,
                            entities=[{"offset": 0, "length": 20, "type": "bot_command"}]))
    sent = await peer.wait_sent(2)  # two chats answer in either order
    welcome = next(m for m in sent if m["chat_id"] == "4242")
    helped = next(m for m in sent if m["chat_id"] == str(GROUP))
    assert welcome["text"].startswith("Hi!") and "/link" in welcome["text"]
    assert "not sure" not in welcome["text"]
    assert helped["chat_id"] == str(GROUP) and "/whoami" in helped["text"]


async def test_a_dropped_long_poll_is_reconnected_without_losing_the_next_message(bot, peer):
    await peer.push(private("my color is teal", 101))
    await peer.wait_sent(1)
    peer.drop_polls = 1
    await peer.push(private("what's my color?", 102))
    _, after = await peer.wait_sent(2)
    assert "teal" in after["text"]
    assert peer.dropped == 1


async def test_a_reply_over_4096_characters_is_split_into_several_messages(engine, peer):
    long_text = "\n\n".join(f"Part {i}: " + "lorem ipsum dolor sit amet " * 40
                            for i in range(10))
    assert len(long_text) > 4096 * 2

    class Long:
        name = "long"

        async def respond(self, context, changes) -> Response:
            return Response(long_text if context.text == "tell me everything" else "hi", changes)

    engine.responder = Long()
    async with polling(engine, peer):
        await peer.push(private("tell me everything", 101))
        await peer.wait_sent(4)
        await peer.push(private("hello", 102))  # answered after every piece of the first
        await peer.wait_sent(5)
    pieces = peer.sent[:-1]
    assert len(peer.sent) == 5
    assert all(len(m["text"]) <= 4096 and m["text"].startswith("Part") for m in pieces)
    assert " ".join(" ".join(m["text"] for m in pieces).split()) == " ".join(long_text.split())


async def test_flood_control_is_waited_out_and_the_message_sent(bot, peer: TelegramPeer):
    peer.rate_limited = 1
    started = time.monotonic()
    await peer.push(private("hello", 101))
    [sent] = await peer.wait_sent(1)
    assert sent["chat_id"] == "4242"
    assert len(peer.calls_to("sendMessage")) == 2
    assert time.monotonic() - started >= 1  # retry_after: 1 was honoured


async def test_shutdown_stops_polling_cleanly_and_lets_a_reply_finish(engine, peer):
    engine.responder = gated = Gated("done thinking")
    adapter = telegram.create({"token": TOKEN, "api_url": peer.url, "poll_timeout": 1}, engine)
    run = asyncio.create_task(adapter.run())
    pushed = await peer.push(private("hello", 101))
    async with asyncio.timeout(10):
        await gated.entered.wait()
    run.cancel()
    await asyncio.sleep(0.05)
    assert not run.done()
    gated.release.set()
    async with asyncio.timeout(10):
        await asyncio.gather(run, return_exceptions=True)
    assert [m["text"] for m in peer.sent] == ["done thinking"]
    # The last getUpdates confirmed the update, so a restart does not fetch it again.
    last = peer.calls_to("getUpdates")[-1]
    assert (int(last["offset"]), last["timeout"]) == (pushed["update_id"] + 1, "0")


async def test_deliver_sends_to_the_chat(bot, peer: TelegramPeer):
    async with asyncio.timeout(10):
        while bot.application is None or not bot.application.running:
            await asyncio.sleep(0.01)
    await bot.deliver(OutboundMessage("telegram", "4242", "⏰ Reminder: stretch", "usr_x"))
    [sent] = await peer.wait_sent(1)
    assert sent == {"chat_id": "4242", "text": "⏰ Reminder: stretch"}


async def test_deliver_works_while_not_running(engine, peer: TelegramPeer):
    adapter = telegram.create({"token": TOKEN, "api_url": peer.url}, engine)
    await adapter.deliver(OutboundMessage("telegram", "4242", "⏰ Reminder", "usr_x"))
    assert [m["text"] for m in await peer.wait_sent(1)] == ["⏰ Reminder"]


async def test_check_reports_the_bot_and_rejects_a_bad_token(engine, peer: TelegramPeer):
    good = telegram.create({"token": TOKEN, "api_url": peer.url}, engine)
    assert await good.check() == "telegram: bot @threadline_bot (id 7000000001)"
    bad = telegram.create({"token": "123:wrong", "api_url": peer.url}, engine)
    with pytest.raises(AdapterConfigError, match="token"):
        await bad.check()
    with pytest.raises(AdapterConfigError, match="token"):
        await bad.run()


# --- webhook ------------------------------------------------------------------------------------

@asynccontextmanager
async def webhook(engine, peer: TelegramPeer) -> AsyncIterator[str]:
    adapter = telegram.create({"token": TOKEN, "api_url": peer.url, "mode": "webhook",
                               "webhook_url": "https://gw.example.com/telegram/webhook",
                               "secret_token": SECRET}, engine)
    run = asyncio.create_task(adapter.run())
    try:
        async with serving(adapter.routes()) as url:
            async with asyncio.timeout(10):
                while adapter.application is None or not adapter.application.running:
                    await asyncio.sleep(0.01)
            yield url + "/telegram/webhook"
    finally:
        await stop(run)


async def post_update(url: str, update: dict[str, Any], secret: str | None = SECRET
                      ) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if secret is not None:
        headers[telegram.SECRET_HEADER] = secret
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        return await client.post(url, content=json.dumps(update), headers=headers)


async def test_webhook_updates_are_answered_and_a_wrong_secret_gets_403(engine, peer):
    async with webhook(engine, peer) as url:
        assert peer.webhook["url"] == "https://gw.example.com/telegram/webhook"
        assert peer.webhook["secret_token"] == SECRET
        wrong = await post_update(url, private("my budget is $1", 100), secret="nope")
        missing = await post_update(url, private("my budget is $1", 100), secret=None)
        assert (wrong.status_code, missing.status_code) == (403, 403)
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            garbled = await client.post(url, content=b"[1, 2",
                                        headers={telegram.SECRET_HEADER: SECRET})
        assert garbled.status_code == 400
        assert (await post_update(url, private("my budget is $5,000", 101))).status_code == 200
        assert (await post_update(url, private("what's my budget?", 102))).status_code == 200
        _, asked = await peer.wait_sent(2)
    assert "$5,000" in asked["text"]
    assert len(peer.sent) == 2  # the refused updates never reached the engine


async def test_a_redelivered_webhook_update_is_answered_once(engine, peer):
    async with webhook(engine, peer) as url:
        update = private("hello", 101)
        for _ in range(2):
            assert (await post_update(url, update)).status_code == 200
        await peer.wait_sent(1)
        assert (await post_update(url, private("hello again", 102))).status_code == 200
        await peer.wait_sent(2)
    assert len(peer.sent) == 2


# --- configuration ------------------------------------------------------------------------------

@pytest.mark.parametrize(("config", "missing"), [
    ({}, "channels.telegram.token"),
    ({"token": "1:a", "mode": "webhook", "secret_token": "s"}, "channels.telegram.webhook_url"),
    ({"token": "1:a", "mode": "webhook", "webhook_url": "https://x"},
     "channels.telegram.secret_token"),
    ({"token": "1:a", "mode": "webhook", "webhook_url": "https://x", "secret_token": "a b"},
     "channels.telegram.secret_token"),
    ({"token": "1:a", "mode": "push"}, "channels.telegram.mode"),
])
def test_missing_settings_are_named(config, missing):
    with pytest.raises(AdapterConfigError, match=missing.replace(".", r"\.")):
        telegram.create(config, engine=None)  # type: ignore[arg-type]


def test_the_file_url_follows_the_api_url_and_secrets_stay_out_of_the_repr():
    adapter = telegram.create({"token": TOKEN, "api_url": "http://127.0.0.1:9/bot/"},
                              engine=None)  # type: ignore[arg-type]
    assert (adapter.api_url, adapter.file_url) == ("http://127.0.0.1:9/bot",
                                                   "http://127.0.0.1:9/file/bot")
    assert TOKEN not in repr(adapter)
    assert adapter.routes() == []  # polling needs no route


# --- pure functions on stored payloads ----------------------------------------------------------

def inbound(name: str, **message: Any):
    return telegram.inbound_from_update(fixture(name, **message), bot_id=BOT["id"],
                                        bot_username=BOT["username"])


def test_a_private_message_becomes_an_inbound_message():
    message = inbound("private_message")
    assert message is not None
    assert message.identifier == ("4242", "telegram")
    assert message.conversation == "4242"
    assert message.message_id == "4242:101"
    assert message.text == "what's my budget?"


def test_group_messages_addressed_to_the_bot_lose_the_bot_s_name():
    assert inbound("group_mention").text == "what's my budget?"
    assert inbound("group_reply_to_bot").text == "and my color?"
    assert inbound("group_command").text == "/whoami"
    emoji = inbound("group_emoji_mention")  # entity offsets count UTF-16 code units
    assert emoji is not None and emoji.conversation == str(GROUP)
    assert emoji.message_id == f"{GROUP}:207"


@pytest.mark.parametrize("name", ["group_unaddressed", "edited_message"])
def test_updates_not_for_us_become_nothing(name):
    assert inbound(name) is None


def test_messages_from_bots_are_ignored():
    update = fixture("private_message")
    update["message"]["from"]["is_bot"] = True
    assert telegram.inbound_from_update(update, bot_id=BOT["id"],
                                        bot_username=BOT["username"]) is None


def test_splitting_counts_utf16_code_units_and_cuts_at_words():
    text = "😀 " * 3000  # 3 code units per "😀 ": 9000 in all
    pieces = split_text(text, 4096, size=telegram.utf16_len)
    assert len(pieces) == 3
    assert all(telegram.utf16_len(p) <= 4096 and not p.endswith(" ") for p in pieces)
    assert "".join(p.replace(" ", "") for p in pieces) == "😀" * 3000


def test_split_text_prefers_paragraphs_then_lines_then_words():
    assert split_text("aaa\n\nbbb ccc", 9) == ["aaa", "bbb ccc"]
    assert split_text("aaaa\nbbb ccc", 9) == ["aaaa", "bbb ccc"]
    assert split_text("aaaa bbbb cccc", 9) == ["aaaa bbbb", "cccc"]
    assert split_text("x" * 20, 8) == ["x" * 8, "x" * 8, "x" * 4]
    assert split_text("  \n ", 5) == []


def test_retry_after_is_read_in_seconds():
    assert telegram.retry_seconds(RetryAfter(3)) == 3.0


async def test_a_reminder_arrives_once_and_a_web_one_follows_the_person_here(bot, peer, engine):
    from adapters.inmemory import InMemoryChannel
    from gateway.conversation.channels import ChannelRegistry
    from gateway.conversation.scheduler import Scheduler

    await peer.push(private("remind me in 1 second to stretch", 101))
    (told,) = await peer.wait_sent(1)
    assert "remind you to stretch" in told["text"]
    user = await engine.owner(("4242", "telegram"))
    web = InMemoryChannel(engine, "web")
    await engine.identity.associate(engine.formation, ["alice@x.co", ("4242", "telegram")],
                                    user)
    await web.push("alice@x.co", "remind me in 1 second to drink water")
    web.reachable = False  # the page is closed: the latest channel that can push is here
    await peer.push(private("hello", 102))  # Telegram is where Alice was seen last
    await peer.wait_sent(2)
    registry = ChannelRegistry()
    registry.add(bot)
    registry.add(web)
    scheduler = Scheduler(engine.memory, registry, formation=engine.formation)
    await asyncio.sleep(1.1)
    assert await scheduler.run_once() == 2
    assert await scheduler.run_once() == 0
    reminders = [m["text"] for m in (await peer.wait_sent(4))[2:]]
    assert sorted(reminders) == ["⏰ Reminder: drink water", "⏰ Reminder: stretch"]
    assert all(m["chat_id"] == "4242" for m in peer.sent[2:])


async def test_a_link_code_asked_for_in_a_group_is_sent_privately(bot, peer, engine):
    await peer.push(fixture("group_command", text="/link@threadline_bot", message_id=207,
                            entities=[{"offset": 0, "length": 20, "type": "bot_command"}]))
    sent = await peer.wait_sent(2)
    in_group = [m for m in sent if m["chat_id"] == str(GROUP)]
    in_private = [m for m in sent if m["chat_id"] == "4242"]
    assert len(in_group) == 1 and "private message" in in_group[0]["text"]
    assert len(in_private) == 1 and "Your link code is" in in_private[0]["text"]
    code = in_private[0]["text"].split("send /link ")[1].split()[0]
    assert code not in json.dumps(in_group)
    # Someone who never opened a private chat with the bot gets no code at all.
    peer.no_private.add(5151)
    bob = fixture("group_command", text="/link@threadline_bot", message_id=208,
                  entities=[{"offset": 0, "length": 20, "type": "bot_command"}])
    bob["message"]["from"]["id"] = 5151
    await peer.push(bob)
    refused = (await peer.wait_sent(3))[2]
    assert refused["chat_id"] == str(GROUP) and "couldn't message you privately" in (
        refused["text"])
    assert not [m for m in peer.sent if m["chat_id"] != "4242" and "Your link code" in m["text"]]


async def test_a_streamed_reply_grows_in_place_with_typing_shown_first(engine, peer):
    async with streaming_model(engine) as model, polling(engine, peer, edit_interval=0):
        await peer.push(private("what's my budget?", 101))
        await peer.wait_for("editMessageText")
        for _ in range(200):
            if peer.texts.get(("4242", 1)) == model.reply:
                break
            await asyncio.sleep(0.02)
    actions = peer.calls_to("sendChatAction")
    assert actions and actions[0]["action"] == "typing"
    assert len(peer.sent) == 1  # one message, grown by edits
    assert peer.sent[0]["text"] != model.reply  # it started with the first pieces
    assert len(peer.edits) >= 2 and peer.texts[("4242", 1)] == model.reply
