"""Wiring: open the database, the cache and the services from settings; close in reverse."""

from __future__ import annotations

from dataclasses import dataclass

from config.settings import Settings
from identity import Database, IdentifierParser, IdentityService, connect, store_for
from identity.cache import IdentityCache, make_backend


@dataclass
class Runtime:
    settings: Settings
    db: Database
    identity: IdentityService

    @classmethod
    async def open(cls, settings: Settings, *, migrate: bool = True) -> Runtime:
        db = await connect(settings.database)
        try:
            if migrate:
                await db.migrate()
            cache = IdentityCache(
                make_backend(settings.cache, max_entries=settings.cache_max_entries),
                ttl=settings.cache_ttl,
            )
            parser = IdentifierParser(settings.identity_key())
        except BaseException:
            await db.close()
            raise
        return cls(settings, db, IdentityService(store_for(db), cache, parser))

    async def close(self) -> None:
        await self.identity.cache.close()
        await self.db.close()
