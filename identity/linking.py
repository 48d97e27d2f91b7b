"""Self-service linking: a person proves both sides by carrying a one-time code across.

`/link` on channel A gives a code; `/link CODE` sent from channel B joins B's identifier to
A's user. When B's identifier was only a first-contact user of its own, that user (and what
it said) is merged in; when it belongs to someone with other identifiers, nothing changes.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from identity.database import Database
from identity.service import IdentityService
from identity.types import Identifier

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
CODE_LENGTH = 10
CODE_TTL = 600.0
MAX_FAILURES = 5  # per identifier per CODE_TTL


@dataclass(frozen=True)
class LinkOutcome:
    status: str  # linked, already, invalid, limited, conflict
    user_id: str | None = None
    others: int = 0


def _hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def normalize_code(text: str) -> str:
    return "".join(ch for ch in text.upper() if ch.isalnum())


class Linker:
    def __init__(self, db: Database, identity: IdentityService) -> None:
        self.db = db
        self.identity = identity

    async def issue(self, formation: str, user_id: str) -> str:
        code = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
        at = time.time()
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM link_codes WHERE expires_at < $1", at)
            await tx.execute(
                "INSERT INTO link_codes (code_hash, formation_id, user_id, expires_at)"
                " VALUES ($1, $2, $3, $4)",
                _hash(code), formation, user_id, at + CODE_TTL,
            )
        return code

    async def redeem(self, formation: str, ident: Identifier, current_user: str,
                     code: str) -> LinkOutcome:
        at = time.time()
        failures = await self.db.fetchval(
            "SELECT count(*) FROM link_attempts WHERE formation_id = $1 AND identifier = $2"
            " AND at > $3",
            formation, ident.key, at - CODE_TTL,
        )
        if failures >= MAX_FAILURES:
            return LinkOutcome("limited")
        owner = await self.db.fetchval(
            "SELECT user_id FROM link_codes WHERE code_hash = $1 AND formation_id = $2"
            " AND expires_at >= $3",
            _hash(normalize_code(code)), formation, at,
        )
        if owner is None:
            await self.db.execute(
                "INSERT INTO link_attempts (formation_id, identifier, at) VALUES ($1, $2, $3)",
                formation, ident.key, at,
            )
            return LinkOutcome("invalid")
        if owner == current_user:
            return LinkOutcome("already", owner)
        others = [i for i in await self.identity.identifiers_of(formation, current_user)]
        if len(others) > 1:
            return LinkOutcome("conflict", current_user, len(others) - 1)
        # Single use: whoever deletes the code first links.
        async with self.db.transaction() as tx:
            claimed = await tx.fetchval(
                "DELETE FROM link_codes WHERE code_hash = $1 RETURNING user_id",
                _hash(normalize_code(code)),
            )
        if claimed is None:
            return LinkOutcome("invalid")
        await self.identity.merge(formation, owner, current_user)
        return LinkOutcome("linked", owner)
