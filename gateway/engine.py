"""The one conversation engine every channel and the HTTP API go through."""

from __future__ import annotations

import asyncio
import uuid

import structlog

from gateway.commands import is_command, run_command
from gateway.messages import InboundMessage, Reply
from gateway.responders.base import Changes, Context, Responder, Response
from gateway.responders.rules import understand
from identity import IdentityService
from identity.linking import Linker
from memory import Memory
from memory.types import now

log = structlog.get_logger("threadline.engine")

APOLOGY = "Sorry, I couldn't answer that just now. Your message is saved; please try again."


class Engine:
    def __init__(self, identity: IdentityService, memory: Memory, responder: Responder,
                 *, formation: str = "default") -> None:
        self.identity = identity
        self.memory = memory
        self.responder = responder
        self.formation = formation
        self.linker = Linker(memory.users.db, identity)

    async def handle(self, message: InboundMessage) -> Reply | None:
        """Answer one message; None when it is a redelivery of one already answered."""
        formation = message.formation or self.formation
        if message.message_id is not None and not await self.memory.sessions.claim_message(
            formation, message.channel, message.message_id
        ):
            log.info("duplicate message ignored", channel=message.channel)
            return None
        user_id = await self.identity.resolve(formation, message.identifier)
        assert user_id is not None
        return await self.converse_or_command(formation, user_id, message.channel,
                                              message.conversation, message.text,
                                              identifier=message.identifier)

    async def converse_or_command(self, formation: str, user_id: str, channel: str,
                                  conversation: str, text: str, *,
                                  identifier: object = None) -> Reply:
        """A /link, /link CODE or /whoami command, or else one conversation turn."""
        if is_command(text):
            # Not a conversation turn: link codes stay out of buffers and memory.
            answer = await run_command(text, formation=formation,
                                       identifier=identifier or user_id, user_id=user_id,
                                       identity=self.identity, linker=self.linker)
            return Reply(answer, user_id, "", f"req_{uuid.uuid4().hex[:16]}")
        return await self.converse(formation, user_id, channel, conversation, text)

    async def converse(self, formation: str, user_id: str, channel: str, conversation: str,
                       text: str) -> Reply:
        """One turn for a known user: open the session, answer, store what was learned."""
        request_id = f"req_{uuid.uuid4().hex[:16]}"
        users, sessions = self.memory.users, self.memory.sessions
        session = await sessions.open(user_id, formation, channel, conversation)
        facts, synopsis, working, buffer, relevant, recent = await asyncio.gather(
            users.facts(user_id), users.synopsis(user_id), users.working(user_id),
            sessions.buffer(session.id), users.search_memories(user_id, text),
            users.memories(user_id, limit=5),
        )
        at = now()
        context = Context(user_id, formation, channel, text, session, synopsis, facts, relevant,
                          recent, working, buffer, at)
        changes = understand(text, at).changes
        try:
            response = await self.responder.respond(context, changes)
        except Exception:
            log.exception("responder failed", responder=self.responder.name, user_id=user_id)
            response = Response(APOLOGY, changes)
        await self._store(formation, user_id, channel, session.id, text, response)
        log.info("turn", channel=channel, user_id=user_id, session_id=session.id,
                 new_session=session.is_new, request_id=request_id)
        return Reply(response.text, user_id, session.id, request_id)

    async def _store(self, formation: str, user_id: str, channel: str, session_id: str,
                     text: str, response: Response) -> None:
        users, changes = self.memory.users, response.changes
        await self._apply(formation, user_id, changes)
        await self.memory.sessions.add_message(session_id, "user", text)
        await self.memory.sessions.add_message(session_id, "assistant", response.text)
        await users.remember_turn(user_id, channel, "user", text)
        await users.remember_turn(user_id, channel, "assistant", response.text)

    async def _apply(self, formation: str, user_id: str, changes: Changes) -> None:
        users = self.memory.users
        for key, value in changes.facts.items():
            await users.set_fact(user_id, key, value)
        for key in changes.forget:
            await users.forget_fact(user_id, key)
        for value in changes.preferences:
            await users.set_fact(user_id, value.lower()[:100], value, kind="preference")
        for content in changes.memories:
            await users.add_memory(user_id, content, {"source": "conversation"})
        for task in changes.tasks:
            await self.memory.tasks.add(user_id, formation, task.kind, task.schedule,
                                        task.message)
        if changes.persistent:
            await users.refresh_synopsis(user_id)
