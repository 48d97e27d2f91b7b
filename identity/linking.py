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

import structlog

from identity import audit
from identity.service import IdentityService
from identity.storage import Database
from identity.types import Identifier

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
CODE_LENGTH = 10
CODE_TTL = 600.0
MAX_FAILURES = 5  # per identifier per CODE_TTL

log = structlog.get_logger("threadline.identity")


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
                     code: str, *, actor: str | None = None) -> LinkOutcome:
        """One transaction: the try counter, the code's owner, the checks, consuming the
        code and the merge all commit together or not at all; tries by one identifier are
        serialized, so parallel wrong guesses cannot exceed the limit."""
        at, code_hash = time.time(), _hash(normalize_code(code))
        moved: list[str] = []  # the identifier keys the merge moved
        async with self.db.transaction() as tx:
            if self.db.dialect == "postgres":  # SQLite write transactions are serialized
                await tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))",
                                 f"link\x1f{formation}\x1f{ident.key}")
            failures = await tx.fetchval(
                "SELECT count(*) FROM link_attempts WHERE formation_id = $1 AND identifier = $2"
                " AND at > $3", formation, ident.key, at - CODE_TTL)
            if failures >= MAX_FAILURES:
                return LinkOutcome("limited")
            owner = await tx.fetchval(
                "SELECT user_id FROM link_codes WHERE code_hash = $1 AND formation_id = $2"
                " AND expires_at >= $3" + self._lock, code_hash, formation, at)
            if owner is None:
                await tx.execute(
                    "INSERT INTO link_attempts (formation_id, identifier, at) VALUES ($1, $2, $3)",
                    formation, ident.key, at)
                return LinkOutcome("invalid")
            if owner == current_user:
                return LinkOutcome("already", owner)
            others = await self.identity.store.identifiers_of(formation, current_user, q=tx)
            if len(others) > 1:
                return LinkOutcome("conflict", current_user, len(others) - 1)
            await tx.execute("DELETE FROM link_codes WHERE code_hash = $1", code_hash)  # once
            # Audited as asked by the person writing from `ident` (unless told otherwise).
            actor = actor or f"channel:{ident.type or 'unknown'}"
            await audit.record(tx, formation, actor, "link_code_redeemed", user_id=owner,
                               identifier=ident, before={"user_id": current_user},
                               after={"user_id": owner})
            moved = (await self.identity.store.merge(formation, owner, current_user, q=tx,
                                                     actor=actor)).keys
        await self.identity.forget(formation, moved)  # after the commit, never before
        log.info("identifier linked by code", formation=formation, user_id=owner,
                 merged=current_user, identifier_type=ident.type)
        return LinkOutcome("linked", owner)

    @property
    def _lock(self) -> str:
        return " FOR UPDATE" if self.db.dialect == "postgres" else ""
