"""The database layer identity and memory share: connections to PostgreSQL (asyncpg) and
SQLite (aiosqlite) behind one query API, the dialect hooks, and versioned migrations."""

from identity.storage.database import (
    Database,
    DatabaseError,
    DatabaseUnavailableError,
    PostgresDatabase,
    SqliteDatabase,
    connect,
    describe_url,
    is_connection_error,
    is_foreign_key_violation,
    is_unique_violation,
)
from identity.storage.migrations import IDENTITY_SCHEMA, Migration, Schema

__all__ = [
    "IDENTITY_SCHEMA", "Database", "DatabaseError", "DatabaseUnavailableError", "Migration",
    "PostgresDatabase", "Schema", "SqliteDatabase", "connect", "describe_url",
    "is_connection_error", "is_foreign_key_violation", "is_unique_violation",
]
