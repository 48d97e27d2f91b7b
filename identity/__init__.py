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
    UserNotFoundError,
)


def store_for(db: Database) -> IdentityStore:
    """The identity store on this database (one implementation for both dialects)."""
    return IdentityStore(db)


__all__ = [
    "AssociateResult", "Database", "DatabaseError", "Identifier", "IdentifierConflictError",
    "IdentifierNotFoundError", "IdentifierParser", "IdentityError", "IdentityService",
    "IdentityStore", "InvalidFormationError", "InvalidIdentifierError", "LinkedIdentifier",
    "UserNotFoundError", "connect", "store_for",
]
