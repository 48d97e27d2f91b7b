"""One user behind every identifier: parsing, resolution, linking, per-formation scoping."""

from identity.identifiers import IdentifierParser
from identity.service import IdentityService, InvalidFormationError
from identity.storage import Database, DatabaseError, connect
from identity.store import IdentityStore
from identity.types import (
    AssociateResult,
    Identifier,
    IdentifierConflictError,
    IdentifierNotFoundError,
    IdentityError,
    InvalidIdentifierError,
    LinkedIdentifier,
    MergeNotFoundError,
    MergeRecord,
    MergeUndoRefusedError,
    MovedIdentifier,
    UserNotFoundError,
)


def store_for(db: Database, *, merge_retention_days: float = 30) -> IdentityStore:
    """The identity store on this database (one implementation for both dialects)."""
    return IdentityStore(db, merge_retention=merge_retention_days * 86400)


__all__ = [
    "AssociateResult", "Database", "DatabaseError", "Identifier", "IdentifierConflictError",
    "IdentifierNotFoundError", "IdentifierParser", "IdentityError", "IdentityService",
    "IdentityStore", "InvalidFormationError", "InvalidIdentifierError", "LinkedIdentifier",
    "MergeNotFoundError", "MergeRecord", "MergeUndoRefusedError", "MovedIdentifier",
    "UserNotFoundError", "connect", "store_for",
]
