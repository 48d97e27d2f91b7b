"""The identity store contract and the decisions both implementations share.

A store speaks public user ids (`usr_…`) only; internal row ids stay inside it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Protocol

from identity.identifiers import SECRET_TYPES
from identity.types import (
    AssociateResult,
    Identifier,
    IdentifierConflictError,
    LinkedIdentifier,
)

PUBLIC_ID_PREFIX = "usr_"

# Statements other components register so that merging two users carries their data along.
# Each runs inside the merge transaction with $1 = the kept user's public id and
# $2 = the merged-away user's, before that user is deleted.
MERGE_STATEMENTS: list[str] = []


def register_merge_statements(*statements: str) -> None:
    for statement in statements:
        if statement not in MERGE_STATEMENTS:
            MERGE_STATEMENTS.append(statement)


def new_public_id() -> str:
    # 16 random bytes -> 22 URL-safe characters.
    return PUBLIC_ID_PREFIX + secrets.token_urlsafe(16)


def masked(key: str, kind: str | None) -> str:
    """What a listing shows for a stored identifier key: hashed ones by fingerprint only."""
    if kind in SECRET_TYPES:
        return f"{kind}:…{key[-8:]}"
    return key


class IdentityStore(Protocol):
    async def lookup(self, formation: str, key: str) -> str | None:
        """The public id of the user owning this identifier key, if any."""

    async def resolve_or_create(self, formation: str, ident: Identifier) -> tuple[str, bool]:
        """The owner of `ident`, creating a user for it when it has none; (user_id, created)."""

    async def associate(
        self, formation: str, idents: list[Identifier], user_id: str | None
    ) -> AssociateResult:
        """Link all of `idents` to one user in one transaction, or nothing at all."""

    async def identifiers_of(self, formation: str, user_id: str) -> list[LinkedIdentifier]: ...

    async def unlink(self, formation: str, ident: Identifier) -> str:
        """Remove the link; returns the public id of the user it belonged to."""

    async def user_exists(self, formation: str, user_id: str) -> bool: ...

    async def merge(self, formation: str, keep: str, absorb: str) -> list[str]:
        """Move every identifier and all data of `absorb` to `keep`, then delete `absorb`;
        returns the moved identifier keys. One transaction."""

    async def count_users(self, formation: str) -> int: ...


@dataclass(frozen=True)
class Owner:
    key: str
    user_id: str  # public
    type: str | None


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

