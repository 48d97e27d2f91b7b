"""Another gateway process chatting as one identifier, for the merge-race tests.

usage: chat_worker.py DB_URL CACHE_URL FORMATION IDENTIFIER COUNT READY_FILE
Resolves the identifier (filling its cache), touches READY_FILE, then takes COUNT turns one
after another and prints {"failed": [...], "users": [...]} as JSON.
"""

import asyncio
import json
import sys
from pathlib import Path

import memory
from gateway.conversation.engine import Engine
from gateway.conversation.messages import InboundMessage
from gateway.conversation.responders.offline import OfflineResponder
from gateway.runtime.logs import configure_logging
from identity import IdentifierParser, IdentityService, connect, store_for
from identity.cache import IdentityCache, make_backend

SECRET = b"test-identity-secret-0123456789"
KEY = b"kL3Z3fQ0m2nS4r8vYb1cD5eF7gH9iJ0kL2mN4oP6qR8="


async def main(db_url: str, cache_url: str, formation: str, identifier: str, count: str,
               ready: str) -> dict:
    db = await connect(db_url, schema=memory.SCHEMA)
    cache = IdentityCache(make_backend(cache_url, max_entries=1000), ttl=3600)
    identity = IdentityService(store_for(db), cache, IdentifierParser(SECRET))
    mem = memory.Memory.open(db, credentials_key=KEY)
    identity.store.on_merge(mem.merge_into)
    engine = Engine(identity, mem, OfflineResponder(), formation=formation)
    failed, users = [], []
    try:
        await identity.resolve(formation, identifier)  # now cached
        Path(ready).touch()
        for n in range(int(count)):
            try:
                reply = await engine.handle(InboundMessage(
                    "test", identifier, "main", f"remember that note {n} is kept",
                    message_id=f"{identifier}-{n}"))
                users.append(reply.user_id)
            except Exception as exc:  # noqa: BLE001 - counted, that is the test
                failed.append(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(0.005)
    finally:
        await cache.close()
        await db.close()
    return {"failed": failed, "users": sorted(set(users))}


if __name__ == "__main__":
    configure_logging("json", "warning")
    print(json.dumps(asyncio.run(main(*sys.argv[1:]))))
