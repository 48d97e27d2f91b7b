"""The identity API everything else calls: resolve, associate, list, unlink."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import structlog

from identity import audit
from identity.cache import IdentityCache
from identity.identifiers import IdentifierParser
from identity.store import PUBLIC_ID_PREFIX, Erasure, IdentityStore
from identity.types import (
    AssociateResult,
    Identifier,
    IdentityError,
    InvalidIdentifierError,
    LinkedIdentifier,
    MergeRecord,
)

log = structlog.get_logger("threadline.identity")

_FORMATION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PUBLIC_ID = re.compile(r"^usr_[A-Za-z0-9_-]{1,64}$")


class InvalidFormationError(IdentityError, ValueError):
    pass


def check_formation(formation: str) -> str:
    if not isinstance(formation, str) or not _FORMATION_ID.match(formation):
        raise InvalidFormationError(
            f"formation id {str(formation)[:70]!r} must be 1-64 letters, digits, '.', '_' or '-'"
        )
    return formation


def check_user_id(user_id: Any, *, field: str = "user_id") -> str:
    if not isinstance(user_id, str) or not _PUBLIC_ID.match(user_id):
        raise InvalidIdentifierError(
            f"user id must look like {PUBLIC_ID_PREFIX}… (a public Threadline user id)",
            field=field,
        )
    return user_id


class IdentityService:
    def __init__(self, store: IdentityStore, cache: IdentityCache, parser: IdentifierParser):
        self.store = store
        self.cache = cache
        self.parser = parser

    def parse(self, raw: Any) -> Identifier:
        return self.parser.parse(raw)

    async def resolve(self, formation: str, raw: Any, *, create: bool = True) -> str | None:
        """The public user id behind an identifier; a first contact creates the user.

        With create=False an unknown identifier gives None.
        """
        return (await self.resolve_identifier(formation, raw, create=create))[0]

    async def resolve_identifier(self, formation: str, raw: Any, *,
                                 create: bool = True) -> tuple[str | None, Identifier]:
        """The user behind an identifier, and the identifier that matched: an untyped value
        that is a linked api key (spec pattern 3) matches by its keyed hash, so the caller
        can go on naming it by that hash and never by the key itself."""
        check_formation(formation)
        ident = self.parser.parse(raw)
        if ident.type is None and not ident.secret:
            key = self.parser.as_api_key(ident)
            if (owner := await self.cache.get(formation, key.key)) is not None:
                return owner, key
            if (owner := await self.cache.get(formation, ident.key)) is not None:
                return owner, ident
            found = await self.cache.fill(formation, key.key,
                                          lambda: self.store.lookup(formation, key.key))
            if found is not None:
                return found, key
        return await self._resolve(formation, ident, create=create), ident

    async def _resolve(self, formation: str, ident: Identifier, *, create: bool) -> str | None:
        cached = await self.cache.get(formation, ident.key)
        if cached is not None:
            return cached
        created = False

        async def load() -> str | None:
            nonlocal created
            if not create:
                return await self.store.lookup(formation, ident.key)
            user_id, created = await self.store.resolve_or_create(formation, ident)
            return user_id

        user_id = await self.cache.fill(formation, ident.key, load)
        if created:
            log.info("user created", formation=formation, user_id=user_id,
                     identifier_type=ident.type)
        return user_id

    async def associate(
        self, formation: str, identifiers: Iterable[Any], user_id: str | None = None, *,
        actor: str = audit.INTERNAL,
    ) -> AssociateResult:
        """Link identifiers to `user_id`, or with None to their existing owner or a new user.

        All or nothing: a conflict or an unknown user leaves the database untouched.
        """
        check_formation(formation)
        if user_id is not None:
            check_user_id(user_id)
        idents = self.parser.parse_many(identifiers)
        try:
            result = await self.store.associate(formation, idents, user_id, actor=actor)
        finally:  # also after a failure: a conflict may have raced with a change
            await self.forget(formation, [i.key for i in idents])
        log.info(
            "identifiers linked", formation=formation, user_id=result.user_id,
            created_user=result.created_user,
            linked_types=[i.type for i in result.linked],
            existing=len(result.existing),
        )
        return result

    async def identifiers_of(self, formation: str, user_id: str) -> list[LinkedIdentifier]:
        check_formation(formation)
        check_user_id(user_id)
        return await self.store.identifiers_of(formation, user_id)

    async def unlink(self, formation: str, raw: Any, *, actor: str = audit.INTERNAL) -> str:
        """Remove one identifier from its user; the user and its data stay."""
        check_formation(formation)
        ident = self.parser.parse(raw)
        try:
            owner = await self.store.unlink(formation, ident, actor=actor)
        finally:
            await self.forget(formation, [ident.key])
        log.info("identifier unlinked", formation=formation, user_id=owner,
                 identifier_type=ident.type)
        return owner

    async def merge(self, formation: str, keep: str, absorb: str, *,
                    actor: str = audit.INTERNAL, dry_run: bool = False) -> MergeRecord:
        """Fold user `absorb` into `keep`: its identifiers, memory, sessions, credentials and
        tasks move over (where both have a fact, `keep`'s wins) and `absorb` is deleted.

        Journaled: `undo_merge(record.id)` puts it back within the retention window. With
        `dry_run` the merge runs in a transaction that is rolled back: the record says what
        would move and collide, and nothing is written, cached or forgotten."""
        check_formation(formation)
        check_user_id(keep, field="keep_id")
        check_user_id(absorb, field="from")
        if keep == absorb:
            raise InvalidIdentifierError("cannot merge a user into itself", field="from")
        if dry_run:
            return await self.store.preview_merge(formation, keep, absorb, actor=actor)
        record = await self.store.merge(formation, keep, absorb, actor=actor)
        await self.forget(formation, record.keys)  # never raises: the merge has committed
        log.info("users merged", formation=formation, user_id=keep, merged=absorb,
                 merge_id=record.id, identifiers=len(record.identifiers))
        try:  # a moment to drop what the journal need no longer keep
            await self.store.forget_expired_merges()
        except Exception as exc:  # noqa: BLE001 - the merge has committed; next time
            log.warning("expired merge journal entries not cleared", error=str(exc))
        return record

    async def merge_record(self, formation: str, merge_id: str) -> MergeRecord:
        """A journaled merge (MergeNotFoundError when unknown here)."""
        check_formation(formation)
        return await self.store.merge_record(formation, merge_id)

    async def undo_merge(self, formation: str, merge_id: str, *, actor: str = audit.INTERNAL,
                         dry_run: bool = False) -> MergeRecord:
        """Undo a journaled merge: both users' identifiers and memory as they were (what the
        kept user gained since stays with it). MergeUndoRefusedError says why not."""
        check_formation(formation)
        record = await self.store.undo_merge(formation, merge_id, actor=actor, dry_run=dry_run)
        if not dry_run:
            await self.forget(formation, record.keys)
            log.info("merge undone", formation=formation, user_id=record.kept_user,
                     restored=record.merged_user, merge_id=merge_id,
                     identifiers=len(record.identifiers))
        return record

    async def erase(self, formation: str, user_id: str, *,
                    actor: str = audit.INTERNAL) -> Erasure:
        """Remove the user and everything kept about them (see `IdentityStore.erase`), then
        drop their identifiers from the caches."""
        check_formation(formation)
        check_user_id(user_id)
        erased = await self.store.erase(formation, user_id, actor=actor)
        await self.forget(formation, erased.keys)
        log.info("user erased", formation=formation, user_ref=erased.user_ref,
                 **erased.counts)
        return erased

    async def forget(self, formation: str, keys: list[str]) -> None:
        """Drop cached mappings after a change. The change has committed: a slow or lost
        cache is logged, not raised (the entries expire, and a write that finds its cached
        user gone resolves again; see `refresh`)."""
        try:
            await self.cache.invalidate(formation, keys)
        except Exception as exc:  # noqa: BLE001 - the database holds the truth
            log.warning("cache invalidation failed; entries will expire", formation=formation,
                        count=len(keys), error=f"{type(exc).__name__}: {exc}")

    async def refresh(self, formation: str, raw: Any) -> str | None:
        """Resolve again without trusting the cache: for a write that found its cached user
        gone (merged away by another process)."""
        ident = self.parser.parse(raw)
        await self.forget(formation, [ident.key, self.parser.as_api_key(ident).key])
        return await self.resolve(formation, ident)
