"""The one conversation engine: every transport hands it a message through `handle`.

A turn is one unit of work. The platform message is claimed (a lease), the user resolved,
the assistant asked, and then the turn's memory changes, its scheduled tasks and the
completion of the claim (with the reply kept) commit in one transaction, or nothing does.
A redelivered message whose turn committed gets the stored reply, never a second turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, replace
from typing import Any, Protocol, cast

import structlog

from config.errors import ThreadlineError
from gateway.conversation.commands import is_command, run_command
from gateway.conversation.messages import InboundMessage, Reply, to_payload
from gateway.conversation.ports import Send
from gateway.conversation.request_ids import (
    bound_request_id,
    current_request_id,
    new_request_id,
)
from gateway.conversation.responders.base import (
    Context,
    Responder,
    Response,
    StreamingResponder,
)
from gateway.conversation.responders.rules import understand
from identity import IdentifierConflictError, IdentityService, InvalidIdentifierError
from identity.linking import Linker
from identity.storage import is_foreign_key_violation
from memory import Memory
from memory.claims import ClaimLostError, MessageKey
from memory.turns import Completion, TurnWrite
from memory.types import InvalidScheduleError, ScheduleRequest, Task, now

log = structlog.get_logger("threadline.engine")

CODE_NOT_KEPT = "A link code was made for you here; send /link again for a fresh one."
APOLOGY = ("Sorry, I couldn't answer that just now. Your message is saved; "
           "please try again in a moment.")


Delta = Callable[[str], Awaitable[None]]


class StreamBrokenError(ThreadlineError):
    """A streamed answer broke off after part of it was said; the turn stored nothing."""


def describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Observer(Protocol):
    """Told of every turn and every responder call (the runtime's metrics)."""

    def turn(self, channel: str, outcome: str, seconds: float) -> None: ...

    def responder(self, name: str, seconds: float, error: BaseException | None) -> None: ...


class _Unobserved:
    def turn(self, channel: str, outcome: str, seconds: float) -> None:
        pass

    def responder(self, name: str, seconds: float, error: BaseException | None) -> None:
        pass


class _Turn:
    """How a turn ended: answered, apology (the responder failed), command, replayed (a
    stored reply said again), duplicate (nothing said), error or cancelled."""

    outcome = "answered"


class Engine:
    def __init__(self, identity: IdentityService, memory: Memory, responder: Responder,
                 *, formation: str = "default", observer: Observer | None = None) -> None:
        self.identity = identity
        self.memory = memory
        self.responder = responder
        self.formation = formation
        self.observer: Observer = observer or _Unobserved()
        self.linker = Linker(memory.users.db, identity)

    # -- the port every transport uses --

    async def handle(self, message: InboundMessage, send: Send | None = None, *,
                     on_delta: Delta | None = None) -> Reply | None:
        """Answer one message and say the reply through `send` (when given). With
        `on_delta`, a responder that streams hands each piece of its text there as the
        model writes it; if its stream breaks, StreamBrokenError is raised and nothing of
        the turn is stored.

        None when there is nothing to say now: the message was answered already, or another
        process is answering it (within its lease). With `message.replay` an answered one
        gets its stored reply again instead. A reply stored by a process that died before
        saying it is said now, without a second turn."""
        turn, started = _Turn(), time.monotonic()
        with bound_request_id():  # the HTTP request's, or one of the turn's own
            try:
                return await self._handle(message, send, on_delta, turn)
            except asyncio.CancelledError:
                turn.outcome = "cancelled"
                raise
            except Exception:
                turn.outcome = "error"
                raise
            finally:
                self.observer.turn(message.channel, turn.outcome, time.monotonic() - started)

    async def _handle(self, message: InboundMessage, send: Send | None,
                      on_delta: Delta | None, turn: _Turn) -> Reply | None:
        if "\x00" in message.text:  # no database stores it; a platform may still send it
            message = replace(message, text=message.text.replace("\x00", ""))
        formation = message.formation or self.formation
        key = (MessageKey(formation, message.channel, message.message_id)
               if message.message_id is not None else None)
        token: str | None = None
        if key is not None:
            claim = await self.memory.claims.claim(key, payload=to_payload(message))
            if claim.state == "busy":
                log.info("message is being answered already", channel=message.channel)
                turn.outcome = "duplicate"
                return None
            if claim.state == "sent":
                if message.replay and claim.reply:  # a retry gets the same reply again
                    turn.outcome = "replayed"
                    return await self._say(None, _reply(claim.reply), send)
                log.info("duplicate message ignored", channel=message.channel)
                turn.outcome = "duplicate"
                return None
            if claim.state == "answered" and claim.reply:
                log.info("stored reply said again", channel=message.channel)
                turn.outcome = "replayed"
                async with self._renewing(key, claim.token):
                    return await self._say(key, _reply(claim.reply), send)
            token = claim.token
        async with self._renewing(key, token):
            try:
                reply = await self._answer(formation, message, key, token, turn,
                                           sent=send is None, on_delta=on_delta)
            except ClaimLostError:
                log.info("message answered by another process", channel=message.channel)
                turn.outcome = "duplicate"
                return None
            except BaseException as exc:
                if key is not None and token is not None:  # tried again, a few times
                    again = await asyncio.shield(self.memory.claims.release(key, token))
                    if not again and not isinstance(exc, asyncio.CancelledError):
                        log.error("message given up: its turns failed", channel=key.channel,
                                  error=describe(exc))
                raise
            return await self._say(key, reply, send)

    @contextlib.asynccontextmanager
    async def _renewing(self, key: MessageKey | None,
                        token: str | None) -> AsyncIterator[None]:
        """Renew the message's claim while this process works on it, however long the
        model takes: only a dead process's claim runs out (within the claim lease)."""
        if key is None or token is None:
            yield
            return
        claims = self.memory.claims

        async def renew() -> None:
            while True:
                await asyncio.sleep(claims.lease / 3)
                try:
                    if not await claims.renew(key, token):
                        return  # taken over: the turn's completion will say so
                except Exception as exc:  # noqa: BLE001 - the turn itself meets the outage
                    log.debug("claim not renewed", channel=key.channel, error=describe(exc))

        renewing = asyncio.create_task(renew())
        try:
            yield
        finally:
            renewing.cancel()

    async def accept(self, message: InboundMessage) -> bool:
        if message.message_id is None:
            return True  # nothing to deduplicate by: answered as it comes
        key = MessageKey(message.formation or self.formation, message.channel,
                         message.message_id)
        return await self.memory.claims.accept(key, to_payload(message))

    async def owner(self, identifier: Any, *, formation: str | None = None) -> str | None:
        return await self.identity.resolve(formation or self.formation, identifier,
                                           create=False)

    async def link_by_email(self, identifier: Any, email: str, *,
                            formation: str | None = None) -> str | None:
        formation = formation or self.formation
        if (owner := await self.owner(identifier, formation=formation)) is not None:
            return owner
        try:
            result = await self.identity.associate(formation, [email, identifier])
        except (IdentifierConflictError, InvalidIdentifierError) as exc:
            log.warning("email match refused", reason=str(exc))
            return None
        log.info("matched by email", user_id=result.user_id, created_user=result.created_user)
        return result.user_id

    # -- one turn --

    async def _say(self, key: MessageKey | None, reply: Reply, send: Send | None) -> Reply:
        if send is not None:
            try:
                await send(reply)
            except BaseException:
                if key is not None:  # a redelivery says the stored reply, without waiting
                    await asyncio.shield(self.memory.claims.expire(key))
                raise
            if key is not None:
                await self.memory.claims.mark_sent(key)
        return reply

    async def _answer(self, formation: str, message: InboundMessage, key: MessageKey | None,
                      token: str | None, turn: _Turn, *, sent: bool,
                      on_delta: Delta | None = None) -> Reply:
        user_id = message.user_id or await self.identity.resolve(formation, message.identifier)
        assert user_id is not None
        request_id = current_request_id() or new_request_id()
        if is_command(message.text):
            # Not a conversation turn: link codes stay out of buffers and memory.
            turn.outcome = "command"
            answer = await run_command(message.text, formation=formation,
                                       identifier=message.identifier or user_id,
                                       user_id=user_id, identity=self.identity,
                                       linker=self.linker, shared=message.shared)
            reply = Reply(answer.text, answer.owner or user_id, "", request_id, answer.private)
            if answer.linked is not None and answer.owner is not None:
                await self._tell_other_channels(formation, answer.owner, message,
                                                answer.linked)
            if key is not None and token is not None:
                # A link code is never kept: a redelivery says so instead.
                kept = asdict(replace(reply, private=None) if answer.keep else
                              replace(reply, text=CODE_NOT_KEPT, private=None))
                async with self.memory.claims.db.transaction() as tx:
                    await self.memory.claims.complete(tx, key, token, kept, sent=sent)
            return reply
        completion = (Completion(key, token, {}, sent)
                      if key is not None and token is not None else None)
        pieces = _Pieces(on_delta) if on_delta is not None else None
        try:
            return await self._converse(formation, user_id, message, request_id, completion,
                                        turn, pieces)
        except Exception as exc:
            if not is_foreign_key_violation(exc) or message.identifier is None:
                raise
        # The user was merged away (by another process, or while this turn ran) and our
        # mapping was stale: resolve afresh and take the turn once more (without streaming
        # its pieces a second time).
        log.info("user merged away during the turn; resolving again", channel=message.channel)
        user_id = await self.identity.refresh(formation, message.identifier)
        assert user_id is not None
        return await self._converse(formation, user_id, message, request_id, completion,
                                    turn, None if pieces is not None and pieces.said else pieces)

    async def _converse(self, formation: str, user_id: str, message: InboundMessage,
                        request_id: str, completion: Completion | None, turn: _Turn,
                        pieces: _Pieces | None = None) -> Reply:
        memory, channel, text = self.memory, message.channel, message.text
        session, loaded = await memory.turns.open(user_id, formation, channel,
                                                  message.conversation, text)
        relevant = await memory.users.search_memories(
            user_id, text, by_words=loaded.by_words) if loaded.recent else []
        at = now()
        context = Context(user_id, formation, channel, text, session, loaded.synopsis,
                          loaded.facts, relevant, loaded.recent, loaded.working, loaded.buffer,
                          at)
        changes = understand(text, at).changes
        answer: str | None
        asked = time.monotonic()
        try:
            if pieces is not None and getattr(self.responder, "streams", False):
                streaming = cast(StreamingResponder, self.responder)
                response = await streaming.respond(context, changes, on_delta=pieces)
            else:
                response = await self.responder.respond(context, changes)
            answer = response.text
            self.observer.responder(self.responder.name, time.monotonic() - asked, None)
        except Exception as exc:  # the apology is said, never kept as memory
            self.observer.responder(self.responder.name, time.monotonic() - asked, exc)
            if pieces is not None and pieces.said:  # half an answer is out: keep nothing
                log.warning("responder stream broke", responder=self.responder.name,
                            user_id=user_id, error=describe(exc))
                raise StreamBrokenError(
                    "the model stopped answering partway through; nothing was kept, so "
                    "please send the message again") from exc
            log.warning("responder failed", responder=self.responder.name, user_id=user_id,
                        error=describe(exc))
            response, answer = Response(APOLOGY, changes), None
            turn.outcome = "apology"
        reply = Reply(response.text, user_id, session.id, request_id)
        if completion is not None:
            completion = replace(completion, reply=asdict(reply))
        tasks = self._tasks(user_id, formation, message, response.changes.tasks)
        source = {"channel": channel, "message_id": message.message_id, "at": at,
                  "by": self.responder.name if answer is not None else "rules"}
        stored = await memory.turns.store(TurnWrite(
            user_id, session, text, answer, response.changes, tasks, loaded, completion,
            source))
        log.info("turn", channel=channel, user_id=user_id, session_id=stored.id,
                 new_session=session.is_new)  # request_id: bound for the whole turn
        return reply if stored.id == session.id else replace(reply, session_id=stored.id)

    async def _tell_other_channels(self, formation: str, user_id: str,
                                   message: InboundMessage, linked: str) -> None:
        """An identifier just joined the account: its other channels hear of it (a notice
        delivered like a reminder), so a link the person did not make does not go unseen."""
        text = (f"{linked} was just linked to your account on {message.channel}. If this "
                "wasn't you, send /unlink here to see your linked channels and remove it.")
        seen: set[str] = {message.channel}
        for session in await self.memory.sessions.list(user_id, limit=50):
            if session.channel in seen:
                continue
            seen.add(session.channel)
            await self.memory.tasks.add(user_id, formation, "notice", "in 0 seconds", text,
                                        channel=session.channel,
                                        conversation=session.conversation)

    def _tasks(self, user_id: str, formation: str, message: InboundMessage,
               requests: list[ScheduleRequest]) -> list[Task]:
        tasks = []
        for request in requests:
            try:
                tasks.append(self.memory.tasks.plan(
                    user_id, formation, request.kind, request.schedule, request.message,
                    channel=message.channel, conversation=message.conversation))
            except InvalidScheduleError as exc:
                log.warning("scheduled task refused", user_id=user_id, reason=str(exc))
        return tasks


class _Pieces:
    """An `on_delta` that remembers whether it has said anything yet."""

    def __init__(self, on_delta: Delta) -> None:
        self.on_delta = on_delta
        self.said = False

    async def __call__(self, piece: str) -> None:
        self.said = True
        await self.on_delta(piece)


def _reply(data: dict[str, Any] | None) -> Reply:
    data = data or {}
    return Reply(str(data.get("text", "")), str(data.get("user_id", "")),
                 str(data.get("session_id", "")), str(data.get("request_id", "")))
