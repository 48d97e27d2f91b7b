"""The identity store on PostgreSQL (asyncpg)."""

from __future__ import annotations

import asyncpg

from identity.database import PostgresDatabase
from identity.store import (
    MERGE_STATEMENTS,
    Owner,
    masked,
    new_public_id,
    plan_association,
)
from identity.types import (
    AssociateResult,
    Identifier,
    IdentifierNotFoundError,
    LinkedIdentifier,
    UserNotFoundError,
)

_LOOKUP = (
    "SELECT u.public_id FROM user_identifiers i JOIN users u ON u.id = i.user_id"
    " WHERE i.formation_id = $1 AND i.identifier = $2"
)
_INSERT_USER = "INSERT INTO users (formation_id, public_id) VALUES ($1, $2) RETURNING id"
_INSERT_IDENTIFIER = (
    "INSERT INTO user_identifiers (formation_id, user_id, identifier, type) VALUES ($1, $2, $3, $4)"
)
_CREATE = (
    "WITH u AS (INSERT INTO users (formation_id, public_id) VALUES ($1, $2) RETURNING id)"
    " INSERT INTO user_identifiers (formation_id, user_id, identifier, type)"
    " SELECT $1, id, $3, $4 FROM u"
)
_ATTEMPTS = 5


class PostgresIdentityStore:
    def __init__(self, db: PostgresDatabase) -> None:
        self._pool = db.pool

    async def lookup(self, formation: str, key: str) -> str | None:
        async with self._pool.acquire() as conn:
            return await conn.fetchval(_LOOKUP, formation, key)

    async def resolve_or_create(self, formation: str, ident: Identifier) -> tuple[str, bool]:
        async with self._pool.acquire() as conn:
            found = await conn.fetchval(_LOOKUP, formation, ident.key)
            if found is not None:
                return found, False
            public_id = new_public_id()
            try:
                # One statement, so one round trip and all or nothing: when a concurrent
                # first contact won, our user row goes with the failed identifier insert.
                await conn.execute(_CREATE, formation, public_id, ident.key, ident.type)
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != "user_identifiers_unique":
                    raise
                return await conn.fetchval(_LOOKUP, formation, ident.key), False
            return public_id, True

    async def associate(
        self, formation: str, idents: list[Identifier], user_id: str | None
    ) -> AssociateResult:
        for attempt in range(_ATTEMPTS):
            try:
                return await self._associate_once(formation, idents, user_id)
            except asyncpg.UniqueViolationError:
                # A concurrent batch linked one of ours between our read and our write.
                if attempt == _ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    async def _associate_once(
        self, formation: str, idents: list[Identifier], user_id: str | None
    ) -> AssociateResult:
        keys = [i.key for i in idents]
        async with self._pool.acquire() as conn, conn.transaction():
            target_row = None
            if user_id is not None:
                target_row = await conn.fetchval(
                    "SELECT id FROM users WHERE formation_id = $1 AND public_id = $2",
                    formation, user_id,
                )
                if target_row is None:
                    raise UserNotFoundError(user_id)
            rows = await conn.fetch(
                "SELECT i.identifier, i.type, u.public_id, u.id FROM user_identifiers i"
                " JOIN users u ON u.id = i.user_id"
                " WHERE i.formation_id = $1 AND i.identifier = ANY($2::text[])"
                " FOR UPDATE OF i",
                formation, keys,
            )
            owners = {r["identifier"]: Owner(r["identifier"], r["public_id"], r["type"])
                      for r in rows}
            row_ids = {r["public_id"]: r["id"] for r in rows}
            plan = plan_association(idents, owners, user_id)
            created = plan.target is None
            target = plan.target or new_public_id()
            if created:
                target_row = await conn.fetchval(_INSERT_USER, formation, target)
            elif target_row is None:
                target_row = row_ids[target]
            if plan.to_link:
                await conn.executemany(
                    _INSERT_IDENTIFIER,
                    [(formation, target_row, i.key, i.type) for i in plan.to_link],
                )
            # A bare value linked before, now given its type: remember the type.
            for ident in plan.existing:
                if ident.type and owners[ident.key].type is None:
                    await conn.execute(
                        "UPDATE user_identifiers SET type = $3"
                        " WHERE formation_id = $1 AND identifier = $2",
                        formation, ident.key, ident.type,
                    )
        return AssociateResult(target, created, tuple(plan.to_link), tuple(plan.existing))

    async def identifiers_of(self, formation: str, user_id: str) -> list[LinkedIdentifier]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT u.id, i.identifier, i.type, i.created_at FROM users u"
                " LEFT JOIN user_identifiers i ON i.user_id = u.id"
                " WHERE u.formation_id = $1 AND u.public_id = $2 ORDER BY i.created_at, i.id",
                formation, user_id,
            )
        if not rows:
            raise UserNotFoundError(user_id)
        return [
            LinkedIdentifier(masked(r["identifier"], r["type"]), r["type"], r["created_at"])
            for r in rows
            if r["identifier"] is not None
        ]

    async def unlink(self, formation: str, ident: Identifier) -> str:
        async with self._pool.acquire() as conn:
            owner = await conn.fetchval(
                "DELETE FROM user_identifiers i USING users u"
                " WHERE i.formation_id = $1 AND i.identifier = $2 AND u.id = i.user_id"
                " RETURNING u.public_id",
                formation, ident.key,
            )
        if owner is None:
            raise IdentifierNotFoundError(ident)
        return owner

    async def merge(self, formation: str, keep: str, absorb: str) -> list[str]:
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT public_id, id FROM users WHERE formation_id = $1"
                " AND public_id = ANY($2::text[]) ORDER BY id FOR UPDATE",
                formation, [keep, absorb],
            )
            ids = {r["public_id"]: r["id"] for r in rows}
            for user in (keep, absorb):
                if user not in ids:
                    raise UserNotFoundError(user)
            moved = await conn.fetch(
                "UPDATE user_identifiers SET user_id = $1 WHERE user_id = $2 RETURNING identifier",
                ids[keep], ids[absorb],
            )
            for statement in MERGE_STATEMENTS:
                await conn.execute(statement, keep, absorb)
            await conn.execute("DELETE FROM users WHERE id = $1", ids[absorb])
        return [r["identifier"] for r in moved]

    async def user_exists(self, formation: str, user_id: str) -> bool:
        async with self._pool.acquire() as conn:
            return bool(await conn.fetchval(
                "SELECT 1 FROM users WHERE formation_id = $1 AND public_id = $2",
                formation, user_id,
            ))

    async def count_users(self, formation: str) -> int:
        async with self._pool.acquire() as conn:
            return await conn.fetchval(
                "SELECT count(*) FROM users WHERE formation_id = $1", formation
            )
