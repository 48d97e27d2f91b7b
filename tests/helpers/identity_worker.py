"""Another OS process using the identity core, for tests that need two processes.

usage: identity_worker.py DB_URL CACHE_URL FORMATION COMMAND ARGS...
  race IDENTIFIER N START_AT   N concurrent resolves, starting at the epoch time START_AT
  link USER_ID|- IDENTIFIER... associate (- for match-or-create)
  unlink IDENTIFIER
  resolve IDENTIFIER
Prints one JSON value.
"""

import asyncio
import json
import sys
import time

from gateway.runtime.logs import configure_logging
from identity import IdentifierParser, IdentityService, connect, store_for
from identity.cache import make_cache

SECRET = b"test-identity-secret-0123456789"


async def main(db_url: str, cache_url: str, formation: str, command: str, *args: str) -> object:
    db = await connect(db_url)
    cache = make_cache(cache_url, db, max_entries=1000)  # as a serving replica has it
    await cache.start()
    service = IdentityService(store_for(db), cache, IdentifierParser(SECRET))
    try:
        if command == "race":
            identifier, count, start_at = args[0], int(args[1]), float(args[2])
            await asyncio.sleep(max(0.0, start_at - time.time()))
            return await asyncio.gather(
                *(service.resolve(formation, identifier) for _ in range(count))
            )
        if command == "link":
            user = None if args[0] == "-" else args[0]
            return (await service.associate(formation, list(args[1:]), user)).user_id
        if command == "unlink":
            return await service.unlink(formation, args[0])
        if command == "resolve":
            return await service.resolve(formation, args[0], create=False)
        raise SystemExit(f"unknown command {command}")
    finally:
        await cache.close()
        await db.close()


if __name__ == "__main__":
    configure_logging("json", "warning")
    print(json.dumps(asyncio.run(main(*sys.argv[1:]))))
