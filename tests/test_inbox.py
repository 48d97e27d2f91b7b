"""The durable inbox: a Slack event is kept before Slack hears 200, so when the replica that
acknowledged it dies before answering, another replica answers it, once."""

import asyncio

from gateway.conversation.channels import ChannelRegistry
from gateway.conversation.engine import Engine
from gateway.conversation.inbox import InboxWorker
from gateway.conversation.messages import InboundMessage
from gateway.conversation.responders.offline import OfflineResponder
from memory.claims import MessageKey
from tests.test_slack import fixture, peer, running  # noqa: F401  (peer is a fixture)


async def test_an_acknowledged_event_whose_replica_died_is_answered_by_another_once(
        engine, peer):  # noqa: F811
    async with running(engine, peer) as dying:
        await asyncio.sleep(0.2)  # its auth.test has told it who the bot is

        async def died(*_args, **_kwargs) -> None:  # acknowledged, then the process was gone
            return None

        dying.adapter._answer = died
        answer = await dying.send(fixture("message_im", event_id="Ev0INBOX0001"))
        assert answer.status_code == 200  # Slack was told "200": it will not send it again
    assert peer.posted == []  # nobody answered

    # Another replica: its own engine and Slack channel on the same database.
    other = Engine(engine.identity, engine.memory, OfflineResponder(),
                   formation=engine.formation)
    async with running(other, peer) as alive:
        channels = ChannelRegistry()
        channels.add(alive.adapter)
        worker = InboxWorker(other, channels, grace=0.0)
        assert await worker.run_once() == 1
        [posted] = await peer.wait_posted(1)
        assert posted["channel"] == "D0123DMCH" and "$5,000" in posted["text"]
        assert await worker.run_once() == 0  # answered once
        # Slack sending it again after all: still no second answer.
        assert (await alive.send(fixture("message_im", event_id="Ev0INBOX0001"))
                ).status_code == 200
        await asyncio.sleep(0.5)
        assert len(peer.posted) == 1


async def test_a_kept_message_waits_out_its_grace_and_is_cleared_once_said(engine):
    claims = engine.memory.claims
    # A channel of this test's own: the shared database holds other tests' messages.
    channel = f"web-{engine.formation}"
    message = InboundMessage(channel=channel, identifier="inbox@x.co", conversation="c1",
                             text="my budget is $9", message_id="m-1")
    assert await engine.accept(message) is True
    assert await engine.accept(message) is False  # a redelivery is known
    assert await claims.due(grace=60, channels=[channel]) == []  # its replica is on it
    [waiting] = await claims.due(grace=0, channels=[channel])
    assert waiting["text"] == "my budget is $9" and waiting["identifier"] == "inbox@x.co"
    said = []

    async def send(reply) -> None:
        said.append(reply.text)

    assert await engine.handle(message, send) is not None
    assert said and await claims.due(grace=0, channels=[channel]) == []
    stored = await claims.db.fetchval(
        "SELECT payload FROM processed_messages WHERE formation_id = $1 AND message_id = $2",
        *MessageKey(engine.formation, channel, "m-1").args[::2])
    assert stored is None  # said: the message is kept no longer


async def test_a_telegram_webhook_update_acknowledged_by_a_dead_replica_is_answered_once(
        engine):
    import adapters.telegram as module
    from tests.peers.telegram import TOKEN, TelegramPeer
    from tests.test_telegram import post_update, private, webhook

    telegram = TelegramPeer()
    await telegram.start()
    try:
        async with webhook(engine, telegram) as url:
            async def died(*_args, **_kwargs) -> None:  # acknowledged, then the process was gone
                return None

            original = module.TelegramAdapter._answer
            module.TelegramAdapter._answer = died
            try:
                answer = await post_update(url, private("my budget is $5,000", 501))
                assert answer.status_code == 200
                await asyncio.sleep(0.3)
            finally:
                module.TelegramAdapter._answer = original
        assert telegram.sent == []

        other = Engine(engine.identity, engine.memory, OfflineResponder(),
                       formation=engine.formation)
        async with webhook(other, telegram):
            channels = ChannelRegistry()
            adapter = module.create({"token": TOKEN, "api_url": telegram.url}, other)
            channels.add(adapter)
            worker = InboxWorker(other, channels, grace=0.0)
            assert await worker.run_once() == 1
            [said] = await telegram.wait_sent(1)
            assert "$5,000" in said["text"] and str(said["chat_id"]) == "4242"
            assert await worker.run_once() == 0
    finally:
        await telegram.stop()


async def test_messages_no_replica_can_say_do_not_hold_up_the_others(engine):
    claims = engine.memory.claims
    for n in range(60):  # more than one round takes
        await engine.accept(InboundMessage(channel="cli", identifier="t@x.co",
                                           conversation="c", text="hi", message_id=f"c{n}"))
    await engine.accept(InboundMessage(channel="web", identifier="w@x.co", conversation="c",
                                       text="hello", message_id="w1",
                                       formation=engine.formation))
    waiting = await claims.due(grace=0, channels=["web", "slack"], limit=1000)
    # (a database shared by the tests: only this one's formation is looked at)
    assert [p["message_id"] for p in waiting if p["formation"] == engine.formation] == ["w1"]
    assert await claims.due(grace=0, channels=[]) == []


async def test_a_kept_message_that_cannot_be_read_is_skipped_not_a_blocker(engine):
    claims = engine.memory.claims
    await engine.accept(InboundMessage(channel="web", identifier="w@x.co", conversation="c",
                                       text="hello", message_id="ok-1",
                                       formation=engine.formation))
    await claims.db.execute(
        "INSERT INTO processed_messages (formation_id, channel, message_id, created_at,"
        " status, payload) VALUES ($1, 'web', 'bad-1', 0, 'queued', '{not json')",
        engine.formation)
    mine = [p["message_id"] for p in await claims.due(grace=0, channels=["web"], limit=1000)
            if p["formation"] == engine.formation]
    assert mine == ["ok-1"]


class _Failing:
    """An identity service whose next `failures` resolves fail, as a bug or a lost
    connection would fail a turn while the database itself is up."""

    def __init__(self, real, failures: int) -> None:
        self.real, self.failures = real, failures

    def __getattr__(self, name):
        return getattr(self.real, name)

    async def resolve(self, *args, **kwargs):
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("the turn broke")
        return await self.real.resolve(*args, **kwargs)


async def test_a_kept_message_whose_turn_failed_goes_back_to_the_inbox_and_is_answered(engine):
    """Acknowledged to its platform, so nobody will send it again: a failed turn must not
    lose it. It is tried again from the inbox, and answered once; a page that closed
    meanwhile finds the answer in its transcript."""
    channel = f"web-{engine.formation}"  # the shared database holds other tests' messages
    message = InboundMessage(channel=channel, identifier="again@x.co", conversation="c1",
                             text="my budget is $11", message_id="m-again")
    assert await engine.accept(message)
    engine.identity = _Failing(engine.identity, failures=1)
    try:
        await engine.handle(message, None)
    except RuntimeError:
        pass
    [waiting] = await engine.memory.claims.due(grace=0, channels=[channel])
    assert waiting["message_id"] == "m-again"
    registry = ChannelRegistry()

    class Closed:  # a live channel whose page is gone: what it is told waits in the transcript
        name = channel

        def can_reach(self, user_id, conversation) -> bool:
            return False

        async def deliver(self, outbound) -> None:
            from gateway.conversation.live import NobodyListeningError

            raise NobodyListeningError("nobody is listening")

    registry.add(Closed())
    worker = InboxWorker(engine, registry, grace=0)
    assert await worker.run_once() == 1
    assert await worker.run_once() == 0  # said (to the transcript): not tried again
    user = await engine.owner("again@x.co")
    assert (await engine.memory.users.get_fact(user, "budget")).value == "$11"


async def test_a_kept_message_that_always_fails_is_given_up_after_a_few_turns(engine):
    from memory.claims import TURN_ATTEMPTS

    channel = f"web-{engine.formation}"
    message = InboundMessage(channel=channel, identifier="never@x.co", conversation="c1",
                             text="hello", message_id="m-never")
    assert await engine.accept(message)
    engine.identity = _Failing(engine.identity, failures=1000)
    for _ in range(TURN_ATTEMPTS):
        [waiting] = await engine.memory.claims.due(grace=0, channels=[channel])
        try:
            await engine.handle(message, None)
        except RuntimeError:
            pass
    assert await engine.memory.claims.due(grace=0, channels=[channel]) == []
