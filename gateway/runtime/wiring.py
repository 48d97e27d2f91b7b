"""Wiring: open the database, the cache and the services from settings; close in reverse."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from config.settings import Settings
from gateway.conversation.channels import ChannelRegistry
from gateway.conversation.engine import Engine
from gateway.conversation.live import EventHub, LiveChannel
from gateway.conversation.responders.base import Responder
from gateway.conversation.scheduler import Scheduler
from gateway.runtime.leases import Leases, LocalLeases, make_leases
from identity import Database, IdentifierParser, IdentityService, connect, store_for
from identity.cache import make_cache
from memory import SCHEMA, Memory
from memory.embeddings import Embedder


def make_responder(settings: Settings) -> Responder:
    if settings.responder == "openai":
        from gateway.conversation.responders.openai import OpenAIResponder

        return OpenAIResponder(
            base_url=settings.llm_base_url, model=settings.llm_model,
            api_key=settings.llm_api_key.get_secret_value() if settings.llm_api_key else None,
            timeout=settings.llm_timeout,
        )
    from gateway.conversation.responders.offline import OfflineResponder

    return OfflineResponder()


def make_embedder(settings: Settings) -> Embedder | None:
    if settings.embeddings == "local":
        from memory.embeddings import LOCAL_MODEL, LocalEmbedder

        return LocalEmbedder(settings.embeddings_model or LOCAL_MODEL)
    if settings.embeddings == "openai":
        from memory.embeddings import OPENAI_MODEL, OpenAIEmbedder

        key = settings.llm_api_key
        return OpenAIEmbedder(base_url=settings.embeddings_base_url or settings.llm_base_url,
                              model=settings.embeddings_model or OPENAI_MODEL,
                              api_key=key.get_secret_value() if key else None)
    return None


@dataclass
class Runtime:
    settings: Settings
    db: Database
    identity: IdentityService
    memory: Memory
    engine: Engine
    channels: ChannelRegistry
    scheduler: Scheduler
    events: EventHub
    # The channels' states as the supervisor keeps them (set by `serve`), for readiness.
    channel_states: dict[str, Any] = field(default_factory=dict)
    # Work one replica at a time does (exclusive channels, the scheduler).
    leases: Leases = field(default_factory=LocalLeases)

    @classmethod
    async def open(cls, settings: Settings, *, migrate: bool = True) -> Runtime:
        db = await connect(settings.database, schema=SCHEMA)
        try:
            if migrate:
                await db.migrate()
            cache = make_cache(settings.cache, db, ttl=settings.cache_ttl,
                               max_entries=settings.cache_max_entries)
            await cache.start()
            store = store_for(db, merge_retention_days=settings.merge_retention_days)
            identity = IdentityService(store, cache,
                                       IdentifierParser(settings.identity_key(),
                                                        extra_types=settings.identity_types))
            memory = Memory.open(db, credentials_key=settings.credential_key(),
                                 idle_timeout=settings.session_idle_timeout,
                                 buffer_size=settings.session_buffer_size,
                                 embedder=make_embedder(settings))
            # Merging users carries memory along; undoing a merge brings it back; erasing
            # a user erases their memory.
            identity.store.on_merge(memory.merge_into)
            identity.store.on_unmerge(memory.unmerge)
            identity.store.on_erase(memory.erase_user)
            responder = make_responder(settings)
        except BaseException:
            await db.close()
            raise
        engine = Engine(identity, memory, responder, formation=settings.formation_id)
        # The web chat and the API are channels too: they reach a person while a page or an
        # event stream of theirs is open.
        events, channels = EventHub(), ChannelRegistry()
        channels.add(LiveChannel("web", events))
        channels.add(LiveChannel("api", events))
        return cls(settings, db, identity, memory, engine, channels,
                   Scheduler(memory, channels), events, leases=make_leases(db))

    async def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self.scheduler.stop()
        responder_close = getattr(self.engine.responder, "close", None)
        if responder_close is not None:
            await responder_close()
        embedder_close = getattr(self.memory.users.embedder, "close", None)
        if embedder_close is not None:
            await embedder_close()
        await self.leases.close()
        await self.identity.cache.close()
        await self.db.close()
