"""The one conversation engine every channel and the HTTP API go through."""

from __future__ import annotations

import asyncio
import uuid

import structlog

from gateway.conversation.commands import is_command, run_command
from gateway.conversation.messages import InboundMessage, Reply
from gateway.conversation.responders.base import Context, Responder, Response
from gateway.conversation.responders.rules import understand
from identity import IdentityService
from identity.linking import Linker
from memory import Memory
from memory.turns import TurnContext, load_context, store_plain_turn
from memory.types import Fact, now
from memory.user_memory import build_synopsis

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
        try:
            user_id = await self.identity.resolve(formation, message.identifier)
            assert user_id is not None
            reply = await self.converse_or_command(formation, user_id, message.channel,
                                                   message.conversation, message.text,
                                                   identifier=message.identifier)
        except BaseException:
            if message.message_id is not None:  # let a redelivery try again
                await asyncio.shield(self.memory.sessions.release_message(
                    formation, message.channel, message.message_id))
            raise
        if message.message_id is not None:
            await self.memory.sessions.finish_message(formation, message.channel,
                                                      message.message_id)
        return reply

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
        loaded = await load_context(users.db, users, user_id, session.id,
                                    sessions.buffer_size)
        relevant = await users.search_memories(user_id, text) if loaded.recent else []
        at = now()
        context = Context(user_id, formation, channel, text, session, loaded.synopsis,
                          loaded.facts, relevant, loaded.recent, loaded.working, loaded.buffer,
                          at)
        changes = understand(text, at).changes
        try:
            response = await self.responder.respond(context, changes)
        except Exception:
            log.exception("responder failed", responder=self.responder.name, user_id=user_id)
            response = Response(APOLOGY, changes)
        if response.changes.persistent or response.changes.tasks:
            await self._store(formation, user_id, channel, session.id, text, response, loaded)
        else:
            await store_plain_turn(users.db, users, user_id, channel, session.id, text,
                                   response.text, loaded.working_rows)
        log.info("turn", channel=channel, user_id=user_id, session_id=session.id,
                 new_session=session.is_new, request_id=request_id)
        return Reply(response.text, user_id, session.id, request_id)

    async def _store(self, formation: str, user_id: str, channel: str, session_id: str,
                     text: str, response: Response, loaded: TurnContext) -> None:
        """A turn that changes memory, in one transaction: the changes, the synopsis rebuilt
        from what was loaded plus the changes, the buffer and working memory."""
        users, changes = self.memory.users, response.changes
        turns = [("user", text), ("assistant", response.text)]
        facts = {(f.kind, f.key): f for f in loaded.facts}
        recent = list(loaded.recent)
        async with users.db.transaction() as tx:
            for key, value in changes.facts.items():
                await users.set_fact(user_id, key, value, q=tx)
                facts[("fact", key)] = Fact("fact", key, value, now())
            for key in changes.forget:
                await users.forget_fact(user_id, key, q=tx)
                facts.pop(("fact", key), None)
            for value in changes.preferences:
                key = value.lower()[:100]
                await users.set_fact(user_id, key, value, kind="preference", q=tx)
                facts[("preference", key)] = Fact("preference", key, value, now())
            for content in changes.memories:
                recent.insert(0, await users.add_memory(user_id, content,
                                                        {"source": "conversation"}, q=tx))
            if changes.persistent:
                ordered = sorted(facts.values(), key=lambda f: (f.kind, f.updated_at))
                await users.save_synopsis(user_id, build_synopsis(ordered, recent[:5]), q=tx)
            await self.memory.sessions.add_messages(session_id, turns, q=tx)
            await self.memory.sessions.touch(session_id, q=tx)
            await users.remember_turn(user_id, channel, turns, q=tx,
                                      trim=users.needs_trim(loaded.working_rows))
        for task in changes.tasks:
            await self.memory.tasks.add(user_id, formation, task.kind, task.schedule,
                                        task.message)
