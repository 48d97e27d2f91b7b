"""One user behind every identifier: parsing, resolution, linking, per-formation scoping."""

from identity.database import Database, DatabaseError, PostgresDatabase, SqliteDatabase, connect
from identity.identifiers import IdentifierParser
from identity.service import IdentityService, InvalidFormationError
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
    """The identity store implementation for this database."""
    if isinstance(db, PostgresDatabase):
        from identity.store_postgres import PostgresIdentityStore

        return PostgresIdentityStore(db)
    if isinstance(db, SqliteDatabase):
        from identity.store_sqlite import SqliteIdentityStore

        return SqliteIdentityStore(db)
    raise TypeError(f"no identity store for {type(db).__name__}")


__all__ = [
    "AssociateResult", "Database", "DatabaseError", "Identifier", "IdentifierConflictError",
    "IdentifierNotFoundError", "IdentifierParser", "IdentityError", "IdentityService",
    "IdentityStore", "InvalidFormationError", "InvalidIdentifierError", "LinkedIdentifier",
    "UserNotFoundError", "connect", "store_for",
]
