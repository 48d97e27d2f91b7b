"""One gateway process answering one platform message, that can die by SIGKILL at a chosen
step of the turn, for the crash tests.

usage: turn_worker.py DB_URL FORMATION MESSAGE_ID TEXT OUTBOX CRASH_AT
  CRASH_AT: none | after_claim | after_model | after_commit | before_send
            | inbox (no message comes: this process's inbox worker answers what waits)
The reply is "said" by appending it as one JSON line to OUTBOX (the platform's side).
"""

import asyncio
import json
import os
import signal
import sys

import memory
from gateway.conversation.channels import ChannelRegistry
from gateway.conversation.engine import Engine
from gateway.conversation.inbox import InboxWorker
from gateway.conversation.messages import InboundMessage, OutboundMessage, Reply
from gateway.conversation.responders.offline import OfflineResponder
from gateway.runtime.logs import configure_logging
from identity import IdentifierParser, IdentityService, connect, store_for
from identity.cache import BoundedMemoryCache, IdentityCache

SECRET = b"test-identity-secret-0123456789"
KEY = b"kL3Z3fQ0m2nS4r8vYb1cD5eF7gH9iJ0kL2mN4oP6qR8="
LEASE = 0.5  # seconds: a dead process's claim is taken over quickly


def _append(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as out:
        out.write(line)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def dying_after(method, crash: bool):
    async def wrapped(*args, **kwargs):
        result = await method(*args, **kwargs)
        if crash:
            die()
        return result

    return wrapped


async def main(db_url: str, formation: str, message_id: str, text: str, outbox: str,
               crash_at: str) -> None:
    db = await connect(db_url, schema=memory.SCHEMA)
    await db.migrate()
    identity = IdentityService(store_for(db), IdentityCache(BoundedMemoryCache()),
                               IdentifierParser(SECRET))
    mem = memory.Memory.open(db, credentials_key=KEY)
    identity.store.on_merge(mem.merge_into)
    mem.claims.lease = LEASE
    responder = OfflineResponder()
    responder.respond = dying_after(responder.respond, crash_at == "after_model")
    mem.claims.claim = dying_after(mem.claims.claim, crash_at == "after_claim")
    mem.turns.store = dying_after(mem.turns.store, crash_at == "after_commit")
    engine = Engine(identity, mem, responder, formation=formation)

    async def send(reply: Reply) -> None:
        if crash_at == "before_send":
            die()
        line = json.dumps({"text": reply.text, "session_id": reply.session_id}) + "\n"
        await asyncio.to_thread(_append, outbox, line)

    try:
        if crash_at == "inbox":
            channels = ChannelRegistry()
            channels.add(Outbox(outbox))
            await InboxWorker(engine, channels, grace=0.0).run_once()
        else:
            await engine.handle(InboundMessage("test", "crash@x.co", "main", text,
                                               message_id=message_id), send)
    finally:
        await db.close()


class Outbox:
    """The platform's side of channel "test", as a channel delivers to it."""

    name = "test"

    def __init__(self, path: str) -> None:
        self.path = path

    async def deliver(self, message: OutboundMessage) -> None:
        line = json.dumps({"text": message.text, "via": "inbox"}) + "\n"
        await asyncio.to_thread(_append, self.path, line)


if __name__ == "__main__":
    configure_logging("json", "warning")
    asyncio.run(main(*sys.argv[1:]))
