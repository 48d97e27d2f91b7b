"""The email channel end to end: a real IMAP server (Dovecot) and a real SMTP server (aiosmtpd)
on 127.0.0.1, the real client libraries, and the engine on SQLite and PostgreSQL.

Inbound mail is seeded with IMAP APPEND, carrying the Authentication-Results header our
receiving server ("mx.threadline.test") would have added.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import parseaddr
from types import SimpleNamespace
from typing import Any

import pytest

from adapters.email import EmailAdapter, EmailSettings, create
from adapters.email_parse import parse_bytes
from adapters.inmemory import InMemoryChannel
from gateway.conversation.channels import ChannelRegistry
from gateway.conversation.messages import OutboundMessage
from gateway.conversation.scheduler import Scheduler
from gateway.runtime.supervisor import AdapterConfigError
from memory.claims import MessageKey

# The `dovecot` and `smtp_server` fixtures live beside the servers they run.
pytest_plugins = ("tests.peers.imap", "tests.peers.smtp")
pytest.register_assert_rewrite(*pytest_plugins)

from tests.peers.imap import DovecotServer, skip_without_dovecot  # noqa: E402
from tests.peers.smtp import Received, SmtpServer  # noqa: E402

BOT = "assistant@threadline.test"
US = "mx.threadline.test"
WAIT = 20.0  # seconds any single wait may take before the test fails

# The SMTP peer takes AUTH over plain text on purpose (tests have no TLS).
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


class GatewayCrash(BaseException):
    """The gateway process dying at one exact point (not an error anything may catch)."""


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture
def imap_user() -> str:
    """The bot's mailbox for this test: Dovecot accepts any user name, one maildir each."""
    return f"bot-{uuid.uuid4().hex[:10]}"


def config(dovecot: DovecotServer, user: str, smtp: SmtpServer, **overrides: Any
           ) -> dict[str, Any]:
    return {
        "imap_host": dovecot.host, "imap_port": dovecot.port, "imap_user": user,
        "imap_password": dovecot.password, "smtp_host": smtp.host, "smtp_port": smtp.port,
        "smtp_user": smtp.user, "smtp_password": smtp.password, "smtp_tls": "none",
        "address": BOT, "authserv_id": US, "poll_interval": 0.2, "timeout": 10,
        **overrides,
    }


def mail(sender: str, text: str, *, subject: str = "Question", message_id: str | None = None,
         in_reply_to: str | None = None, references: list[str] | None = None,
         auth: str | None = "pass", return_path: str | None = None,
         headers: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A message as our receiving server would have stored it; and its Message-ID."""
    domain = parseaddr(sender)[1].rpartition("@")[2].lower()
    message_id = message_id or f"<{uuid.uuid4().hex}@{domain}>"
    message = EmailMessage()
    message["Return-Path"] = return_path or f"<{sender}>"
    if auth == "pass":
        message["Authentication-Results"] = (
            f"{US}; dkim=pass header.d={domain} header.s=s1; spf=pass smtp.mailfrom={domain};"
            f" dmarc=pass (p=REJECT) header.from={domain}")
    elif auth is not None:
        message["Authentication-Results"] = auth
    message["From"] = sender
    message["To"] = BOT
    message["Subject"] = subject
    message["Date"] = "Tue, 12 Mar 2024 10:00:00 +0000"
    message["Message-ID"] = message_id
    if in_reply_to:
        message["In-Reply-To"] = in_reply_to
    if references:
        message["References"] = " ".join(references)
    for name, value in (headers or {}).items():
        message[name] = value
    message.set_content(text)
    return message.as_bytes(policy=SMTP), message_id


async def seed(dovecot: DovecotServer, user: str, *raws: bytes) -> None:
    imap = await dovecot.client(user, mailbox=None)
    try:
        for raw in raws:
            response = await imap.append(raw, mailbox="INBOX")
            assert response.result == "OK", response
    finally:
        await imap.logout()


async def mailbox(dovecot: DovecotServer, user: str, name: str = "INBOX"
                  ) -> list[tuple[set[str], EmailMessage]]:
    """Every message of a mailbox with its flags (read without changing them)."""
    imap = await dovecot.client(user, mailbox=None)
    try:
        response = await imap.select(f'"{name}"')
        if response.result != "OK":
            return []
        response = await imap.fetch("1:*", "(FLAGS BODY.PEEK[])")
        found: list[tuple[set[str], EmailMessage]] = []
        flags: set[str] = set()
        for line in response.lines:
            if isinstance(line, bytearray):
                found.append((flags, parse_bytes(bytes(line))))
            elif b"FLAGS (" in line:
                flags = set(line.split(b"FLAGS (")[1].split(b")")[0].decode().split())
        return found
    finally:
        await imap.logout()


async def eventually(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll an async check until it returns something true, at most `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = await check()
                if result:
                    return result
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def wait_seen(dovecot: DovecotServer, user: str, message_ids: list[str]) -> None:
    async def all_seen() -> bool:
        flags = {str(m["Message-ID"]): f for f, m in await mailbox(dovecot, user)}
        return all("\\Seen" in flags.get(mid, set()) for mid in message_ids)

    await eventually(all_seen, f"{len(message_ids)} message(s) to be marked \\Seen")


@contextlib.asynccontextmanager
async def running(adapter: EmailAdapter) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(adapter.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


def reply_to(received: list[Received], message_id: str) -> list[Received]:
    return [r for r in received if r.message["In-Reply-To"] == message_id]


# -- answering from the shared memory ---------------------------------------------------------


async def test_an_emailed_question_is_answered_from_memory_in_the_same_thread(
        engine, dovecot, smtp_server, imap_user):
    web = InMemoryChannel(engine, "web")
    told = await web.push("alice@acme.com", "my budget is $5,000")

    question, question_id = mail("Alice <Alice@ACME.com>", "What's my budget?\n\n-- \nAlice\n",
                                 subject="Budget")
    await seed(dovecot, imap_user, question)
    adapter = create(config(dovecot, imap_user, smtp_server), engine)
    async with running(adapter):
        [answer] = await smtp_server.wait_for(1)
        assert answer.rcpt_tos == ["alice@acme.com"] and answer.mail_from == BOT
        reply = answer.message
        assert "$5,000" in answer.text
        assert reply["Subject"] == "Re: Budget"
        assert reply["In-Reply-To"] == question_id
        assert reply["References"] == question_id
        assert reply["Auto-Submitted"] == "auto-replied"
        assert reply["From"] == BOT
        await wait_seen(dovecot, imap_user, [question_id])

        # Alice answers in the thread, quoting us: same session, quotes not taken as words.
        follow_up, follow_up_id = mail(
            "alice@acme.com",
            "my color is teal\n\nOn Tue, Mar 12, 2024 at 10:02 AM Threadline wrote:\n"
            f"> {answer.text.strip()}\n",
            subject="Re: Budget", in_reply_to=str(reply["Message-ID"]),
            references=[question_id, str(reply["Message-ID"])])
        await seed(dovecot, imap_user, follow_up)
        second = (await smtp_server.wait_for(2))[1]
        assert second.message["In-Reply-To"] == follow_up_id
        assert second.message["References"] == (
            f"{question_id} {reply['Message-ID']} {follow_up_id}")
        assert second.message["Subject"] == "Re: Budget"
        await wait_seen(dovecot, imap_user, [question_id, follow_up_id])

    sessions = [s for s in await engine.memory.sessions.list(told.user_id)
                if s.channel == "email"]
    assert [s.conversation for s in sessions] == [question_id]  # one thread, one session
    turns = await engine.memory.sessions.buffer(sessions[0].id)
    assert [t.content for t in turns if t.role == "user"] == ["What's my budget?",
                                                              "my color is teal"]
    assert (await engine.memory.users.get_fact(told.user_id, "color")).value == "teal"
    # Our replies are kept, sent, in the replies mailbox.
    kept = await mailbox(dovecot, imap_user, "Threadline")
    assert len(kept) == 2 and all("\\Draft" not in flags for flags, _ in kept)


# -- spoofing ---------------------------------------------------------------------------------


FORGED_PASS = "mx.attacker.example; dmarc=pass header.from=acme.com; dkim=pass header.d=acme.com"


async def test_a_forged_sender_gets_a_note_and_never_the_users_memory(
        engine, dovecot, smtp_server, imap_user):
    web = InMemoryChannel(engine, "web")
    alice = (await web.push("alice@acme.com", "my budget is $5,000")).user_id
    forged, forged_id = mail("alice@acme.com", "What's my budget?", auth=FORGED_PASS)
    failed, failed_id = mail("alice@acme.com", "What's my budget?",
                             auth=f"{US}; dkim=fail header.d=acme.com; dmarc=fail "
                                  "header.from=acme.com")
    await seed(dovecot, imap_user, forged, failed)
    async with running(create(config(dovecot, imap_user, smtp_server), engine)):
        notes = await smtp_server.wait_for(2)
        await wait_seen(dovecot, imap_user, [forged_id, failed_id])
    assert {n.message["In-Reply-To"] for n in notes} == {forged_id, failed_id}
    for note in notes:
        assert note.rcpt_tos == ["alice@acme.com"]
        assert "could not verify" in note.text and "$5,000" not in note.text
        assert note.message["Auto-Submitted"] == "auto-replied"
    assert len(smtp_server.received()) == 2
    # The messages never reached Alice: no email session, nothing new in her memory.
    assert [s.channel for s in await engine.memory.sessions.list(alice)] == ["web"]
    for message_id in (forged_id, failed_id):  # never claimed: the engine never saw them
        key = MessageKey(engine.formation, "email", message_id)
        assert (await engine.memory.claims.claim(key)).state == "claimed"


async def test_a_forged_header_under_ours_cannot_link_a_strangers_account(
        engine, dovecot, smtp_server, imap_user):
    """The attack as found: a /link code sent from Telegram, redeemed by mail that claims to
    be from carol@acme.com with a pass written under our server's real fail."""
    web, telegram = InMemoryChannel(engine, "web"), InMemoryChannel(engine, "telegram")
    carol = (await web.push("carol@acme.com", "my budget is $9,000")).user_id
    code_text = (await telegram.push(("606", "telegram"), "/link")).text
    code = code_text.split("send /link ")[1].split()[0]
    forged, forged_id = mail("carol@acme.com", f"/link {code}", auth=None, headers={
        "Authentication-Results": f"{US}; dmarc=fail header.from=acme.com"})
    forged = forged.replace(
        b"From: carol@acme.com",
        f"Authentication-Results: {US}; dmarc=pass header.from=acme.com\r\n"
        "From: carol@acme.com".encode())
    bare, bare_id = mail("carol@acme.com", f"/link {code}", auth=f"{US}; dmarc=pass")
    await seed(dovecot, imap_user, forged, bare)
    async with running(create(config(dovecot, imap_user, smtp_server), engine)):
        notes = await smtp_server.wait_for(2)
        await wait_seen(dovecot, imap_user, [forged_id, bare_id])
    assert all("could not verify" in n.text for n in notes)
    attacker = await engine.owner(("606", "telegram"))
    assert attacker != carol  # nothing was joined
    assert [i.identifier for i in await engine.identity.identifiers_of(engine.formation,
                                                                       carol)] == [
        "carol@acme.com"]
    asked = await telegram.push(("606", "telegram"), "what's my budget?")
    assert "$9,000" not in asked.text


async def test_in_drop_mode_a_forged_sender_gets_nothing(engine, dovecot, smtp_server,
                                                         imap_user):
    web = InMemoryChannel(engine, "web")
    alice = (await web.push("alice@acme.com", "my budget is $5,000")).user_id
    forged, forged_id = mail("alice@acme.com", "What's my budget?", auth=FORGED_PASS)
    unsigned, unsigned_id = mail("alice@acme.com", "What's my budget?", auth=None)
    genuine, genuine_id = mail("alice@acme.com", "What's my budget?")
    await seed(dovecot, imap_user, forged, unsigned, genuine)
    adapter = create(config(dovecot, imap_user, smtp_server, unverified="drop"), engine)
    async with running(adapter):
        await wait_seen(dovecot, imap_user, [forged_id, unsigned_id, genuine_id])
    # Everything is seen, so everything was decided: only the genuine message got an answer.
    [answer] = smtp_server.received()
    assert answer.message["In-Reply-To"] == genuine_id and "$5,000" in answer.text
    sessions = [s for s in await engine.memory.sessions.list(alice) if s.channel == "email"]
    assert [s.conversation for s in sessions] == [genuine_id]


# -- machine mail -----------------------------------------------------------------------------


async def test_auto_replies_bounces_and_list_mail_get_no_answer(engine, dovecot, smtp_server,
                                                                imap_user):
    machine = [
        mail("alice@acme.com", "I am out of the office.", subject="Automatic reply: Budget",
             headers={"Auto-Submitted": "auto-replied"}),
        mail("MAILER-DAEMON@mx.acme.com", "Your message could not be delivered.",
             subject="Undelivered Mail Returned to Sender", return_path="<>"),
        mail("erin@acme.com", "what's my budget?", subject="[dev] budget",
             headers={"List-Id": "<dev.lists.acme.com>", "Precedence": "list"}),
        mail("bulk@acme.com", "what's my budget?", headers={"Precedence": "bulk"}),
        mail(BOT, "what's my budget?"),  # our own address: a loop in the making
    ]
    person, person_id = mail("alice@acme.com", "my budget is $5,000")
    await seed(dovecot, imap_user, *(raw for raw, _ in machine), person)
    async with running(create(config(dovecot, imap_user, smtp_server), engine)):
        await wait_seen(dovecot, imap_user, [mid for _, mid in machine] + [person_id])
    [answer] = smtp_server.received()
    assert answer.message["In-Reply-To"] == person_id


# -- nothing lost, nothing twice --------------------------------------------------------------


async def test_restarts_of_imap_and_gateway_lose_and_duplicate_nothing(
        engine, dovecot, smtp_server, imap_user):
    senders = [f"user{i}@acme.com" for i in range(8)]
    mails = [mail(senders[i], f"my number is {i}", subject=f"Number {i}") for i in range(8)]
    raws, ids = [raw for raw, _ in mails], [mid for _, mid in mails]
    settings = config(dovecot, imap_user, smtp_server)

    # 1. Two messages, answered as usual.
    first = create(settings, engine)
    await seed(dovecot, imap_user, raws[0], raws[1])
    task = asyncio.create_task(first.run())
    try:
        await smtp_server.wait_for(2)
        await wait_seen(dovecot, imap_user, ids[:2])

        # 2. The IMAP server goes away right after SMTP accepted the reply to message 2,
        #    before that reply could be flagged sent and the message \Seen.
        imap_gone = asyncio.Event()
        send = first._smtp_send

        async def send_then_imap_dies(data: bytes) -> None:
            await send(data)
            if b"Subject: Re: Number 2" in data:
                await asyncio.to_thread(dovecot.stop)
                imap_gone.set()

        first._smtp_send = send_then_imap_dies  # type: ignore[method-assign]
        await seed(dovecot, imap_user, raws[2])
        await asyncio.wait_for(imap_gone.wait(), WAIT)
        await asyncio.to_thread(dovecot.start)
        await wait_seen(dovecot, imap_user, ids[:3])
        assert len(smtp_server.received()) == 3

        # 3. The gateway dies after the engine answered message 3 (the turn and its reply
        #    committed) but before the reply was written anywhere: the restarted gateway
        #    gets the stored reply from the engine, not a second turn.
        async def die_before_storing(imap: Any, reply_id: str, data: bytes) -> Any:
            raise GatewayCrash

        first._store = die_before_storing  # type: ignore[method-assign]
        await seed(dovecot, imap_user, raws[3])
        with pytest.raises(GatewayCrash):
            await asyncio.wait_for(task, WAIT)
        second = create(settings, engine)  # a restarted gateway remembers nothing
        task = asyncio.create_task(second.run())
        await wait_seen(dovecot, imap_user, ids[:4])

        # 4. The gateway dies with the reply to message 4 stored as a draft, before SMTP.
        async def die_before_sending(data: bytes) -> None:
            raise GatewayCrash

        second._smtp_send = die_before_sending  # type: ignore[method-assign]
        await seed(dovecot, imap_user, raws[4])
        with pytest.raises(GatewayCrash):
            await asyncio.wait_for(task, WAIT)
        task = asyncio.create_task(create(settings, engine).run())
        await wait_seen(dovecot, imap_user, ids[:5])

        # 5. The gateway dies while the responder works on message 5: claimed, not answered.
        class DyingResponder:
            name = "dying"

            async def respond(self, context: Any, changes: Any) -> Any:
                raise GatewayCrash

        responder, engine.responder = engine.responder, DyingResponder()
        await seed(dovecot, imap_user, raws[5])
        with pytest.raises(GatewayCrash):
            await asyncio.wait_for(task, WAIT)
        engine.responder = responder
        task = asyncio.create_task(create(settings, engine).run())
        await wait_seen(dovecot, imap_user, ids[:6])

        # 6. The IMAP server restarts while the gateway waits in IDLE; then more mail.
        await asyncio.to_thread(dovecot.stop)
        await asyncio.to_thread(dovecot.start)
        await seed(dovecot, imap_user, raws[6], raws[7])
        await wait_seen(dovecot, imap_user, ids)
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        if not dovecot.running:
            dovecot.start()

    # Every message answered exactly once (all are \Seen, so nothing more is on its way).
    received = smtp_server.received()
    assert sorted(str(r.message["In-Reply-To"]) for r in received) == sorted(ids)
    for i, message_id in enumerate(ids):
        [answer] = reply_to(received, message_id)
        assert answer.rcpt_tos == [senders[i]]
        assert f"your number is {i}" in answer.text
    kept = await mailbox(dovecot, imap_user, "Threadline")
    assert sorted(str(m["In-Reply-To"]) for _, m in kept) == sorted(ids)
    assert all("\\Draft" not in flags for flags, _ in kept)
    # And every turn is in memory exactly once.
    for i, sender in enumerate(senders):
        user_id = await engine.identity.resolve(engine.formation, (sender, "email"),
                                                create=False)
        [session] = await engine.memory.sessions.list(user_id)
        turns = await engine.memory.sessions.buffer(session.id)
        assert [t.role for t in turns] == ["user", "assistant"], (i, turns)
        assert (await engine.memory.users.get_fact(user_id, "number")).value == str(i)


async def test_an_smtp_outage_delays_the_answer_without_losing_it(engine, dovecot,
                                                                  smtp_server, imap_user):
    smtp_server.stop()
    raw, message_id = mail("alice@acme.com", "my budget is $5,000")
    await seed(dovecot, imap_user, raw)
    async with running(create(config(dovecot, imap_user, smtp_server), engine)):
        async def drafted() -> bool:
            return any("\\Draft" in flags for flags, _ in
                       await mailbox(dovecot, imap_user, "Threadline"))

        await eventually(drafted, "the reply to be kept as a draft")
        [(flags, _)] = await mailbox(dovecot, imap_user)
        assert "\\Seen" not in flags  # not answered yet, so not seen
        smtp_server.start()
        [answer] = await smtp_server.wait_for(1)
        await wait_seen(dovecot, imap_user, [message_id])
    assert answer.message["In-Reply-To"] == message_id
    assert len(smtp_server.received()) == 1
    [(flags, _)] = await mailbox(dovecot, imap_user, "Threadline")
    assert "\\Draft" not in flags


# -- unprompted messages ----------------------------------------------------------------------


async def test_a_reminder_is_delivered_into_the_email_thread(engine, identity, dovecot,
                                                             smtp_server, imap_user):
    raw, message_id = mail("alice@acme.com", "remind me in 1 minute to stretch",
                           subject="Reminders")
    await seed(dovecot, imap_user, raw)
    adapter = create(config(dovecot, imap_user, smtp_server), engine)
    async with running(adapter):
        [answer] = await smtp_server.wait_for(1)
        await wait_seen(dovecot, imap_user, [message_id])
    user_id = await identity.resolve(engine.formation, ("alice@acme.com", "email"))
    registry = ChannelRegistry()
    registry.add(adapter)
    later = (await engine.memory.tasks.list(user_id))[0].next_run + 1
    scheduler = Scheduler(engine.memory, registry, formation=engine.formation)
    assert await scheduler.run_once(at=later) == 1

    reminder = (await smtp_server.wait_for(2))[1]
    assert reminder.rcpt_tos == ["alice@acme.com"]
    assert "⏰ Reminder: stretch" in reminder.text
    assert reminder.message["Subject"] == "Re: Reminders"
    assert reminder.message["In-Reply-To"] == answer.message["Message-ID"]
    assert reminder.message["References"] == f"{message_id} {answer.message['Message-ID']}"
    assert reminder.message["Auto-Submitted"] == "auto-generated"

    # Once the address is no longer Alice's, her thread is not written to.
    await identity.unlink(engine.formation, ("alice@acme.com", "email"))
    with pytest.raises(LookupError):
        await adapter.deliver(OutboundMessage("email", message_id, "hello", user_id))
    with pytest.raises(LookupError):
        await adapter.deliver(OutboundMessage("email", "<unknown@x>", "hello", user_id))
    assert len(smtp_server.received()) == 2


# -- transports and settings ------------------------------------------------------------------


async def test_a_server_without_idle_is_polled(engine, smtp_server, imap_user):
    skip_without_dovecot()
    no_idle = DovecotServer(extra_config="imap_capability = IMAP4rev1 LITERAL+ SASL-IR ID "
                                         "ENABLE UIDPLUS MOVE\n")
    await asyncio.to_thread(no_idle.start)
    try:
        raw, message_id = mail("alice@acme.com", "my budget is $5,000")
        adapter = create(config(no_idle, imap_user, smtp_server), engine)
        assert "polling every 0.2s" in await adapter.check()
        async with running(adapter):
            await asyncio.sleep(0.5)  # the adapter is polling an empty mailbox by now
            await seed(no_idle, imap_user, raw)
            [answer] = await smtp_server.wait_for(1)
            await wait_seen(no_idle, imap_user, [message_id])
        assert answer.message["In-Reply-To"] == message_id
    finally:
        await asyncio.to_thread(no_idle.close)


async def test_check_logs_in_to_both_servers(engine, dovecot, smtp_server, imap_user):
    line = await create(config(dovecot, imap_user, smtp_server), engine).check()
    assert line.startswith(f"imap {imap_user}@127.0.0.1:{dovecot.port} ok (INBOX: 0 unseen, "
                           "IDLE); smtp 127.0.0.1:")
    assert smtp_server.logins == ["threadline"]


async def test_a_refused_smtp_login_names_the_setting(engine, dovecot, smtp_server, imap_user):
    adapter = create(config(dovecot, imap_user, smtp_server, smtp_password="wrong"), engine)
    with pytest.raises(AdapterConfigError, match="smtp_password"):
        await adapter.check()
    raw, _ = mail("alice@acme.com", "my budget is $5,000")
    await seed(dovecot, imap_user, raw)
    with pytest.raises(AdapterConfigError, match="smtp_password"):
        await asyncio.wait_for(adapter.run(), WAIT)
    [(flags, _)] = await mailbox(dovecot, imap_user)
    assert "\\Seen" not in flags  # kept for when the password is fixed
    assert smtp_server.received() == []


@pytest.mark.parametrize("action", ["check", "run"])
async def test_a_refused_imap_login_names_the_setting(action, smtp_server, imap_user):
    skip_without_dovecot()
    # A server of its own: Dovecot slows down logins from an address that failed one.
    server = DovecotServer()
    await asyncio.to_thread(server.start)
    try:
        settings = config(server, imap_user, smtp_server, imap_password="wrong")
        adapter = create(settings, SimpleNamespace(formation="f"))  # type: ignore[arg-type]
        with pytest.raises(AdapterConfigError, match="imap_password"):
            await asyncio.wait_for(getattr(adapter, action)(), WAIT)
    finally:
        await asyncio.to_thread(server.close)


REQUIRED = {"imap_host": "h", "imap_user": "u", "imap_password": "p", "smtp_host": "h",
            "address": BOT, "authserv_id": US}


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_a_missing_setting_is_named(missing):
    settings = {k: v for k, v in REQUIRED.items() if k != missing}
    with pytest.raises(AdapterConfigError, match=missing):
        EmailSettings.from_config(settings)


@pytest.mark.parametrize("key, value", [
    ("smtp_tls", "ssl"), ("unverified", "ignore"), ("imap_ssl", "maybe"), ("poll_interval", 0),
    ("imap_port", "imap"), ("address", "not an address"), ("smtp_user", "only-the-user"),
])
def test_a_wrong_setting_is_named(key, value):
    with pytest.raises(AdapterConfigError, match=key):
        EmailSettings.from_config({**REQUIRED, key: value})


def test_defaults_and_secrets():
    settings = EmailSettings.from_config({**REQUIRED, "imap_ssl": True, "smtp_tls": "tls",
                                          "smtp_user": "u", "smtp_password": "hunter2secret"})
    assert (settings.imap_port, settings.smtp_port) == (993, 465)
    assert (settings.mailbox, settings.unverified, settings.poll_interval) == ("INBOX", "reply",
                                                                              60.0)
    assert "hunter2secret" not in repr(settings) and "'p'" not in repr(settings)
    plain = EmailSettings.from_config(REQUIRED)
    assert (plain.imap_port, plain.smtp_port, plain.smtp_tls) == (143, 587, "starttls")
