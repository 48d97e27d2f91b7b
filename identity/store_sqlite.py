"""The identity store on SQLite (aiosqlite).

Every write runs under BEGIN IMMEDIATE, so writers from this and other processes are
serialized by SQLite itself: check-then-insert cannot race, and full multi-identity works.
"""

from __future__ import annotations

from datetime import datetime

from identity.database import SqliteDatabase, numbered
from identity.store import MERGE_STATEMENTS, Owner, masked, new_public_id, plan_association
from identity.types import (
    AssociateResult,
    Identifier,
    IdentifierNotFoundError,
    LinkedIdentifier,
    UserNotFoundError,
)

_LOOKUP = (
    "SELECT u.public_id FROM user_identifiers i JOIN users u ON u.id = i.user_id"
    " WHERE i.formation_id = ? AND i.identifier = ?"
)
_INSERT_USER = "INSERT INTO users (formation_id, public_id) VALUES (?, ?)"
_INSERT_IDENTIFIER = (
    "INSERT INTO user_identifiers (formation_id, user_id, identifier, type) VALUES (?, ?, ?, ?)"
)


def _timestamp(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class SqliteIdentityStore:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    async def lookup(self, formation: str, key: str) -> str | None:
        row = await self._db.fetchone(_LOOKUP, formation, key)
        return row[0] if row else None

    async def resolve_or_create(self, formation: str, ident: Identifier) -> tuple[str, bool]:
        found = await self.lookup(formation, ident.key)
        if found is not None:
            return found, False
        async with self._db.write() as conn:
            rows = list(await conn.execute_fetchall(_LOOKUP, (formation, ident.key)))
            if rows:
                return rows[0][0], False
            public_id = new_public_id()
            cursor = await conn.execute(_INSERT_USER, (formation, public_id))
            await conn.execute(
                _INSERT_IDENTIFIER, (formation, cursor.lastrowid, ident.key, ident.type)
            )
        return public_id, True

    async def associate(
        self, formation: str, idents: list[Identifier], user_id: str | None
    ) -> AssociateResult:
        keys = [i.key for i in idents]
        async with self._db.write() as conn:
            target_row = None
            if user_id is not None:
                rows = list(await conn.execute_fetchall(
                    "SELECT id FROM users WHERE formation_id = ? AND public_id = ?",
                    (formation, user_id),
                ))
                if not rows:
                    raise UserNotFoundError(user_id)
                target_row = rows[0][0]
            marks = ",".join("?" * len(keys))
            rows = list(await conn.execute_fetchall(
                "SELECT i.identifier, i.type, u.public_id, u.id FROM user_identifiers i"
                " JOIN users u ON u.id = i.user_id"
                f" WHERE i.formation_id = ? AND i.identifier IN ({marks})",
                (formation, *keys),
            ))
            owners = {r[0]: Owner(r[0], r[2], r[1]) for r in rows}
            row_ids = {r[2]: r[3] for r in rows}
            plan = plan_association(idents, owners, user_id)
            created = plan.target is None
            target = plan.target or new_public_id()
            if created:
                cursor = await conn.execute(_INSERT_USER, (formation, target))
                target_row = cursor.lastrowid
            elif target_row is None:
                target_row = row_ids[target]
            await conn.executemany(
                _INSERT_IDENTIFIER, [(formation, target_row, i.key, i.type) for i in plan.to_link]
            )
            # A bare value linked before, now given its type: remember the type.
            for ident in plan.existing:
                if ident.type and owners[ident.key].type is None:
                    await conn.execute(
                        "UPDATE user_identifiers SET type = ?"
                        " WHERE formation_id = ? AND identifier = ?",
                        (ident.type, formation, ident.key),
                    )
        return AssociateResult(target, created, tuple(plan.to_link), tuple(plan.existing))

    async def identifiers_of(self, formation: str, user_id: str) -> list[LinkedIdentifier]:
        rows = await self._db.fetchall(
            "SELECT u.id, i.identifier, i.type, i.created_at FROM users u"
            " LEFT JOIN user_identifiers i ON i.user_id = u.id"
            " WHERE u.formation_id = ? AND u.public_id = ? ORDER BY i.created_at, i.id",
            formation, user_id,
        )
        if not rows:
            raise UserNotFoundError(user_id)
        return [
            LinkedIdentifier(masked(r[1], r[2]), r[2], _timestamp(r[3]))
            for r in rows
            if r[1] is not None
        ]

    async def unlink(self, formation: str, ident: Identifier) -> str:
        async with self._db.write() as conn:
            rows = list(await conn.execute_fetchall(
                "DELETE FROM user_identifiers WHERE formation_id = ? AND identifier = ?"
                " RETURNING (SELECT public_id FROM users WHERE users.id = user_id)",
                (formation, ident.key),
            ))
        if not rows:
            raise IdentifierNotFoundError(ident)
        return rows[0][0]

    async def merge(self, formation: str, keep: str, absorb: str) -> list[str]:
        async with self._db.write() as conn:
            rows = list(await conn.execute_fetchall(
                "SELECT public_id, id FROM users WHERE formation_id = ? AND public_id IN (?, ?)",
                (formation, keep, absorb),
            ))
            ids = {r[0]: r[1] for r in rows}
            for user in (keep, absorb):
                if user not in ids:
                    raise UserNotFoundError(user)
            moved = list(await conn.execute_fetchall(
                "UPDATE user_identifiers SET user_id = ? WHERE user_id = ? RETURNING identifier",
                (ids[keep], ids[absorb]),
            ))
            for statement in MERGE_STATEMENTS:
                await conn.execute(numbered(statement), (keep, absorb))
            await conn.execute("DELETE FROM users WHERE id = ?", (ids[absorb],))
        return [r[0] for r in moved]

    async def user_exists(self, formation: str, user_id: str) -> bool:
        row = await self._db.fetchone(
            "SELECT 1 FROM users WHERE formation_id = ? AND public_id = ?", formation, user_id
        )
        return row is not None

    async def count_users(self, formation: str) -> int:
        row = await self._db.fetchone("SELECT count(*) FROM users WHERE formation_id = ?",
                                      formation)
        return int(row[0]) if row else 0
