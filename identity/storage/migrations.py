"""Versioned schema migrations: each component keeps NNNN_name.sql files in a folder.

NNNN_name.sql serves both databases; NNNN_name.postgres.sql / .sqlite.sql only one. Which
components a database gets is said by the wiring (a `Schema`), not by importing modules.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

Schema = Mapping[str, Path]  # component -> its migrations folder, applied in this order

IDENTITY_SCHEMA: dict[str, Path] = {
    "identity": Path(__file__).parent.parent / "migrations",
}
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)(?:\.(postgres|sqlite))?\.sql$")


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str


def migrations_for(dialect: str, schema: Schema) -> list[Migration]:
    found = []
    for component, folder in schema.items():
        for path in sorted(folder.glob("*.sql")):
            match = _MIGRATION_FILE.match(path.name)
            if match and match.group(3) in (dialect, None):
                found.append(
                    Migration(component, int(match.group(1)), match.group(2), path.read_text())
                )
    return found


def statements(sql: str) -> list[str]:
    """The statements of a migration file, one by one (SQLite runs them singly); a trigger's
    BEGIN … END body, semicolons and all, stays one statement."""
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    found: list[str] = []
    pending = ""
    for part in "\n".join(lines).split(";"):
        pending = f"{pending};{part}" if pending else part
        text = pending.strip()
        if not text:
            pending = ""
            continue
        in_trigger = text.upper().startswith("CREATE TRIGGER")
        if in_trigger and not text.upper().endswith("END"):
            continue  # inside the trigger's body
        found.append(text)
        pending = ""
    return found
