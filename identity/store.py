"""The identity store: one implementation for PostgreSQL and SQLite.

A store speaks public user ids (`usr_…`) only; internal row ids stay inside it. SQL is
written once with $n placeholders; the few dialect differences are small hooks below
(row locks, list parameters, timestamps, how a lost insert race shows). On SQLite every
write transaction is BEGIN IMMEDIATE, so writers are serialized and the locks are moot.

Merging users carries along what other components keep per user: they register a merge
hook (`on_merge`) in the wiring, run inside the merge's own transaction.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from identity import audit
from identity.identifiers import SECRET_TYPES
from identity.storage import Database, is_unique_violation
from identity.types import (
    AssociateResult,
    Identifier,
    IdentifierConflictError,
    IdentifierNotFoundError,
    LinkedIdentifier,
    UserNotFoundError,
)

PUBLIC_ID_PREFIX = "usr_"
_ATTEMPTS = 5  # tries of a batch whose insert lost a race with a concurrent one

# (transaction, kept user, merged-away user): moves the merged user's data to the kept one.
MergeHook = Callable[[Any, str, str], Awaitable[None]]
# (transaction, erased user): removes what a component keeps of the user; says how much.
EraseHook = Callable[[Any, str], Awaitable[dict[str, int]]]

_LOOKUP = (
    "SELECT u.public_id FROM user_identifiers i JOIN users u ON u.id = i.user_id"
    " WHERE i.formation_id = $1 AND i.identifier = $2"
)
_INSERT_USER = "INSERT INTO users (formation_id, public_id) VALUES ($1, $2) RETURNING id"
_INSERT_IDENTIFIER = (
    "INSERT INTO user_identifiers (formation_id, user_id, identifier, type) VALUES ($1, $2, $3, $4)"
)
# First contact in one statement (PostgreSQL): a lost race leaves no user row behind.
_CREATE_PG = (
    "WITH u AS (INSERT INTO users (formation_id, public_id) VALUES ($1, $2) RETURNING id)"
    " INSERT INTO user_identifiers (formation_id, user_id, identifier, type)"
    " SELECT $1, id, $3, $4 FROM u"
)


def new_public_id() -> str:
    # 16 random bytes -> 22 URL-safe characters.
    return PUBLIC_ID_PREFIX + secrets.token_urlsafe(16)


def masked(key: str, kind: str | None) -> str:
    """What a listing shows for a stored identifier key: hashed ones by fingerprint only."""
    if kind in SECRET_TYPES:
        return f"{kind}:…{key[-8:]}"
    return key


@dataclass(frozen=True)
class Owner:
    key: str
    user_id: str  # public
    type: str | None


@dataclass(frozen=True)
class Erasure:
    keys: list[str]  # the identifier keys the user had (for the caches to forget)
    counts: dict[str, int]  # what was removed, by kind
    user_ref: str  # what the audit record keeps of the user (audit.user_ref)


@dataclass(frozen=True)
class Plan:
    target: str | None  # None: create a new user
    to_link: list[Identifier]
    existing: list[Identifier]


def plan_association(
    idents: list[Identifier], owners: dict[str, Owner], requested: str | None
) -> Plan:
    """Decide who the batch links to, or raise a conflict. Never merges two users."""
    target = requested
    for ident in idents:
        owner = owners.get(ident.key)
        if owner is None:
            continue
        if target is None:
            target = owner.user_id
        elif owner.user_id != target:
            raise IdentifierConflictError(ident, owner.user_id, target)
    to_link = [i for i in idents if i.key not in owners]
    existing = [i for i in idents if i.key in owners]
    return Plan(target, to_link, existing)


class IdentityStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.merge_hooks: list[MergeHook] = []
        self.erase_hooks: list[EraseHook] = []
        postgres = db.dialect == "postgres"
        self._share = " FOR SHARE" if postgres else ""  # keeps a user from being merged away
        self._update = " FOR UPDATE" if postgres else ""

    def on_merge(self, hook: MergeHook) -> None:
        """Run `hook(tx, keep, absorb)` inside every merge, before `absorb` is deleted."""
        if hook not in self.merge_hooks:
            self.merge_hooks.append(hook)

    def on_erase(self, hook: EraseHook) -> None:
        """Run `hook(tx, user)` inside every erasure, before the user row goes."""
        if hook not in self.erase_hooks:
            self.erase_hooks.append(hook)

    # -- dialect hooks --

    def _in(self, start: int, count: int) -> str:
        """A list parameter: `= ANY($n)` on PostgreSQL, `IN ($n, …)` on SQLite."""
        if self.db.dialect == "postgres":
            return f"= ANY(${start}::text[])"
        return "IN (" + ", ".join(f"${start + i}" for i in range(count)) + ")"

    def _list(self, values: list[str]) -> tuple[Any, ...]:
        return (values,) if self.db.dialect == "postgres" else tuple(values)

    @staticmethod
    def _time(value: Any) -> datetime:
        if isinstance(value, datetime):
            return value
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))

    # -- reads --

    async def lookup(self, formation: str, key: str) -> str | None:
        """The public id of the user owning this identifier key, if any."""
        found: str | None = await self.db.fetchval(_LOOKUP, formation, key)
        return found

    async def user_exists(self, formation: str, user_id: str) -> bool:
        return await self.db.fetchval(
            "SELECT 1 FROM users WHERE formation_id = $1 AND public_id = $2",
            formation, user_id) is not None

    async def count_users(self, formation: str) -> int:
        return int(await self.db.fetchval(
            "SELECT count(*) FROM users WHERE formation_id = $1", formation) or 0)

    async def identifiers_of(self, formation: str, user_id: str, *,
                             q: Any = None) -> list[LinkedIdentifier]:
        rows = await (q or self.db).fetch(
            "SELECT u.id, i.identifier, i.type, i.created_at FROM users u"
            " LEFT JOIN user_identifiers i ON i.user_id = u.id"
            " WHERE u.formation_id = $1 AND u.public_id = $2 ORDER BY i.created_at, i.id",
            formation, user_id,
        )
        if not rows:
            raise UserNotFoundError(user_id)
        return [LinkedIdentifier(masked(r[1], r[2]), r[2], self._time(r[3]))
                for r in rows if r[1] is not None]

    # -- writes --

    async def resolve_or_create(self, formation: str, ident: Identifier) -> tuple[str, bool]:
        """The owner of `ident`, creating a user for it when it has none; (user_id, created)."""
        found = await self.lookup(formation, ident.key)
        if found is not None:
            return found, False
        public_id = new_public_id()
        if self.db.dialect == "postgres":
            try:
                await self.db.execute(_CREATE_PG, formation, public_id, ident.key, ident.type)
            except Exception as exc:
                if not is_unique_violation(exc):
                    raise
                winner = await self.lookup(formation, ident.key)  # a concurrent first contact
                assert winner is not None
                return winner, False
            return public_id, True
        async with self.db.transaction() as tx:
            winner = await tx.fetchval(_LOOKUP, formation, ident.key)
            if winner is not None:
                return winner, False
            row = await tx.fetchval(_INSERT_USER, formation, public_id)
            await tx.execute(_INSERT_IDENTIFIER, formation, row, ident.key, ident.type)
        return public_id, True

    async def associate(
        self, formation: str, idents: list[Identifier], user_id: str | None, *,
        actor: str = audit.INTERNAL,
    ) -> AssociateResult:
        """Link all of `idents` to one user in one transaction, or nothing at all."""
        for attempt in range(_ATTEMPTS):
            try:
                async with self.db.transaction() as tx:
                    result = await self._associate(tx, formation, idents, user_id)
                    for ident in result.linked:
                        await audit.record(tx, formation, actor, "link",
                                           user_id=result.user_id, identifier=ident,
                                           before={"user_id": None},
                                           after={"user_id": result.user_id,
                                                  "created_user": result.created_user})
                    return result
            except Exception as exc:
                # A concurrent batch linked one of ours between our read and our write.
                if not is_unique_violation(exc) or attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _associate(self, tx: Any, formation: str, idents: list[Identifier],
                         user_id: str | None) -> AssociateResult:
        keys = [i.key for i in idents]
        target_row = None
        if user_id is not None:
            target_row = await tx.fetchval(
                "SELECT id FROM users WHERE formation_id = $1 AND public_id = $2" + self._share,
                formation, user_id)
            if target_row is None:
                raise UserNotFoundError(user_id)
        # The identifiers' rows and their owners are locked (PostgreSQL), so neither a
        # concurrent batch nor a merge can move them under us.
        lock = " FOR UPDATE OF i FOR SHARE OF u" if self.db.dialect == "postgres" else ""
        rows = await tx.fetch(
            "SELECT i.identifier, i.type, u.public_id, u.id FROM user_identifiers i"
            " JOIN users u ON u.id = i.user_id"
            f" WHERE i.formation_id = $1 AND i.identifier {self._in(2, len(keys))}{lock}",
            formation, *self._list(keys),
        )
        owners = {r[0]: Owner(r[0], r[2], r[1]) for r in rows}
        row_ids = {r[2]: r[3] for r in rows}
        plan = plan_association(idents, owners, user_id)
        created = plan.target is None
        target = plan.target or new_public_id()
        if created:
            target_row = await tx.fetchval(_INSERT_USER, formation, target)
        elif target_row is None:
            target_row = row_ids[target]
        if plan.to_link:
            await tx.executemany(_INSERT_IDENTIFIER,
                                 [(formation, target_row, i.key, i.type) for i in plan.to_link])
        # A bare value linked before, now given its type: remember the type.
        for ident in plan.existing:
            if ident.type and owners[ident.key].type is None:
                await tx.execute(
                    "UPDATE user_identifiers SET type = $3"
                    " WHERE formation_id = $1 AND identifier = $2",
                    formation, ident.key, ident.type)
        return AssociateResult(target, created, tuple(plan.to_link), tuple(plan.existing))

    async def unlink(self, formation: str, ident: Identifier, *,
                     actor: str = audit.INTERNAL) -> str:
        """Remove the link; returns the public id of the user it belonged to."""
        async with self.db.transaction() as tx:
            owner = await tx.fetchval(
                "DELETE FROM user_identifiers WHERE formation_id = $1 AND identifier = $2"
                " RETURNING (SELECT public_id FROM users WHERE users.id = user_id)",
                formation, ident.key)
            if owner is not None:
                await audit.record(tx, formation, actor, "unlink", user_id=str(owner),
                                   identifier=ident, before={"user_id": str(owner)},
                                   after={"user_id": None})
        if owner is None:
            raise IdentifierNotFoundError(ident)
        return str(owner)

    async def merge(self, formation: str, keep: str, absorb: str, *,
                    q: Any = None, actor: str = audit.INTERNAL) -> list[str]:
        """Move every identifier and all data of `absorb` to `keep`, then delete `absorb`;
        returns the moved identifier keys. One transaction (`q`'s, when given)."""
        if q is None:
            async with self.db.transaction() as tx:
                return await self.merge(formation, keep, absorb, q=tx, actor=actor)
        # Both users locked, in id order (no deadlock with a merge the other way round).
        rows = await q.fetch(
            "SELECT public_id, id FROM users WHERE formation_id = $1"
            f" AND public_id IN ($2, $3) ORDER BY id{self._update}",
            formation, keep, absorb)
        ids = {r[0]: r[1] for r in rows}
        for user in (keep, absorb):
            if user not in ids:
                raise UserNotFoundError(user)
        moved = await q.fetch(
            "UPDATE user_identifiers SET user_id = $1 WHERE user_id = $2"
            " RETURNING identifier, type", ids[keep], ids[absorb])
        # One record per identifier that changed owner (one without any, if none did).
        changed: list[tuple[str, str | None] | None] = [(r[0], r[1]) for r in moved]
        for identifier in changed or [None]:
            await audit.record(q, formation, actor, "merge", user_id=keep,
                               identifier=identifier, before={"user_id": absorb},
                               after={"user_id": keep})
        for hook in self.merge_hooks:
            await hook(q, keep, absorb)
        await q.execute("DELETE FROM users WHERE id = $1", ids[absorb])
        return [r[0] for r in moved]

    async def erase(self, formation: str, user_id: str, *,
                    actor: str = audit.INTERNAL) -> Erasure:
        """Remove the user everywhere in one transaction: identifiers, link codes and
        attempts, every component's data (erase hooks), and the personal fields of audit
        records about them; one audit record of the erasure stays, without personal data."""
        async with self.db.transaction() as tx:
            row = await tx.fetchval(
                "SELECT id FROM users WHERE formation_id = $1 AND public_id = $2"
                + self._update, formation, user_id)
            if row is None:
                raise UserNotFoundError(user_id)
            keys = [r[0] for r in await tx.fetch(
                "SELECT identifier FROM user_identifiers WHERE user_id = $1", row)]
            counts: dict[str, int] = {"identifiers": len(keys)}
            for hook in self.erase_hooks:
                counts.update(await hook(tx, user_id))
            if keys:
                await tx.execute(
                    "DELETE FROM link_attempts WHERE formation_id = $1"
                    f" AND identifier {self._in(2, len(keys))}", formation, *self._list(keys))
            await tx.execute("DELETE FROM users WHERE id = $1", row)  # identifiers, codes
            counts["audit_records_blanked"] = await audit.blank(
                tx, formation, user_id, keys, dialect=self.db.dialect)
            ref = audit.user_ref(user_id)
            await audit.record(tx, formation, actor, "erase", user_id=None,
                               after={"user_ref": ref, "removed": counts})
        return Erasure(keys, counts, ref)
