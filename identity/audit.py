"""The audit log: who changed which identifiers of which user (link, unlink, merge, code
redemption, erasure). Each record is written in the change's own transaction, so a change and its
record commit together; the table refuses updates and deletes.

`actor` says who asked: `admin_key` (the formation API), `cli`, `channel:<type>` (a person's
own /link or /unlink, named by the type of the identifier they wrote from) or `internal`."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

from identity.identifiers import SECRET_TYPES
from identity.storage import Database
from identity.types import Identifier

INTERNAL = "internal"
ERASED = '{"erased": true}'  # the only state a blanked record may hold (migration 0004)


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str  # link, unlink, merge, link_code_redeemed, erase
    user_id: str | None
    identifier: str | None  # as listings show it: secret ones by fingerprint only
    identifier_type: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


def _shown(key: str | None, kind: str | None) -> str | None:
    if key is None or kind not in SECRET_TYPES:
        return key
    return f"{kind}:…{key[-8:]}"


async def record(q: Any, formation: str, actor: str, action: str, *, user_id: str | None,
                 identifier: tuple[str, str | None] | Identifier | None = None,
                 before: dict[str, Any] | None = None,
                 after: dict[str, Any] | None = None) -> None:
    """Append one record inside the transaction `q`. An identifier is kept by its stored
    key (a secret one's keyed hash, never the secret)."""
    key, kind = ((identifier.key, identifier.type) if isinstance(identifier, Identifier)
                 else identifier or (None, None))
    await q.execute(
        "INSERT INTO audit_log (formation_id, at, actor, action, user_id, identifier,"
        " identifier_type, before_state, after_state) VALUES ($1, $2, $3, $4, $5, $6, $7,"
        " $8, $9)",
        formation, time.time(), actor, action, user_id, key, kind,
        None if before is None else json.dumps(before),
        None if after is None else json.dumps(after))


def user_ref(user_id: str) -> str:
    """What the record of an erasure keeps of the user: a one-way digest of the (random)
    public id, so an operator holding the id can show it was erased, and nobody can go
    from the record back to the person."""
    return "sha256:" + hashlib.sha256(user_id.encode()).hexdigest()[:32]


async def blank(q: Any, formation: str, user_id: str, keys: list[str], *,
                dialect: str) -> int:
    """Inside an erasure's transaction: blank the personal fields of every record about the
    user, by id, by one of their identifier keys, or naming them in a state (a merge's
    `before`). The kind of change, when and who asked stay. Returns how many."""
    contains = "strpos({}, $2) > 0" if dialect == "postgres" else "instr({}, $2) > 0"
    keyed = ""
    if keys:
        listed = ("= ANY($3::text[])" if dialect == "postgres"
                  else "IN (" + ", ".join(f"${3 + i}" for i in range(len(keys))) + ")")
        keyed = f" OR identifier {listed}"
    args: tuple[Any, ...] = ((keys,) if dialect == "postgres" else tuple(keys)) if keys else ()
    rows = await q.fetch(
        "UPDATE audit_log SET user_id = NULL, identifier = NULL, before_state = NULL,"
        f" after_state = '{ERASED}' WHERE formation_id = $1 AND (user_id = $2{keyed}"
        f" OR {contains.format('before_state')} OR {contains.format('after_state')})"
        " RETURNING id", formation, user_id, *args)
    return len(rows)


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def entries(self, formation: str, *, user_id: str | None = None,
                      identifier_key: str | None = None, since: float | None = None,
                      until: float | None = None, limit: int = 100) -> list[AuditEntry]:
        """The newest first. `user_id` is the user a record is about (after a merge, the
        user kept; the merged-away one is in `before`)."""
        where: list[str] = ["formation_id = $1"]
        args: list[Any] = [formation]
        filters: tuple[tuple[str, Any], ...] = (
            ("user_id =", user_id), ("identifier =", identifier_key), ("at >=", since),
            ("at <", until))
        for clause, value in filters:
            if value is not None:
                args.append(value)
                where.append(f"{clause} ${len(args)}")
        rows = await self.db.fetch(
            "SELECT id, at, actor, action, user_id, identifier, identifier_type, before_state,"
            f" after_state FROM audit_log WHERE {' AND '.join(where)}"
            f" ORDER BY at DESC, id DESC LIMIT ${len(args) + 1}", *args, limit)
        return [AuditEntry(int(r[0]), float(r[1]), r[2], r[3], r[4], _shown(r[5], r[6]), r[6],
                           json.loads(r[7]) if r[7] else None,
                           json.loads(r[8]) if r[8] else None) for r in rows]
