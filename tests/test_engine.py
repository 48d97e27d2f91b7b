"""The spec's story end to end through the engine, on SQLite and PostgreSQL."""

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from adapters.inmemory import InMemoryChannel
from gateway.conversation.channels import ChannelRegistry
from gateway.conversation.live import NobodyListeningError
from gateway.conversation.messages import InboundMessage
from gateway.conversation.responders.base import Response
from gateway.conversation.scheduler import Backoff, Scheduler
from identity.storage import PostgresDatabase
from memory.claims import ClaimLostError, MessageKey


async def test_what_alice_says_on_the_web_she_is_told_on_slack(engine, identity, formation):
    web, slack = InMemoryChannel(engine, "web"), InMemoryChannel(engine, "slack")
    told = await web.push("user_123", "My budget is $5,000")
    assert "$5,000" in told.text

    stranger = await slack.push(("U55555XYZ", "slack"), "What's my budget?")
    assert "don't have that information" in stranger.text

    await identity.associate(formation, ["user_123", ("U98765ABC", "slack")],
                             user_id=told.user_id)
    asked = await slack.push(("U98765ABC", "slack"), "What's my budget?")
    assert asked.user_id == told.user_id
    assert "$5,000" in asked.text
    # One memory, two sessions: the buffers and session ids differ.
    assert asked.session_id != told.session_id
    buffers = [await engine.memory.sessions.buffer(r.session_id) for r in (told, asked)]
    assert [m.content for m in buffers[0]] == ["My budget is $5,000", told.text]
    assert [m.content for m in buffers[1]] == ["What's my budget?", asked.text]


async def test_phrasing_variants_read_the_same(engine):
    web = InMemoryChannel(engine, "web")
    await web.push("bob@x.co", "my Budget is $5,000.")
    for question in ("What is my budget", "whats my budget?", "what's my BUDGET ?",
                     "Tell me my budget!"):
        assert "$5,000" in (await web.push("bob@x.co", question)).text, question


async def test_unlinking_stops_access_to_the_memory_at_once(engine, identity, formation):
    web = InMemoryChannel(engine, "web")
    told = await web.push("user_123", "my budget is $5,000")
    await identity.associate(formation, [("U1", "slack")], user_id=told.user_id)
    slack = InMemoryChannel(engine, "slack")
    assert "$5,000" in (await slack.push(("U1", "slack"), "what's my budget?")).text
    await identity.unlink(formation, ("U1", "slack"))
    after = await slack.push(("U1", "slack"), "what's my budget?")
    assert after.user_id != told.user_id
    assert "$5,000" not in after.text


async def test_a_redelivered_message_gets_one_reply(engine):
    web = InMemoryChannel(engine, "web")
    replies = await asyncio.gather(
        *(web.push("a@x.co", "my budget is 5", message_id="evt-1") for _ in range(5))
    )
    assert sum(r is not None for r in replies) == 1
    assert len(web.outbox) == 1


async def test_a_conversation_idle_too_long_starts_a_fresh_session(engine):
    web = InMemoryChannel(engine, "web")
    first = await web.push("a@x.co", "my color is teal")
    again = await web.push("a@x.co", "hello")
    assert again.session_id == first.session_id
    engine.memory.sessions.idle_timeout = 0.01
    await asyncio.sleep(0.05)
    fresh = await web.push("a@x.co", "what's my color?")
    assert fresh.session_id != first.session_id
    assert "teal" in fresh.text  # shared memory survives the session
    assert len(await engine.memory.sessions.buffer(fresh.session_id)) == 2


async def test_separate_conversations_of_one_channel_are_separate_sessions(engine):
    web = InMemoryChannel(engine, "web")
    one = await web.push("a@x.co", "hi", conversation="tab-1")
    two = await web.push("a@x.co", "hi", conversation="tab-2")
    assert one.session_id != two.session_id and one.user_id == two.user_id


async def test_the_assistant_keeps_names_preferences_and_notes(engine):
    web = InMemoryChannel(engine, "web")
    await web.push("a@x.co", "call me Alex")
    await web.push("a@x.co", "I prefer short answers")
    await web.push("a@x.co", "remember that the demo is on Friday")
    assert "Alex" in (await web.push("a@x.co", "hello")).text
    about = (await web.push("a@x.co", "What do you know about me?")).text
    assert "Alex" in about and "short answers" in about and "demo is on Friday" in about
    synopsis = await engine.memory.users.synopsis((await web.push("a@x.co", "hi")).user_id)
    assert "Alex" in synopsis and "short answers" in synopsis
    await web.push("a@x.co", "forget my name")
    assert "Alex" not in (await web.push("a@x.co", "hello")).text


async def test_a_reminder_goes_where_it_was_asked_once(engine, db):
    web, slack = InMemoryChannel(engine, "web"), InMemoryChannel(engine, "slack")
    reply = await web.push("a@x.co", "remind me in 1 minute to stretch")
    assert "stretch" in reply.text
    await engine.identity.associate(engine.formation, [("U1", "slack")], user_id=reply.user_id)
    await slack.push(("U1", "slack"), "hi", conversation="D1")  # latest activity is on Slack
    registry = ChannelRegistry()
    registry.add(web)
    registry.add(slack)
    first, second = (Scheduler(engine.memory, registry, formation=engine.formation)
                     for _ in range(2))
    assert await first.run_once() == 0  # not due yet
    later = (await engine.memory.tasks.list(reply.user_id))[0].next_run + 1
    fired = await asyncio.gather(first.run_once(at=later), second.run_once(at=later))
    assert sum(fired) == 1
    assert [m.text for m in web.outbox].count("⏰ Reminder: stretch") == 1
    assert "⏰ Reminder: stretch" not in [m.text for m in slack.outbox]
    assert await first.run_once(at=later + 3600) == 0
    assert await engine.memory.tasks.list(reply.user_id) == []
    buffer = await engine.memory.sessions.buffer(reply.session_id)
    assert buffer[-1].content == "⏰ Reminder: stretch"  # in the transcript too


async def test_a_reminder_reaches_the_latest_channel_when_its_own_cannot(engine):
    web, slack = InMemoryChannel(engine, "web"), InMemoryChannel(engine, "slack")
    reply = await web.push("a@x.co", "remind me in 1 minute to stretch")
    await engine.identity.associate(engine.formation, [("U1", "slack")], user_id=reply.user_id)
    await slack.push(("U1", "slack"), "hi", conversation="D1")
    web.reachable = False  # the page was closed
    registry = ChannelRegistry()
    registry.add(web)
    registry.add(slack)
    later = (await engine.memory.tasks.list(reply.user_id))[0].next_run + 1
    scheduler = Scheduler(engine.memory, registry, formation=engine.formation)
    assert await scheduler.run_once(at=later) == 1
    assert slack.outbox[-1].text == "⏰ Reminder: stretch" and slack.outbox[-1].conversation == "D1"
    task = (await engine.memory.tasks.list(reply.user_id, include_done=True))[0]
    assert task.status == "done" and task.delivered_via == "slack:D1"


async def test_a_reminder_nobody_can_receive_now_waits_in_the_transcript(engine):
    web = InMemoryChannel(engine, "web")
    reply = await web.push("a@x.co", "remind me in 1 minute to stretch")
    web.reachable = False
    registry = ChannelRegistry()
    registry.add(web)
    later = (await engine.memory.tasks.list(reply.user_id))[0].next_run + 1
    await Scheduler(engine.memory, registry, formation=engine.formation).run_once(at=later)
    assert "⏰ Reminder: stretch" not in [m.text for m in web.outbox]
    buffer = await engine.memory.sessions.buffer(reply.session_id)
    assert buffer[-1].content == "⏰ Reminder: stretch"
    task = (await engine.memory.tasks.list(reply.user_id, include_done=True))[0]
    assert task.status == "done" and task.delivered_via == "transcript:web:main"


async def test_a_reminder_whose_page_closed_as_it_fired_waits_in_the_transcript(engine):
    """The page was open when the scheduler looked and closed before the reminder reached
    it: the transcript keeps it at once (no retries, no failed task)."""
    web = InMemoryChannel(engine, "web")
    reply = await web.push("a@x.co", "remind me in 1 minute to stretch")

    async def closed(message) -> None:
        raise NobodyListeningError("no web client of this user is listening")

    web.deliver = closed
    registry = ChannelRegistry()
    registry.add(web)
    later = (await engine.memory.tasks.list(reply.user_id))[0].next_run + 1
    await Scheduler(engine.memory, registry, formation=engine.formation).run_once(at=later)
    buffer = await engine.memory.sessions.buffer(reply.session_id)
    assert buffer[-1].content == "⏰ Reminder: stretch"
    task = (await engine.memory.tasks.list(reply.user_id, include_done=True))[0]
    assert task.status == "done" and task.delivered_via == "transcript:web:main"


async def test_failing_deliveries_back_off_then_give_up_with_the_reason(engine):
    class Down:
        name = "slack"

        async def deliver(self, message):
            raise ConnectionError("slack is unreachable")

    slack = InMemoryChannel(engine, "slack")
    reply = await slack.push(("U1", "slack"), "remind me in 1 minute to stretch")
    registry = ChannelRegistry()
    registry.add(Down())
    scheduler = Scheduler(engine.memory, registry, formation=engine.formation,
                          backoff=Backoff(first=10, max_attempts=3))
    at = (await engine.memory.tasks.list(reply.user_id))[0].next_run + 1
    delays = []
    for _ in range(3):
        assert await scheduler.run_once(at=at) == 0
        task = (await engine.memory.tasks.list(reply.user_id))[0]
        if task.status == "failed":
            break
        delays.append(task.next_run - time.time())
        at = task.next_run + 1
    assert task.status == "failed" and task.attempts == 3
    assert task.last_error == "slack: ConnectionError: slack is unreachable"
    assert [round(d, -1) for d in delays] == [10, 20]  # exponential
    assert await scheduler.run_once(at=at + 10_000) == 0  # given up: never tried again


async def test_a_failing_responder_apologises_without_keeping_the_apology(engine):
    class Broken:
        name = "broken"

        async def respond(self, context, changes) -> Response:
            raise TimeoutError("model endpoint timed out")

    engine.responder = Broken()
    web = InMemoryChannel(engine, "web")
    reply = await web.push("a@x.co", "my budget is $7")
    assert "Sorry" in reply.text and web.outbox[-1].text == reply.text
    buffer = await engine.memory.sessions.buffer(reply.session_id)
    assert [m.content for m in buffer] == ["my budget is $7"]  # the apology is not context
    working = await engine.memory.users.working(reply.user_id)
    assert [w.content for w in working] == ["my budget is $7"]
    assert (await engine.memory.users.get_fact(reply.user_id, "budget")).value == "$7"


async def test_credentials_are_not_stored_in_plain_text(engine, db):
    user = await engine.identity.resolve(engine.formation, "a@x.co")
    cred = await engine.memory.credentials.add(user, "github", {"token": "ghp_SECRETVALUE123"})
    assert "SECRETVALUE" not in cred.preview and cred.preview.endswith("…E123")
    assert (await engine.memory.credentials.reveal(user, cred.id)) == {
        "token": "ghp_SECRETVALUE123"}
    if isinstance(db, PostgresDatabase):
        async with db.reading() as conn:
            dump = str(await conn.fetch("SELECT * FROM credentials"))
        assert "SECRETVALUE" not in dump
    else:
        path = db.url[len("sqlite:///"):]
        await db.writer.execute("PRAGMA wal_checkpoint(FULL)")
        raw = Path(path).read_bytes() + Path(path + "-wal").read_bytes()
        assert b"SECRETVALUE" not in raw and b"github" in raw


async def test_merging_users_carries_memory_and_identifiers(engine, identity, formation):
    web, slack = InMemoryChannel(engine, "web"), InMemoryChannel(engine, "slack")
    alice = (await web.push("alice@x.co", "my budget is $5,000")).user_id
    await web.push("alice@x.co", "my color is teal")
    other = (await slack.push(("U1", "slack"), "my color is red")).user_id
    await slack.push(("U1", "slack"), "remember that the demo is on Friday")
    merged = await identity.merge(formation, alice, other)
    assert merged.keys == ["U1"] and merged.id.startswith("mrg_")
    asked = await slack.push(("U1", "slack"), "what's my budget?")
    assert asked.user_id == alice and "$5,000" in asked.text
    assert "teal" in (await slack.push(("U1", "slack"), "what's my color?")).text
    about = (await web.push("alice@x.co", "what do you know about me?")).text
    assert "demo is on Friday" in about
    assert await identity.store.count_users(formation) == 1
    assert len(await engine.memory.sessions.list(alice)) == 2
    synopsis = await engine.memory.users.synopsis(alice)  # rebuilt by the merge
    assert "demo is on Friday" in synopsis and "budget: $5,000" in synopsis


async def test_link_codes_join_a_second_channel_to_the_same_user(engine):
    slack, telegram = InMemoryChannel(engine, "slack"), InMemoryChannel(engine, "telegram")
    alice = (await slack.push(("U1", "slack"), "my budget is $5,000")).user_id
    await telegram.push(("789", "telegram"), "my color is blue")  # a first-contact user
    offer = (await slack.push(("U1", "slack"), "/link")).text
    code = offer.split("send /link ")[1].split()[0]
    assert len(code) >= 8
    typed = f"/link {code[:5].lower()} {code[-5:]}"  # as a person may type it, with a space
    assert (await telegram.push(("789", "telegram"), typed)).text.startswith("Linked")
    asked = await telegram.push("tg_789", "what's my budget?")
    assert asked.user_id == alice and "$5,000" in asked.text
    assert "blue" in (await slack.push(("U1", "slack"), "what's my color?")).text
    whoami = (await telegram.push("tg_789", "/whoami")).text
    assert "slack: U***" in whoami and "telegram: tg_…89" in whoami
    # Single use: the same code does nothing the second time.
    assert "not valid" in (await InMemoryChannel(engine, "discord").push(
        ("42", "discord"), f"/link {code}")).text
    # Codes never reach the session buffer.
    sessions = await engine.memory.sessions.list(alice)
    for session in sessions:
        assert all(code not in m.content for m in await engine.memory.sessions.buffer(session.id))


async def test_a_code_for_an_identifier_of_another_linked_user_changes_nothing(engine, identity,
                                                                              formation):
    slack, web = InMemoryChannel(engine, "slack"), InMemoryChannel(engine, "web")
    alice = (await slack.push(("U1", "slack"), "hi")).user_id
    bob = await identity.resolve(formation, "bob@x.co")
    await identity.associate(formation, ["bob-web"], user_id=bob)
    code = (await slack.push(("U1", "slack"), "/link")).text.split("send /link ")[1].split()[0]
    answer = (await web.push("bob-web", f"/link {code}")).text
    assert "nothing was changed" in answer
    assert await identity.resolve(formation, "bob-web") == bob
    assert [i.identifier for i in await identity.identifiers_of(formation, alice)] == ["U1"]


async def test_guessing_link_codes_is_rate_limited(engine):
    web = InMemoryChannel(engine, "web")
    for _ in range(5):
        assert "not valid" in (await web.push("eve@x.co", "/link WRONGCODE1")).text
    assert "Too many" in (await web.push("eve@x.co", "/link WRONGCODE1")).text


async def test_working_memory_is_bounded_in_count_and_age(engine):
    users = engine.memory.users
    web, slack = InMemoryChannel(engine, "web"), InMemoryChannel(engine, "slack")
    user = (await web.push("a@x.co", "hello")).user_id
    await engine.identity.associate(engine.formation, [("U1", "slack")], user_id=user)
    for i in range(30):
        await (web if i % 2 else slack).push("a@x.co" if i % 2 else ("U1", "slack"), f"hi {i}")
    items = await users.working(user)
    assert len(items) == users.working_limit
    assert {i.channel for i in items} == {"web", "slack"}  # cross-channel context
    stored = await users.db.fetchval("SELECT count(*) FROM working_memory WHERE user_id = $1",
                                     user)
    assert stored <= users.working_limit + 10
    users.working_max_age = 0.0
    assert await users.working(user) == []


async def test_a_longer_message_is_read_sentence_by_sentence(engine):
    web = InMemoryChannel(engine, "email")
    told = await web.push("a@x.co", "Hi,\n\nMy budget is $5,000. I prefer short answers.\n\nThanks")
    assert "$5,000" in told.text
    asked = await web.push("a@x.co", "Hello,\nWhat's my budget?\nBest, Alice")
    assert "$5,000" in asked.text
    about = (await web.push("a@x.co", "what do you know about me?")).text
    assert "short answers" in about


async def test_a_message_whose_turn_failed_is_answered_when_redelivered(engine):
    class FlakyStore:
        def __init__(self, real):
            self.real, self.fail = real, True

        def __getattr__(self, name):
            return getattr(self.real, name)

        async def resolve(self, *args, **kwargs):
            if self.fail:
                self.fail = False
                raise ConnectionError("database went away")
            return await self.real.resolve(*args, **kwargs)

    engine.identity = FlakyStore(engine.identity)
    web = InMemoryChannel(engine, "web")
    with pytest.raises(ConnectionError):
        await web.push("a@x.co", "my budget is $1", message_id="m-1")
    assert (await web.push("a@x.co", "my budget is $1", message_id="m-1")) is not None
    assert (await web.push("a@x.co", "my budget is $1", message_id="m-1")) is None


async def test_a_claim_left_by_a_dead_process_is_taken_over_after_the_lease(engine):
    claims, key = engine.memory.claims, MessageKey("f", "web", "m-9")
    first = await claims.claim(key)  # this process then dies
    assert first.state == "claimed"
    assert (await claims.claim(key)).state == "busy"  # within the lease
    second = await claims.claim(key, lease=0.0)  # after it
    assert second.state == "claimed" and second.token != first.token
    async with engine.memory.claims.db.transaction() as tx:
        with pytest.raises(ClaimLostError):  # the dead process's token no longer completes
            await claims.complete(tx, key, first.token, {"text": "late"}, sent=True)
    async with engine.memory.claims.db.transaction() as tx:
        await claims.complete(tx, key, second.token, {"text": "hi"}, sent=True)
    assert (await claims.claim(key, lease=0.0)).state == "sent"


async def test_a_turn_slower_than_the_claim_lease_keeps_its_claim(engine):
    """A live turn renews its claim: a redelivery while the model is still answering gets
    nothing, however long that takes; only a dead process's claim runs out."""
    engine.memory.claims.lease = 0.3
    real, asked = engine.responder, []

    class Slow:
        name = "slow"

        async def respond(self, context, changes) -> Response:
            asked.append(context.text)
            await asyncio.sleep(1.0)  # more than three leases
            return await real.respond(context, changes)

    engine.responder = Slow()
    web = InMemoryChannel(engine, "web")
    first = asyncio.create_task(web.push("a@x.co", "my budget is $5", message_id="m-slow"))
    await asyncio.sleep(0.6)
    assert await web.push("a@x.co", "my budget is $5", message_id="m-slow") is None
    assert "$5" in (await first).text
    assert asked == ["my budget is $5"]  # one turn


async def test_a_turn_whose_claim_was_taken_over_writes_none_of_its_changes(engine):
    """Another process took the message over while the model was answering: this turn's
    facts, preferences, notes, messages and synopsis are all left unwritten."""
    web = InMemoryChannel(engine, "web")
    first = await web.push("a@x.co", "my budget is $5")  # the session exists from here
    real = engine.responder

    class TakenOver:
        name = "taken-over"

        async def respond(self, context, changes) -> Response:
            stolen.append(await claims.claim(key, lease=0.0))  # the other process's claim
            return await real.respond(context, changes)

    claims, key, stolen = engine.memory.claims, MessageKey(engine.formation, "web", "m-late"), []
    engine.responder = TakenOver()
    text = "my budget is $9. I prefer long answers. remember that the demo is on Friday"
    assert await web.push("a@x.co", text, message_id="m-late") is None
    engine.responder = real
    async with claims.db.transaction() as tx:  # the other process says its answer
        await claims.complete(tx, key, stolen[0].token, {"text": "theirs"}, sent=True)
    users = engine.memory.users
    assert (await users.get_fact(first.user_id, "budget")).value == "$5"
    assert [f.key for f in await users.facts(first.user_id, "preference")] == []
    assert await users.search_memories(first.user_id, "demo Friday") == []
    assert "long answers" not in await users.synopsis(first.user_id)
    buffer = await engine.memory.sessions.buffer(first.session_id)
    assert [m.content for m in buffer] == ["my budget is $5", first.text]


async def test_a_turn_whose_reply_was_never_said_is_said_on_redelivery_without_a_second_turn(
        engine):
    said = []

    async def lost(reply):
        raise ConnectionError("the platform went away before the reply was sent")

    async def send(reply):
        said.append(reply.text)

    message = InboundMessage("web", "a@x.co", "main", "my budget is $5,000", message_id="m-1")
    with pytest.raises(ConnectionError):
        await engine.handle(message, lost)
    again = await engine.handle(message, send)
    assert said == ["Got it: your budget is $5,000."] and again.text == said[0]
    assert await engine.handle(message, send) is None  # said now: a redelivery gets nothing
    buffer = await engine.memory.sessions.buffer(again.session_id)
    assert [m.content for m in buffer] == ["my budget is $5,000", said[0]]  # one turn


async def test_redeliveries_while_the_reply_is_being_sent_say_nothing(engine):
    said = []

    async def slow_send(reply):
        await asyncio.sleep(0.3)  # the platform is slow to take the reply
        said.append(reply.text)

    message = InboundMessage("web", "a@x.co", "main", "my budget is 5", message_id="evt-9")
    first = asyncio.create_task(engine.handle(message, slow_send))
    await asyncio.sleep(0.15)  # the turn has committed; its reply is on the way
    others = await asyncio.gather(*(engine.handle(message, slow_send) for _ in range(10)))
    await first
    assert others == [None] * 10
    assert said == ["Got it: your budget is 5."]


async def test_a_replayed_request_gets_the_same_reply(engine):
    message = InboundMessage("api", "a@x.co", "api:a", "my budget is $5,000",
                             message_id="key-1", replay=True)
    first = await engine.handle(message)
    second = await engine.handle(replace(message, text="something else entirely"))
    assert second == first
    assert len(await engine.memory.sessions.buffer(first.session_id)) == 2


async def test_start_greets_and_explains_linking(engine):
    reply = await InMemoryChannel(engine, "telegram").push(("42", "telegram"), "/start")
    assert "/link" in reply.text and "help" in reply.text
    assert (await InMemoryChannel(engine, "telegram").push(
        ("42", "telegram"), "/start ref-campaign", message_id="t-2")).text == reply.text


async def test_fifty_parallel_wrong_codes_get_at_most_five_tries(engine, formation):
    user = await engine.identity.resolve(formation, ("77", "telegram"))
    ident = engine.identity.parse(("77", "telegram"))
    outcomes = await asyncio.gather(*(
        engine.linker.redeem(formation, ident, user, f"WRONGCODE{n:02d}") for n in range(50)))
    statuses = [o.status for o in outcomes]
    assert statuses.count("invalid") == 5 and statuses.count("limited") == 45
    tries = await engine.memory.users.db.fetchval(
        "SELECT count(*) FROM link_attempts WHERE formation_id = $1", formation)
    assert tries == 5


async def test_a_code_redeemed_twice_at_once_links_once(engine, formation):
    owner = await engine.identity.resolve(formation, "owner@x.co")
    code = await engine.linker.issue(formation, owner)
    takers = [("801", "telegram"), ("802", "telegram")]
    users = [await engine.identity.resolve(formation, t) for t in takers]
    outcomes = await asyncio.gather(*(
        engine.linker.redeem(formation, engine.identity.parse(t), u, code)
        for t, u in zip(takers, users, strict=True)))
    assert sorted(o.status for o in outcomes) == ["invalid", "linked"]
    linked = await engine.identity.identifiers_of(formation, owner)
    assert len(linked) == 2  # the owner and exactly one taker


async def test_a_new_link_is_told_to_the_accounts_other_channels_and_unlink_works_there(
        engine, formation):
    web, slack, telegram = (InMemoryChannel(engine, name)
                            for name in ("web", "slack", "telegram"))
    alice = (await web.push("alice@x.co", "my budget is $5,000")).user_id
    await engine.identity.associate(formation, [("U1", "slack")], user_id=alice)
    await slack.push(("U1", "slack"), "hi", conversation="D1")
    code_text = (await web.push("alice@x.co", "/link")).text
    code = code_text.split("send /link ")[1].split()[0]
    linked = await telegram.push(("606", "telegram"), f"/link {code}")
    assert linked.text.startswith("Linked!") and linked.user_id == alice
    registry = ChannelRegistry()
    for channel in (web, slack, telegram):
        registry.add(channel)
    assert await Scheduler(engine.memory, registry, formation=formation).run_once() == 2
    notices = {m.channel: m.text for m in web.outbox + slack.outbox if "was just linked" in m.text}
    assert set(notices) == {"web", "slack"} and "tg_" in notices["slack"]
    assert not [m for m in telegram.outbox if "was just linked" in m.text]
    # "This wasn't me": from Slack, the Telegram identifier is removed.
    listing = (await slack.push(("U1", "slack"), "/unlink", conversation="D1")).text
    number = next(line.split(".")[0] for line in listing.splitlines() if "telegram" in line)
    done = await slack.push(("U1", "slack"), f"/unlink {number}", conversation="D1")
    assert done.text.startswith("Unlinked telegram")
    assert await engine.owner(("606", "telegram")) is None
    assert "$5,000" not in (await telegram.push(("606", "telegram"), "what's my budget?")).text


async def test_a_link_code_is_never_kept_with_the_messages_claim(engine, db):
    reply = await InMemoryChannel(engine, "web").push("a@x.co", "/link", message_id="l-1")
    code = reply.text.split("send /link ")[1].split()[0]
    for table in ("processed_messages", "session_messages", "working_memory"):
        rows = await db.fetch(f"SELECT * FROM {table}")
        assert not [r for r in rows if code in repr(tuple(r))], table


async def test_the_offline_assistant_reads_places_and_updates(engine):
    web = InMemoryChannel(engine, "web")
    assert (await web.push("a@x.co", "I live in Berlin")).text == "Got it: you live in Berlin."
    assert (await web.push("a@x.co", "where do I live?")).text == "You live in Berlin."
    await web.push("a@x.co", "my budget is $5,000")
    await web.push("a@x.co", "my budget is now $6,000")
    assert "$6,000" in (await web.push("a@x.co", "what's my budget?")).text
    mixed = await web.push("a@x.co", "I like that idea but what is my budget?")
    assert "$6,000" in mixed.text
    assert "that idea" not in (await web.push("a@x.co", "what do you know about me?")).text
    assert "Canadian" not in (await web.push("a@x.co", "I'm Canadian")).text.split(",")[0]
    assert (await engine.memory.users.get_fact(mixed.user_id, "name")) is None


async def test_memories_are_found_by_stemmed_words_and_only_the_users_own(engine, formation):
    web = InMemoryChannel(engine, "web")
    alice = (await web.push("alice@x.co", "remember that the demo is on Friday")).user_id
    await web.push("alice@x.co", "remember that my sister lives in Lyon")
    await web.push("alice@x.co", "remember that I am allergic to peanuts")
    bob = (await web.push("bob@x.co", "remember that the demos were cancelled")).user_id
    users = engine.memory.users
    found = await users.search_memories(alice, "when are the demos?")
    assert [m.content for m in found] == ["the demo is on Friday"]  # demos ~ demo
    assert [m.content for m in await users.search_memories(alice, "peanut")] == [
        "I am allergic to peanuts"]
    assert await users.search_memories(alice, "cancelled") == []  # Bob's, not hers
    assert len(await users.search_memories(bob, "demo")) == 1
    assert await users.search_memories(alice, '" OR NOT * (') == []  # no query syntax


async def test_a_platform_message_with_a_nul_byte_is_answered(engine):
    reply = await InMemoryChannel(engine, "telegram").push(("5", "telegram"),
                                                           "my color is te\x00al")
    assert reply.text == "Got it: your color is teal."
