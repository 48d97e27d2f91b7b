"""The email channel: IMAP in (IDLE, or polling where the server lacks it), SMTP out.

One email thread is one session (the conversation key is the thread's root Message-ID); the
sender's address, lowercased, is the identifier, so it reaches the user who owns that address
on every channel. Only senders our receiving server vouched for (Authentication-Results from
`authserv_id`: dmarc=pass, or an aligned dkim=pass) reach their user; the others get a short
note or nothing. Machine mail (auto-replies, bounces, lists) is never answered.

Settings (the `channels.email` section): imap_host, imap_port (993 with imap_ssl, else 143),
imap_user, imap_password, imap_ssl (false), smtp_host, smtp_port (465/587/25 by smtp_tls),
smtp_user, smtp_password (both or neither), smtp_tls ("starttls" | "tls" | "none"),
address (our From), mailbox ("INBOX"), replies_mailbox ("Threadline"), authserv_id,
unverified ("reply" | "drop"), poll_interval (60 s), idle (true), timeout (30 s), formation.

Nothing lost, nothing answered twice. The mailbox itself is the durable state, next to the
engine's claim on the Message-ID:
  1. a message is new while it is not \\Seen in `mailbox`;
  2. its reply gets a Message-ID derived from the message's own, and is kept in
     `replies_mailbox` flagged \\Draft before it is sent; after SMTP accepts it the flag goes,
     and only then is the message marked \\Seen;
  3. so for each unseen message, a reply copy without \\Draft means "already answered" (mark
     seen), a copy with \\Draft means "answered, not sent" (send it), no copy means "not yet
     answered": ask the engine, which claims the Message-ID. Its turn commits with the reply
     kept beside the claim, and "saying" the reply is step 2; so if we stopped between the
     two, the engine hands back the stored reply instead of running a second turn.
The one window left is between SMTP accepting a reply and the IMAP flag change: a crash
exactly there sends that reply again, with the same Message-ID (clients collapse it). While
the process lives, an IMAP outage there is covered by remembering what was sent.
Assumes one gateway process reads a mailbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import re
import ssl
import uuid
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from email.utils import getaddresses
from typing import Any, TypeVar

import aioimaplib
import aiosmtplib
import structlog

from adapters.email_parse import (
    ParsedEmail,
    all_headers,
    compose,
    first_message_id,
    header,
    message_ids,
    parse_bytes,
    read,
    reply_references,
    reply_subject,
)
from gateway.conversation.messages import InboundMessage, OutboundMessage, Reply
from gateway.conversation.ports import QUIET, AdapterConfigError, Conversations, Ready
from identity.identifiers import is_email

log = structlog.get_logger("threadline.email")

T = TypeVar("T")

UNVERIFIED_NOTE = (
    "We could not verify that this message really comes from {address}, so it was not "
    "passed on. If you sent it, please write from a mail provider that signs its mail "
    "(DKIM/DMARC), or reach us on another channel."
)
_SMTP_PORTS = {"tls": 465, "starttls": 587, "none": 25}
_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")


# -- settings ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EmailSettings:
    imap_host: str
    imap_port: int
    imap_user: str
    imap_password: str = field(repr=False)
    imap_ssl: bool = False
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    smtp_tls: str = "starttls"
    address: str = ""
    mailbox: str = "INBOX"
    replies_mailbox: str = "Threadline"
    authserv_id: str = ""
    unverified: str = "reply"
    poll_interval: float = 60.0
    idle: bool = True
    timeout: float = 30.0
    formation: str | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EmailSettings:
        def text(key: str, default: str | None = None) -> str:
            value = config.get(key, default)
            if value is None or str(value).strip() == "":
                raise AdapterConfigError(f"channels.email.{key} is required")
            return str(value).strip()

        def number(key: str, default: float) -> float:
            try:
                value = float(config.get(key, default))
            except (TypeError, ValueError):
                raise AdapterConfigError(f"channels.email.{key} must be a number") from None
            if value <= 0:
                raise AdapterConfigError(f"channels.email.{key} must be positive")
            return value

        def flag(key: str, default: bool) -> bool:
            value = config.get(key, default)
            if isinstance(value, str) and value.lower() in {"true", "yes", "1", "false", "no", "0"}:
                return value.lower() in {"true", "yes", "1"}
            if not isinstance(value, bool):
                raise AdapterConfigError(f"channels.email.{key} must be true or false")
            return value

        def choice(key: str, default: str, allowed: tuple[str, ...]) -> str:
            value = str(config.get(key, default)).strip().lower()
            if value not in allowed:
                raise AdapterConfigError(
                    f"channels.email.{key} must be one of {', '.join(allowed)} (got {value!r})")
            return value

        imap_ssl = flag("imap_ssl", False)
        smtp_tls = choice("smtp_tls", "starttls", ("starttls", "tls", "none"))
        smtp_user, smtp_password = config.get("smtp_user"), config.get("smtp_password")
        if bool(smtp_user) != bool(smtp_password):
            given, missing = (("smtp_user", "smtp_password") if smtp_user
                              else ("smtp_password", "smtp_user"))
            raise AdapterConfigError(f"channels.email.{missing} is required with {given}")
        address = text("address").lower()
        if not is_email(address):
            raise AdapterConfigError(f"channels.email.address: {address!r} is not an address")
        return cls(
            imap_host=text("imap_host"),
            imap_port=int(number("imap_port", 993 if imap_ssl else 143)),
            imap_user=text("imap_user"),
            imap_password=text("imap_password"),
            imap_ssl=imap_ssl,
            smtp_host=text("smtp_host"),
            smtp_port=int(number("smtp_port", _SMTP_PORTS[smtp_tls])),
            smtp_user=str(smtp_user) if smtp_user else None,
            smtp_password=str(smtp_password) if smtp_password else None,
            smtp_tls=smtp_tls,
            address=address,
            mailbox=text("mailbox", "INBOX"),
            replies_mailbox=text("replies_mailbox", "Threadline"),
            authserv_id=text("authserv_id").lower(),
            unverified=choice("unverified", "reply", ("reply", "drop")),
            poll_interval=number("poll_interval", 60.0),
            idle=flag("idle", True),
            timeout=number("timeout", 30.0),
            formation=str(config["formation"]) if config.get("formation") else None,
        )


# -- IMAP -------------------------------------------------------------------------------------


class ImapError(Exception):
    """The IMAP server refused a command or went away; the channel reconnects."""


class _Rejected(Exception):
    """The SMTP server refused this one message for good (5xx): it will not be retried."""


# Connection trouble: the channel reconnects with backoff instead of failing.
_TRANSIENT = (OSError, EOFError, ImapError, aioimaplib.AioImapException,
              aiosmtplib.SMTPException)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Imap:
    """One logged-in IMAP connection. Every command fails at once when the connection drops
    (aioimaplib alone would wait for its timeout)."""

    def __init__(self, settings: EmailSettings) -> None:
        self.settings = settings
        self.lost = asyncio.Event()
        self.client: aioimaplib.IMAP4 | None = None
        self.selected: str | None = None

    async def open(self) -> None:
        s = self.settings
        context = ssl.create_default_context() if s.imap_ssl else None
        self.client = aioimaplib.IMAP4(s.imap_host, s.imap_port, timeout=s.timeout,
                                       conn_lost_cb=lambda exc: self.lost.set(),
                                       ssl_context=context)
        await self._run(self.client.wait_hello_from_server())
        response = await self._run(self.client.login(s.imap_user, s.imap_password))
        if response.result != "OK":
            detail = b" ".join(response.lines).decode(errors="replace")
            if "UNAVAILABLE" in detail or "SERVERBUG" in detail:
                raise ImapError(f"IMAP login failed for now: {detail}")
            raise AdapterConfigError(
                f"channels.email.imap_password: the IMAP server refused the login of "
                f"{s.imap_user!r} ({detail})")

    async def _run(self, awaitable: Awaitable[T]) -> T:
        if self.lost.is_set():
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise ImapError("IMAP connection lost")
        task = asyncio.ensure_future(awaitable)
        lost = asyncio.ensure_future(self.lost.wait())
        try:
            done, _ = await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            lost.cancel()
        if task not in done:
            task.cancel()
            raise ImapError("IMAP connection lost")
        return task.result()

    async def command(self, name: str, awaitable: Awaitable[Any]) -> Any:
        response = await self._run(awaitable)
        if response.result != "OK":
            detail = b" ".join(bytes(line) for line in response.lines).decode(errors="replace")
            raise ImapError(f"IMAP {name} failed: {response.result} {detail}")
        return response

    @property
    def imap(self) -> aioimaplib.IMAP4:
        assert self.client is not None
        return self.client

    def has(self, capability: str) -> bool:
        return self.imap.has_capability(capability)

    async def select(self, mailbox: str) -> None:
        if self.selected == mailbox:
            return
        self.selected = None
        response = await self._run(self.imap.select(_quote(mailbox)))
        if response.result != "OK":
            detail = b" ".join(bytes(line) for line in response.lines).decode(errors="replace")
            if "UNAVAILABLE" in detail or "INUSE" in detail or "SERVERBUG" in detail:
                raise ImapError(f"IMAP SELECT {mailbox!r} failed for now: {detail}")
            setting = ("mailbox" if mailbox == self.settings.mailbox else "replies_mailbox")
            raise AdapterConfigError(
                f"channels.email.{setting}: cannot open mailbox {mailbox!r} ({detail})")
        self.selected = mailbox

    async def create(self, mailbox: str) -> None:
        # "NO [ALREADYEXISTS]" is the common answer and not a problem.
        await self._run(self.imap.create(_quote(mailbox)))

    async def search(self, *criteria: str) -> list[int]:
        response = await self.command("SEARCH", self.imap.uid_search(*criteria, charset=None))
        return sorted({int(token) for line in response.lines[:-1]
                       for token in bytes(line).split() if token.isdigit()})

    async def fetch(self, uid: int, parts: str) -> tuple[bytes | None, set[str]]:
        """A message's literal (None if it is gone) and its flags."""
        response = await self.command("FETCH", self.imap.uid("fetch", str(uid), parts))
        literal, flags = None, set()
        for line in response.lines:
            if isinstance(line, bytearray):
                literal = bytes(line)
            elif match := _FLAGS.search(bytes(line)):
                flags = set(match.group(1).decode().split())
        return literal, flags

    async def store(self, uid: int, operation: str, flags: str) -> None:
        await self.command("STORE", self.imap.uid("store", str(uid), operation, flags))

    async def append(self, mailbox: str, data: bytes, flags: str) -> None:
        await self.command("APPEND", self.imap.append(data, mailbox=_quote(mailbox), flags=flags))

    async def status(self, mailbox: str, items: str) -> str:
        response = await self.command("STATUS", self.imap.status(_quote(mailbox), items))
        return bytes(response.lines[0]).decode(errors="replace")

    async def idle(self, timeout: float) -> None:
        """Wait in IDLE until the server reports new mail or `timeout` passes."""
        client = self.imap
        queue = client.protocol.idle_queue
        while not queue.empty():
            queue.get_nowait()
        idle = await self._run(client.idle_start(timeout=timeout))
        try:
            while True:
                push = await self._run(client.wait_server_push(timeout=timeout + 5))
                if push == aioimaplib.STOP_WAIT_SERVER_PUSH:
                    break
                if any(b"EXISTS" in bytes(line) for line in push):
                    break
        except TimeoutError:
            pass
        finally:
            if not self.lost.is_set() and client.has_pending_idle():
                client.idle_done()
        await self._run(asyncio.wait_for(idle, self.settings.timeout))

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds`, or fail as soon as the connection drops."""
        try:
            await asyncio.wait_for(self.lost.wait(), seconds)
        except TimeoutError:
            return
        raise ImapError("IMAP connection lost")

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is None:
            return
        if not self.lost.is_set() and client.protocol.state in {"AUTH", "SELECTED"}:
            with contextlib.suppress(Exception):  # closing anyway
                await asyncio.wait_for(client.logout(), 2)
        waiter = getattr(client, "_idle_waiter", None)
        if waiter is not None:
            waiter.cancel()
        for task in list(client.tasks) + list(client.protocol.tasks):
            task.cancel()
        transport = client.protocol.transport
        if transport is not None:
            transport.close()
        if not client._client_task.done():
            client._client_task.cancel()


# -- the channel ------------------------------------------------------------------------------

class _NotNow(Exception):
    """Another process is answering this message (within its lease)."""


@dataclass
class _Reply:
    """Our reply to one message: its bytes, whether the replies mailbox holds it (else only
    memory does: IMAP went away), and whether SMTP took it (the copy lost its \\Draft)."""

    data: bytes
    stored: bool
    sent: bool = False


class EmailAdapter:
    name = "email"
    exclusive = True  # one replica at a time polls the mailbox
    delivers_on_standby = True  # `deliver` opens IMAP and SMTP connections of its own
    RETRY_FIRST = 0.5
    RETRY_MAX = 60.0
    IDLE_REFRESH = 5 * 60.0  # re-issue IDLE (and search again) this often

    def __init__(self, settings: EmailSettings, engine: Conversations) -> None:
        self.settings = settings
        self.engine = engine
        self.formation = settings.formation or engine.formation
        self.domain = settings.address.rpartition("@")[2]
        self._retry = self.RETRY_FIRST
        # What lives only in memory, for IMAP outages while this process runs: replies sent
        # whose \Draft flag could not be cleared yet, and replies written but not yet stored.
        self._sent: set[str] = set()
        self._unstored: dict[str, bytes] = {}

    def routes(self) -> list[Any]:
        return []

    # -- serving --

    async def run(self, ready: Ready = QUIET) -> None:
        """Serve the mailbox until cancelled; reconnects (with backoff) after IMAP or SMTP
        trouble, and raises only AdapterConfigError (bad settings, refused logins)."""
        while True:
            imap = _Imap(self.settings)
            try:
                await imap.open()
                await imap.create(self.settings.replies_mailbox)
                ready(f"{self.settings.imap_user}@{self.settings.imap_host} "
                      f"{self.settings.mailbox}")
                await self._serve(imap)
            except _TRANSIENT as exc:
                log.warning("email connection trouble; reconnecting", error=_describe(exc),
                            retry_in=round(self._retry, 2))
            finally:
                await imap.close()
            await asyncio.sleep(self._retry * random.uniform(0.8, 1.2))
            self._retry = min(self._retry * 2, self.RETRY_MAX)

    async def _serve(self, imap: _Imap) -> None:
        use_idle = self.settings.idle and imap.has("IDLE")
        log.info("email connected", mailbox=self.settings.mailbox,
                 mode="idle" if use_idle else "polling")
        while True:
            while await self._pass(imap):
                pass
            self._retry = self.RETRY_FIRST  # a whole pass went through: the trouble is over
            await imap.select(self.settings.mailbox)
            if use_idle:
                await imap.idle(min(self.IDLE_REFRESH, 29 * 60.0))
            else:
                await imap.sleep(self.settings.poll_interval)

    async def _pass(self, imap: _Imap) -> int:
        """Handle every unseen message once; returns how many were done with (one another
        process is still answering stays unseen, for a later pass)."""
        mailbox = self.settings.mailbox
        await imap.select(mailbox)
        done = 0
        for uid in await imap.search("UNSEEN"):
            await imap.select(mailbox)
            raw, flags = await imap.fetch(uid, "(FLAGS BODY.PEEK[])")
            if raw is not None and "\\Seen" not in flags:
                done += await self._handle(imap, uid, raw)
        return done

    async def _handle(self, imap: _Imap, uid: int, raw: bytes) -> bool:
        """Answer one message and mark it seen; False when it must wait for a later pass."""
        try:
            parsed = read(raw, own_address=self.settings.address,
                          authserv_id=self.settings.authserv_id)
        except Exception:  # one unreadable message must not stop the mailbox
            log.exception("unreadable email marked seen without an answer", uid=uid)
            await self._mark_seen(imap, uid)
            return True
        reply_id = self._reply_id(parsed.message_id)
        reply = await self._find_reply(imap, reply_id)
        if reply is None:
            try:
                reply = await self._write_reply(imap, parsed, reply_id)
            except _NotNow:
                log.info("email is being answered by another process; looking again later",
                         message_id=parsed.message_id)
                return False
        if reply is not None and reply.sent:
            log.info("email already answered", message_id=parsed.message_id)
        elif reply is not None:
            if not reply.stored:
                reply = await self._store(imap, reply_id, reply.data)
            await self._send_draft(imap, reply_id, reply.data)
        await self._mark_seen(imap, uid)
        return True

    async def _store(self, imap: _Imap, reply_id: str, data: bytes) -> _Reply:
        """Keep the reply as a \\Draft in the replies mailbox (remembered in memory first, in
        case IMAP goes away meanwhile)."""
        self._unstored[reply_id] = data
        await imap.append(self.settings.replies_mailbox, data, r"(\Seen \Draft)")
        self._unstored.pop(reply_id, None)
        return _Reply(data, stored=True)

    async def _find_reply(self, imap: _Imap, reply_id: str) -> _Reply | None:
        """Our reply to this message if one was written before (sent or not), else None."""
        await imap.select(self.settings.replies_mailbox)
        found: _Reply | None = None
        for uid in await imap.search("HEADER", "Message-ID", _quote(reply_id)):
            data, flags = await imap.fetch(uid, "(FLAGS BODY.PEEK[])")
            if data is None or first_message_id(header(parse_bytes(data), "Message-ID")) \
                    != reply_id:
                continue
            found = _Reply(data, stored=True, sent="\\Draft" not in flags)
            self._unstored.pop(reply_id, None)
            if found.sent:
                break
        if found is None and reply_id in self._unstored:
            found = _Reply(self._unstored[reply_id], stored=False)
        return found

    async def _send_draft(self, imap: _Imap, reply_id: str, data: bytes) -> None:
        if reply_id not in self._sent:
            try:
                await self._smtp_send(data)
            except _Rejected as exc:
                log.error("reply refused by the SMTP server; not retried", error=str(exc),
                          reply_id=reply_id)
            self._sent.add(reply_id)
        await imap.select(self.settings.replies_mailbox)
        for uid in await imap.search("HEADER", "Message-ID", _quote(reply_id)):
            await imap.store(uid, "-FLAGS.SILENT", r"(\Draft)")
        self._sent.discard(reply_id)

    async def _mark_seen(self, imap: _Imap, uid: int) -> None:
        await imap.select(self.settings.mailbox)
        await imap.store(uid, "+FLAGS.SILENT", r"(\Seen)")

    def _reply_id(self, message_id: str) -> str:
        digest = hashlib.sha256(f"{self.formation}\0{message_id}".encode()).hexdigest()[:40]
        return f"<tl.{digest}@{self.domain}>"

    # -- deciding and answering --

    async def _write_reply(self, imap: _Imap, parsed: ParsedEmail,
                           reply_id: str) -> _Reply | None:
        """The reply this message deserves, kept as a draft; None when it gets none."""
        facts = {"message_id": parsed.message_id, "sender": parsed.sender}
        if parsed.sender is None or not is_email(parsed.sender):
            log.info("email without one usable From address not answered", **facts)
            return None
        if parsed.automated:
            log.info("machine mail not answered", reason=parsed.automated, **facts)
            return None
        if parsed.verified_by is None:
            log.warning("email sender not verified", action=self.settings.unverified,
                        authserv_id=self.settings.authserv_id, **facts)
            if self.settings.unverified == "drop":
                return None
            note = UNVERIFIED_NOTE.format(address=parsed.sender)
            return await self._store(imap, reply_id,
                                     self._compose(parsed, reply_id, note, "unverified"))
        question = parsed.text or parsed.subject
        if not question:
            log.info("empty email not answered", **facts)
            return None
        return await self._answer(imap, parsed, reply_id, question)

    def _compose(self, parsed: ParsedEmail, reply_id: str, text: str, kind: str) -> bytes:
        assert parsed.sender is not None
        return compose(
            sender=self.settings.address, to=parsed.sender,
            subject=reply_subject(parsed.subject), message_id=reply_id,
            in_reply_to=parsed.message_id,
            references=reply_references(parsed.references, parsed.in_reply_to,
                                        parsed.message_id),
            text=text, conversation=parsed.thread, kind=kind,
        )

    async def _answer(self, imap: _Imap, parsed: ParsedEmail, reply_id: str,
                      text: str) -> _Reply | None:
        """Ask the engine; "saying" its reply is keeping it as a draft (sent after)."""
        assert parsed.sender is not None
        # replay: an answered message gets its stored reply again, which the draft's fixed
        # Message-ID keeps from being sent twice.
        message = InboundMessage(
            channel=self.name, identifier=(parsed.sender, "email"), conversation=parsed.thread,
            text=text, message_id=parsed.message_id, formation=self.formation, replay=True,
            extras={"subject": parsed.subject, "sender_name": parsed.sender_name,
                    "verified_by": parsed.verified_by},
        )
        kept: list[_Reply] = []

        async def send(reply: Reply) -> None:
            data = self._compose(parsed, reply_id, reply.text, "answer")
            kept.append(await self._store(imap, reply_id, data))

        if await self.engine.handle(message, send) is None:
            raise _NotNow()
        return kept[0]

    # -- SMTP --

    async def _smtp_send(self, data: bytes) -> None:
        s = self.settings
        recipients = [addr for value in all_headers(parse_bytes(data), "To")
                      for addr in _addresses(value)]
        try:
            await aiosmtplib.send(
                data, sender=s.address, recipients=recipients, hostname=s.smtp_host,
                port=s.smtp_port, username=s.smtp_user, password=s.smtp_password,
                use_tls=s.smtp_tls == "tls", start_tls=s.smtp_tls == "starttls",
                timeout=s.timeout,
            )
        except aiosmtplib.SMTPAuthenticationError as exc:
            if exc.code in (530, 534, 535):
                raise AdapterConfigError(
                    f"channels.email.smtp_password: the SMTP server refused the login of "
                    f"{s.smtp_user!r} ({exc.code} {exc.message})") from None
            raise
        except aiosmtplib.SMTPNotSupported as exc:
            raise AdapterConfigError(f"channels.email.smtp_tls / smtp_user: {exc}") from None
        except aiosmtplib.SMTPSenderRefused as exc:
            if exc.code >= 500:
                raise AdapterConfigError(
                    f"channels.email.address: the SMTP server refuses to send as "
                    f"{s.address} ({exc.code} {exc.message})") from None
            raise
        except aiosmtplib.SMTPRecipientsRefused as exc:
            if all(r.code >= 500 for r in exc.recipients):
                raise _Rejected(str(exc)) from None
            raise
        except (aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError) as exc:
            if exc.code >= 500:
                raise _Rejected(f"{exc.code} {exc.message}") from None
            raise

    # -- unprompted messages --

    async def deliver(self, message: OutboundMessage) -> None:
        """Write into the conversation's thread, to the address our latest answer there went
        to (found in the replies mailbox), if that address still belongs to the user."""
        imap = _Imap(self.settings)
        try:
            await imap.open()
            anchor = await self._thread_anchor(imap, message)
            if anchor is None:
                raise LookupError(f"no email thread {message.conversation!r} of this user "
                                  "to write to")
            to, subject, parent_id, references = anchor
            data = compose(
                sender=self.settings.address, to=to, subject=subject,
                message_id=f"<tl.{uuid.uuid4().hex}@{self.domain}>", in_reply_to=parent_id,
                references=reply_references(references, None, parent_id),
                text=message.text, conversation=message.conversation, kind="notice",
                auto_submitted="auto-generated",
            )
            await self._smtp_send(data)
            log.info("email delivered", conversation=message.conversation,
                     user_id=message.user_id)
            try:  # the record later deliveries thread from; the mail is out either way
                await imap.append(self.settings.replies_mailbox, data, r"(\Seen)")
            except _TRANSIENT as exc:
                log.warning("delivered email not recorded", error=_describe(exc))
        finally:
            await imap.close()

    async def _thread_anchor(self, imap: _Imap, message: OutboundMessage
                             ) -> tuple[str, str, str, list[str]] | None:
        await imap.select(self.settings.replies_mailbox)
        uids = await imap.search("HEADER", "X-Threadline-Conversation",
                                 _quote(message.conversation))
        for uid in reversed(uids):
            data, _ = await imap.fetch(uid, "(BODY.PEEK[HEADER])")
            if data is None:
                continue
            headers = parse_bytes(data)
            if (header(headers, "X-Threadline-Conversation") != message.conversation
                    or header(headers, "X-Threadline-Kind") == "unverified"):
                continue
            to = _addresses(header(headers, "To"))
            parent = first_message_id(header(headers, "Message-ID"))
            if len(to) != 1 or parent is None:
                continue
            owner = await self.engine.owner((to[0], "email"), formation=self.formation)
            if owner != message.user_id:
                continue  # the address was unlinked or moved: not this user's thread now
            return (to[0], header(headers, "Subject"), parent,
                    message_ids(header(headers, "References")))
        return None

    # -- health --

    async def check(self) -> str:
        """Log in to IMAP and SMTP; a one-line summary, or an exception saying what failed."""
        s = self.settings
        imap = _Imap(s)
        try:
            await imap.open()
            status = await imap.status(s.mailbox, "(MESSAGES UNSEEN)")
            mode = "IDLE" if s.idle and imap.has("IDLE") else f"polling every {s.poll_interval:g}s"
        finally:
            await imap.close()
        smtp = aiosmtplib.SMTP(hostname=s.smtp_host, port=s.smtp_port,
                               use_tls=s.smtp_tls == "tls",
                               start_tls=s.smtp_tls == "starttls", timeout=s.timeout)
        try:
            await smtp.connect()
            if s.smtp_user and s.smtp_password:
                try:
                    await smtp.login(s.smtp_user, s.smtp_password)
                except aiosmtplib.SMTPAuthenticationError as exc:
                    raise AdapterConfigError(
                        f"channels.email.smtp_password: the SMTP server refused the login of "
                        f"{s.smtp_user!r} ({exc.code} {exc.message})") from None
        finally:
            if smtp.is_connected:
                await smtp.quit()
        unseen = re.search(r"UNSEEN (\d+)", status)
        return (f"imap {s.imap_user}@{s.imap_host}:{s.imap_port} ok ({s.mailbox}: "
                f"{unseen.group(1) if unseen else '?'} unseen, {mode}); "
                f"smtp {s.smtp_host}:{s.smtp_port} ok ({s.smtp_tls})")


def _addresses(value: str) -> list[str]:
    return [addr.lower() for _, addr in getaddresses([value]) if addr]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def create(config: dict[str, Any], engine: Conversations) -> EmailAdapter:
    return EmailAdapter(EmailSettings.from_config(config), engine)
