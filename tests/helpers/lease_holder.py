"""Another replica holding a lease, for tests that kill it: prints "held", then waits.

usage: lease_holder.py DATABASE_URL LEASE
"""

import asyncio
import sys

from gateway.runtime.leases import PostgresLeases
from gateway.runtime.logs import configure_logging


async def main(url: str, name: str) -> None:
    leases = PostgresLeases(url, interval=0.2)
    async with leases.hold(name):
        print("held", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    configure_logging("json", "warning")  # stdout says "held" and nothing else
    asyncio.run(main(*sys.argv[1:]))
