"""Slack end to end: slack-bolt behind a real uvicorn server, a Slack Web API stand-in,
events signed as Slack signs them; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from slack_sdk.signature import SignatureVerifier

from adapters import slack
from adapters.inmemory import InMemoryChannel
from gateway.conversation.messages import OutboundMessage
from gateway.conversation.responders.base import Response
from gateway.runtime.supervisor import AdapterConfigError
from tests.helpers.responders import Gated, streaming_model
from tests.peers.http import serving, stop
from tests.peers.slack import APP_TOKEN, BOT_TOKEN, BOT_USER_ID, SlackPeer

FIXTURES = Path(__file__).parent / "fixtures" / "slack"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


def fixture(name: str, **event: Any) -> dict[str, Any]:
    """A stored Slack payload; keyword arguments replace fields of its event, `event_id`
    replaces the envelope's."""
    body = json.loads((FIXTURES / f"{name}.json").read_text())
    if "event_id" in event:
        body["event_id"] = event.pop("event_id")
    body.get("event", {}).update(event)
    return body


@dataclass
class Slack:
    adapter: slack.SlackAdapter
    peer: SlackPeer
    url: str

    async def send(self, body: Mapping[str, Any], *, secret: str = SIGNING_SECRET,
                   timestamp: int | None = None, headers: Mapping[str, str] | None = None,
                   ) -> httpx.Response:
        """POST an event as Slack does: raw JSON body, timestamp and v0 signature headers."""
        raw = json.dumps(body)
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=raw)
        assert signature is not None
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            return await client.post(
                self.url + "/slack/events", content=raw,
                headers={"Content-Type": "application/json", "X-Slack-Request-Timestamp": ts,
                         "X-Slack-Signature": signature, **(headers or {})})

    async def post(self, raw: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """POST bytes with exactly these headers (no signing of our own)."""
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            return await client.post(self.url + "/slack/events", content=raw,
                                     headers=dict(headers))

    async def dm(self, text: str, *, user: str = "U98765ABC", n: int, **event: Any) -> dict:
        """Send a direct message (the n-th of the test) and wait for the n-th reply."""
        ts = f"17000000{n:02d}.000100"
        answer = await self.send(fixture("message_im", text=text, user=user, ts=ts,
                                         event_ts=ts, event_id=f"Ev0DM{n:07d}", **event))
        assert answer.status_code == 200
        return (await self.peer.wait_posted(n))[n - 1]


@pytest.fixture
async def peer() -> AsyncIterator[SlackPeer]:
    peer = SlackPeer()
    await peer.start()
    yield peer
    await peer.stop()


@asynccontextmanager
async def running(engine, peer: SlackPeer, **config: Any) -> AsyncIterator[Slack]:
    adapter = slack.create({"bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET,
                            "api_url": peer.url + "api/", **config}, engine)
    run = asyncio.create_task(adapter.run())
    try:
        async with serving(adapter.routes()) as url:
            yield Slack(adapter, peer, url)
    finally:
        await stop(run)


@pytest.fixture
async def bot(engine, peer: SlackPeer) -> AsyncIterator[Slack]:
    async with running(engine, peer) as harness:
        yield harness


# --- end to end ---------------------------------------------------------------------------------

async def test_a_direct_message_is_answered_in_its_thread(bot: Slack):
    answer = await bot.send(fixture("message_im"))
    assert answer.status_code == 200
    [posted] = await bot.peer.wait_posted(1)
    assert posted["channel"] == "D0123DMCH"
    assert posted["thread_ts"] == "1700000000.000100"
    assert "$5,000" in posted["text"]
    assert bot.peer.calls_to("auth.test")  # bolt learnt who the bot is


async def test_a_mention_in_a_channel_is_answered_in_the_thread_without_the_mention(bot: Slack,
                                                                                    engine):
    await bot.dm("my color is teal", n=1)
    assert (await bot.send(fixture("app_mention"))).status_code == 200
    assert (await bot.send(fixture("app_mention_in_thread"))).status_code == 200
    _, first, second = await bot.peer.wait_posted(3)
    assert first["channel"] == second["channel"] == "C0123GENRL"
    assert first["thread_ts"] == second["thread_ts"] == "1700000100.000200"
    assert "teal" in second["text"]
    # One Slack thread is one session, whose buffer holds the text without "<@UBOT>".
    user_id = await engine.identity.resolve(engine.formation, ("U98765ABC", "slack"))
    sessions = await engine.memory.sessions.list(user_id)
    thread = [s for s in sessions if s.conversation == "C0123GENRL:1700000100.000200"]
    assert len(thread) == 1
    buffer = await engine.memory.sessions.buffer(thread[0].id)
    assert [m.content for m in buffer if m.role == "user"] == ["what's my budget?",
                                                               "what's my color?"]


async def test_a_user_known_by_email_from_the_web_is_recognised_on_first_contact(
        engine, peer: SlackPeer):
    web = InMemoryChannel(engine, "web")
    alice = await engine.identity.resolve(engine.formation, "alice@acme.com")
    told = await web.push("alice@acme.com", "my budget is $5,000")
    assert told is not None and told.user_id == alice
    peer.add_user("U0ALICE01", "Alice@Acme.com")
    async with running(engine, peer) as bot:
        asked = await bot.dm("what's my budget?", user="U0ALICE01", n=1)
        assert "$5,000" in asked["text"]
        await bot.dm("hello", user="U0ALICE01", n=2)
    identity = engine.identity
    assert await identity.resolve(engine.formation, ("U0ALICE01", "slack"), create=False) == alice
    assert len(peer.calls_to("users.info")) == 1  # checked once, not on every message


async def test_a_new_slack_user_is_created_with_the_profile_email(bot: Slack, engine):
    bot.peer.add_user("U0NEWBIE1", "newbie@acme.com", name="newbie")
    await bot.dm("my budget is $10", user="U0NEWBIE1", n=1)
    web = InMemoryChannel(engine, "web")
    asked = await web.push("newbie@acme.com", "what's my budget?")
    assert asked is not None and "$10" in asked.text


async def test_an_unconfirmed_or_foreign_profile_email_links_nobody(bot: Slack, engine):
    web = InMemoryChannel(engine, "web")
    alice = (await web.push("alice@acme.com", "my budget is $5,000")).user_id
    bot.peer.add_user("U0MALLORY", "alice@acme.com", name="mallory")
    del bot.peer.users["U0MALLORY"]["is_email_confirmed"]
    bot.peer.add_user("U0GUEST01", "alice@acme.com", name="guest")
    bot.peer.users["U0GUEST01"]["team_id"] = "T_OTHER_WORKSPACE"
    first = await bot.dm("what's my budget?", user="U0MALLORY", n=1)
    second = await bot.dm("what's my budget?", user="U0GUEST01", n=2)
    assert "$5,000" not in first["text"] and "$5,000" not in second["text"]
    for slack_id in ("U0MALLORY", "U0GUEST01"):
        assert await engine.owner((slack_id, "slack")) != alice


async def test_a_token_of_another_workspace_than_configured_stops_the_channel(engine, peer):
    adapter = slack.create({"bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET,
                            "api_url": peer.url + "api/", "team_id": "T_SOMEWHERE_ELSE"}, engine)
    with pytest.raises(AdapterConfigError, match="team_id"):
        await adapter.check()


async def test_without_a_profile_email_the_user_is_answered_all_the_same(bot: Slack, engine):
    bot.peer.add_user("U0NOMAIL1", None)
    await bot.dm("my budget is $10", user="U0NOMAIL1", n=1)
    # users.info refusing (no such user, or no users:read.email scope) changes nothing either.
    assert "$10" in (await bot.dm("what's my budget?", user="U0NOMAIL1", n=2))["text"]
    assert "don't" in (await bot.dm("what's my budget?", user="U0UNKNOWN", n=3))["text"]
    assert len(bot.peer.calls_to("users.info")) == 2


async def test_a_forged_signature_or_a_replayed_timestamp_is_rejected(bot: Slack):
    body = fixture("message_im")
    forged = await bot.send(body, secret="not-the-signing-secret")
    replayed = await bot.send(body, timestamp=int(time.time()) - 6 * 60)
    assert (forged.status_code, replayed.status_code) == (401, 401)
    # Neither reached the engine: the same event, properly signed, is answered (once).
    assert (await bot.send(body)).status_code == 200
    assert len(await bot.peer.wait_posted(1)) == 1
    await bot.dm("hello", n=2)
    assert len(bot.peer.posted) == 2


def signed(raw: bytes, timestamp: str, *, secret: str = SIGNING_SECRET,
           content_type: str = "application/json") -> dict[str, str]:
    """The headers Slack would send with `raw`, signed over `timestamp` as given."""
    basestring = b"v0:" + timestamp.encode() + b":" + raw
    digest = hmac.new(secret.encode(), basestring, hashlib.sha256).hexdigest()
    return {"Content-Type": content_type, "X-Slack-Request-Timestamp": timestamp,
            "X-Slack-Signature": f"v0={digest}"}


NOW = str(int(time.time()))
_EVENT = json.dumps(fixture("message_im")).encode()


@pytest.mark.parametrize(("raw", "headers"), [
    # The timestamp: not a number, absurdly long, missing, empty.
    (_EVENT, signed(_EVENT, "yesterday")),
    (_EVENT, signed(_EVENT, "1e9")),
    (_EVENT, signed(_EVENT, "9" * 5000)),
    (_EVENT, signed(_EVENT, "")),
    (_EVENT, {k: v for k, v in signed(_EVENT, NOW).items()
              if k != "X-Slack-Request-Timestamp"}),
    # The signature: missing, not v0=hex.
    (_EVENT, {k: v for k, v in signed(_EVENT, NOW).items() if k != "X-Slack-Signature"}),
    (_EVENT, {**signed(_EVENT, NOW), "X-Slack-Signature": "v0=zz"}),
    # Unsigned garbage.
    (b"\xff\xfe not json", {"Content-Type": "application/json"}),
], ids=["word-timestamp", "float-timestamp", "huge-timestamp", "empty-timestamp",
        "no-timestamp", "no-signature", "bad-signature", "unsigned-garbage"])
async def test_a_request_with_malformed_signing_headers_is_refused_with_401(bot: Slack, raw,
                                                                            headers):
    answer = await bot.post(raw, headers)
    assert answer.status_code == 401, answer.text
    assert bot.peer.calls_to("users.info") == []  # nothing reached the engine


@pytest.mark.parametrize(("raw", "content_type"), [
    (b"{not json", "application/json"),
    (b"\xff\xfe\x00", "application/json"),
    (b"[1, 2, 3]", "application/json"),
    (b'"just a string"', "application/json"),
    (json.dumps({"type": "event_callback", "event": "not an object"}).encode(),
     "application/json"),
    (json.dumps({"type": "event_callback", "event": {"type": "message", "user": ["U1"],
                                                     "channel": {"id": 1}, "ts": 5,
                                                     "channel_type": "im",
                                                     "text": 42}}).encode(),
     "application/json"),
    (json.dumps({**fixture("message_im"), "authorizations": "none"}).encode(),
     "application/json"),
    (json.dumps({**fixture("message_im"), "enterprise": 5, "team_id": [1]}).encode(),
     "application/json"),
    (b"payload=%7Bnot+json", "application/x-www-form-urlencoded"),
    (b"payload=%5B1%5D", "application/x-www-form-urlencoded"),
], ids=["broken-json", "not-utf8", "json-array", "json-string", "event-not-object",
        "event-fields-of-wrong-types", "authorizations-not-a-list",
        "enterprise-and-team-of-wrong-types", "form-broken-json", "form-array"])
async def test_a_properly_signed_but_malformed_body_is_a_4xx_never_a_500(bot: Slack, raw,
                                                                          content_type):
    answer = await bot.post(raw, signed(raw, str(int(time.time())),
                                        content_type=content_type))
    assert 400 <= answer.status_code < 500 or answer.status_code == 200, answer.text
    assert answer.status_code != 500
    await bot.dm("hello", n=1)  # the channel still answers
    assert len(bot.peer.posted) == 1


async def test_a_slack_retry_of_one_event_gets_one_reply(bot: Slack):
    body = fixture("message_im")
    first = await bot.send(body)
    retry = await bot.send(body, headers={"X-Slack-Retry-Num": "1",
                                          "X-Slack-Retry-Reason": "http_timeout"})
    assert first.status_code == retry.status_code == 200
    await bot.peer.wait_posted(1)
    await bot.dm("hello", n=2)  # a later event is answered after it: nothing else was queued
    assert [p["thread_ts"] for p in bot.peer.posted] == ["1700000000.000100",
                                                         "1700000002.000100"]


async def test_messages_of_bots_and_of_itself_and_edits_are_ignored(bot: Slack, engine):
    for name in ("bot_message", "own_message", "message_changed", "message_channel"):
        assert (await bot.send(fixture(name))).status_code == 200
    await bot.dm("hello", n=1)
    assert len(bot.peer.posted) == 1
    assert bot.peer.calls_to("users.info") == [{"user": "U98765ABC"}]
    assert "$9,999" not in (await bot.dm("what's my budget?", n=2))["text"]


async def test_url_verification_is_answered_with_the_challenge(bot: Slack):
    answer = await bot.send(fixture("url_verification"))
    assert answer.status_code == 200
    assert answer.json() == {"challenge": fixture("url_verification")["challenge"]}


async def test_a_rate_limited_post_is_retried_after_the_wait_slack_asks_for(bot: Slack):
    bot.peer.rate_limited["chat.postMessage"] = 1
    started = time.monotonic()
    posted = await bot.dm("hello", n=1)
    assert posted["channel"] == "D0123DMCH"
    assert len(bot.peer.calls_to("chat.postMessage")) == 2
    assert time.monotonic() - started >= 1  # Retry-After: 1 was honoured


async def test_deliver_posts_into_the_conversation_s_thread(bot: Slack):
    await bot.adapter.deliver(OutboundMessage("slack", "C0123GENRL:1700000100.000200",
                                              "⏰ Reminder: stretch & <breathe>", "usr_x"))
    await bot.adapter.deliver(OutboundMessage("slack", "D0123DMCH", "⏰ Reminder: drink",
                                              "usr_x"))
    thread, direct = await bot.peer.wait_posted(2)
    assert thread == {"channel": "C0123GENRL", "thread_ts": "1700000100.000200",
                      "text": "⏰ Reminder: stretch &amp; &lt;breathe&gt;"}
    assert direct == {"channel": "D0123DMCH", "text": "⏰ Reminder: drink"}


async def test_a_reminder_asked_in_a_dm_arrives_there_once(bot: Slack, engine):
    from gateway.conversation.channels import ChannelRegistry
    from gateway.conversation.scheduler import Scheduler

    told = await bot.dm("remind me in 1 second to stretch", n=1)
    assert "remind you to stretch" in told["text"]
    registry = ChannelRegistry()
    registry.add(bot.adapter)
    scheduler = Scheduler(engine.memory, registry, formation=engine.formation)
    await asyncio.sleep(1.1)
    assert await scheduler.run_once() == 1
    assert await scheduler.run_once() == 0
    posted = await bot.peer.wait_posted(2)
    assert posted[1]["text"] == "⏰ Reminder: stretch"
    assert posted[1]["channel"] == told["channel"] == "D0123DMCH"
    await asyncio.sleep(0.2)
    assert len(bot.peer.calls_to("chat.postMessage")) == 2


async def test_a_fact_told_on_slack_is_recalled_on_telegram_after_linking(bot: Slack, engine):
    from adapters import telegram
    from tests.peers.telegram import TOKEN, TelegramPeer

    told = await bot.dm("my budget is $5,000", n=1)
    assert "$5,000" in told["text"]
    alice = await engine.identity.resolve(engine.formation, ("U98765ABC", "slack"))
    await engine.identity.associate(engine.formation, [("4242", "telegram")], user_id=alice)

    tg_peer = TelegramPeer()
    api_url = await tg_peer.start()
    adapter = telegram.create({"token": TOKEN, "api_url": api_url, "poll_timeout": 1}, engine)
    run = asyncio.create_task(adapter.run())
    try:
        tg_fixture = Path(__file__).parent / "fixtures" / "telegram" / "private_message.json"
        await tg_peer.push(json.loads(tg_fixture.read_text()))
        [sent] = await tg_peer.wait_sent(1)
    finally:
        await stop(run)
        await tg_peer.stop()
    assert sent["chat_id"] == "4242"
    assert "$5,000" in sent["text"]


async def test_shutdown_lets_a_reply_in_flight_finish(engine, peer: SlackPeer):
    engine.responder = gated = Gated("done thinking")
    adapter = slack.create({"bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET,
                            "api_url": peer.url + "api/"}, engine)
    run = asyncio.create_task(adapter.run())
    async with serving(adapter.routes()) as url:
        harness = Slack(adapter, peer, url)
        assert (await harness.send(fixture("message_im"))).status_code == 200
        async with asyncio.timeout(10):
            await gated.entered.wait()
        run.cancel()
        await asyncio.sleep(0.05)
        assert not run.done()  # draining
        # While draining, new events are refused so that Slack redelivers them later.
        assert (await harness.send(fixture("app_mention"))).status_code == 503
        gated.release.set()
        async with asyncio.timeout(10):
            await asyncio.gather(run, return_exceptions=True)
    assert [p["text"] for p in peer.posted] == ["done thinking"]


async def test_shutdown_gives_up_on_a_reply_after_the_drain_timeout(engine, peer: SlackPeer):
    class Stuck:
        name = "stuck"

        async def respond(self, context, changes) -> Response:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    engine.responder = Stuck()
    async with running(engine, peer, drain_timeout=0.2) as bot:
        assert (await bot.send(fixture("message_im"))).status_code == 200
        async with asyncio.timeout(10):
            while not peer.calls_to("users.info"):
                await asyncio.sleep(0.01)
    assert peer.posted == []


async def test_socket_mode_receives_events_over_the_websocket(engine, peer: SlackPeer):
    adapter = slack.create({"bot_token": BOT_TOKEN, "app_token": APP_TOKEN, "mode": "socket",
                            "api_url": peer.url + "api/"}, engine)
    assert adapter.routes() == []
    run = asyncio.create_task(adapter.run())
    try:
        envelope = await peer.push_socket_event(fixture("message_im"))
        [posted] = await peer.wait_posted(1)
        assert "$5,000" in posted["text"] and posted["thread_ts"] == "1700000000.000100"
        assert envelope in peer.acks
        assert peer.calls_to("apps.connections.open")
    finally:
        await stop(run)


async def test_check_reports_the_bot_and_rejects_a_bad_token(engine, peer: SlackPeer):
    good = slack.create({"bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET,
                         "api_url": peer.url + "api/"}, engine)
    assert await good.check() == "slack: bot @threadline in team T1"
    bad = slack.create({"bot_token": "xoxb-wrong", "signing_secret": SIGNING_SECRET,
                        "api_url": peer.url + "api/"}, engine)
    with pytest.raises(AdapterConfigError, match="bot_token"):
        await bad.check()
    with pytest.raises(AdapterConfigError, match="bot_token"):
        await bad.run()


# --- configuration ------------------------------------------------------------------------------

@pytest.mark.parametrize(("config", "missing"), [
    ({"signing_secret": "s"}, "channels.slack.bot_token"),
    ({"bot_token": "xoxb-1"}, "channels.slack.signing_secret"),
    ({"bot_token": "xoxb-1", "mode": "socket"}, "channels.slack.app_token"),
    ({"bot_token": "xoxb-1", "signing_secret": "s", "mode": "rtm"}, "channels.slack.mode"),
])
def test_missing_settings_are_named(config, missing):
    with pytest.raises(AdapterConfigError, match=missing.replace(".", r"\.")):
        slack.create(config, engine=None)  # type: ignore[arg-type]


def test_secrets_stay_out_of_the_repr():
    adapter = slack.create({"bot_token": BOT_TOKEN, "signing_secret": SIGNING_SECRET},
                           engine=None)  # type: ignore[arg-type]
    assert BOT_TOKEN not in repr(adapter) and SIGNING_SECRET not in repr(adapter)
    assert [route.path for route in adapter.routes()] == ["/slack/events"]  # type: ignore


# --- pure functions on stored payloads ----------------------------------------------------------

def test_a_direct_message_becomes_an_inbound_message():
    message = slack.inbound_from_event(fixture("message_im"), bot_user_id=BOT_USER_ID)
    assert message is not None
    assert message.channel == "slack" and message.identifier == ("U98765ABC", "slack")
    assert message.conversation == "D0123DMCH"  # a DM is one conversation
    assert message.message_id == "Ev0IMBUDGET1"
    assert message.text == "my budget is $5,000"
    assert message.extras["thread_ts"] == "1700000000.000100"


def test_mentions_are_keyed_by_thread_and_lose_the_leading_mention():
    top = slack.inbound_from_event(fixture("app_mention"), bot_user_id=BOT_USER_ID)
    reply = slack.inbound_from_event(fixture("app_mention_in_thread"), bot_user_id=BOT_USER_ID)
    assert top is not None and reply is not None
    assert top.conversation == reply.conversation == "C0123GENRL:1700000100.000200"
    assert (top.text, reply.text) == ("what's my budget?", "what's my color?")


@pytest.mark.parametrize("name", ["bot_message", "own_message", "message_changed",
                                  "message_channel", "url_verification"])
def test_events_not_for_us_become_nothing(name):
    assert slack.inbound_from_event(fixture(name), bot_user_id=BOT_USER_ID) is None


@pytest.mark.parametrize("change", [{"user": ["U98765ABC"]}, {"channel": {"id": "D1"}},
                                    {"ts": 1700000000.0001}, {"text": 42},
                                    {"thread_ts": ["1.2"]}])
def test_an_event_with_fields_of_the_wrong_types_is_not_a_message(change):
    assert slack.inbound_from_event(fixture("message_im", **change),
                                    bot_user_id=BOT_USER_ID) is None


def test_a_mention_with_nothing_else_is_not_a_message():
    body = fixture("app_mention", text="<@UBOT>")
    assert slack.inbound_from_event(body, bot_user_id=BOT_USER_ID) is None


def test_profile_email_comes_only_from_people_of_our_workspace_with_a_confirmed_address():
    info = fixture("users_info")
    team = info["user"]["team_id"]
    assert slack.profile_email(info, team) == "Alice@Acme.com"
    assert slack.profile_email(info, "T_OTHER") is None  # a guest from another workspace
    assert slack.profile_email(info, None) is None  # workspace unknown: trust nothing
    for change in ({"is_bot": True}, {"deleted": True}, {"is_email_confirmed": False},
                   {"profile": {"display_name": "alice"}}):
        changed = copy.deepcopy(info)
        changed["user"].update(change)
        assert slack.profile_email(changed, team) is None, change
    missing = copy.deepcopy(info)
    del missing["user"]["is_email_confirmed"]  # not said confirmed is not confirmed
    assert slack.profile_email(missing, team) is None


def test_conversation_keys_round_trip():
    assert slack.parse_conversation("C1:1700000000.000100") == ("C1", "1700000000.000100")
    assert slack.parse_conversation("D1") == ("D1", None)
    assert slack.conversation_key("C1", "1.2") == "C1:1.2"


def test_long_replies_are_split_into_several_posts_at_paragraphs():
    paragraphs = [f"Paragraph {i}. " + "word " * 150 for i in range(12)]
    calls = slack.post_calls("\n\n".join(paragraphs), "C1", "1.2")
    assert len(calls) > 1
    assert all(len(c["text"]) <= slack.MESSAGE_LIMIT for c in calls)
    assert all(c["text"].startswith("Paragraph") for c in calls)  # cut between paragraphs
    assert all(c["thread_ts"] == "1.2" and c["channel"] == "C1" for c in calls)
    rejoined = " ".join(" ".join(c["text"] for c in calls).split())
    assert rejoined == " ".join(" ".join(paragraphs).split())


async def test_link_codes_carry_a_person_from_slack_to_telegram(bot: Slack, engine):
    """The self-service path: /link on Slack, /link CODE on Telegram, then one memory."""
    from adapters import telegram
    from tests.peers.telegram import TOKEN, TelegramPeer

    assert "$5,000" in (await bot.dm("my budget is $5,000", n=1))["text"]
    offer = (await bot.dm("/link", n=2))["text"]
    code = offer.split("send /link ")[1].split()[0]

    tg_peer = TelegramPeer()
    api_url = await tg_peer.start()
    adapter = telegram.create({"token": TOKEN, "api_url": api_url, "poll_timeout": 1}, engine)
    run = asyncio.create_task(adapter.run())
    update = json.loads((Path(__file__).parent / "fixtures" / "telegram" /
                         "private_message.json").read_text())
    try:
        for count, text in enumerate([f"/link {code}", "what's my budget?", "/whoami"], 1):
            update["message"]["text"] = text
            update["message"]["message_id"] += 1
            await tg_peer.push(update)
            await tg_peer.wait_sent(count)
    finally:
        await stop(run)
        await tg_peer.stop()
    linked, recalled, whoami = (m["text"] for m in tg_peer.sent)
    assert linked.startswith("Linked")
    assert "$5,000" in recalled
    assert "slack:" in whoami and "telegram:" in whoami
    alice = await engine.identity.resolve(engine.formation, ("U98765ABC", "slack"))
    assert await engine.identity.resolve(engine.formation, "tg_4242") == alice


async def test_a_link_code_asked_for_in_a_channel_goes_by_direct_message(bot: Slack):
    body = fixture("app_mention", text="<@UBOT> /link")
    assert (await bot.send(body)).status_code == 200
    posted = await bot.peer.wait_posted(2)
    in_channel = [p for p in posted if p["channel"] == "C0123GENRL"]
    direct = [p for p in posted if p["channel"] == "U98765ABC"]
    assert len(in_channel) == 1 and "private message" in in_channel[0]["text"]
    assert len(direct) == 1 and "Your link code is" in direct[0]["text"]


async def test_an_unlinked_slack_id_is_matched_by_email_afresh(bot: Slack, engine):
    web = InMemoryChannel(engine, "web")
    alice = (await web.push("alice@acme.com", "my budget is $5,000")).user_id
    bot.peer.add_user("U0ALICE02", "alice@acme.com")
    await bot.dm("hello", user="U0ALICE02", n=1)
    assert await engine.owner(("U0ALICE02", "slack")) == alice
    await engine.identity.unlink(engine.formation, ("U0ALICE02", "slack"))
    assert "$5,000" in (await bot.dm("what's my budget?", user="U0ALICE02", n=2))["text"]
    assert len(bot.peer.calls_to("users.info")) == 2  # asked again after the unlink


async def test_a_streamed_reply_grows_in_place(engine, peer: SlackPeer):
    async with streaming_model(engine) as model, running(engine, peer,
                                                         edit_interval=0) as harness:
        await harness.dm("what's my budget?", n=1)
        for _ in range(300):
            if model.reply in peer.texts.values():
                break
            await asyncio.sleep(0.02)
    assert len(peer.posted) == 1 and peer.posted[0]["text"] != model.reply
    assert len(peer.updates) >= 2 and model.reply in peer.texts.values()
