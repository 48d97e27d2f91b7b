"""The operators' view of a formation's users: list and search them, page by page.

A page ends with an opaque cursor (the last user's row id, encoded), so pages stay stable
while users are created or erased between requests.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from identity.identifiers import SECRET_TYPES
from identity.storage import Database
from identity.store import masked
from identity.types import InvalidIdentifierError, LinkedIdentifier


class InvalidCursorError(InvalidIdentifierError):
    def __init__(self) -> None:
        super().__init__("the cursor is not one this listing gave; start again without it",
                         field="cursor")


@dataclass(frozen=True)
class ListedUser:
    user_id: str
    created_at: datetime
    identifiers: list[LinkedIdentifier]


@dataclass(frozen=True)
class UserPage:
    users: list[ListedUser]
    next_cursor: str | None


def _cursor(row_id: int) -> str:
    return base64.urlsafe_b64encode(f"u{row_id}".encode()).decode().rstrip("=")


def _row_after(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not text.startswith("u"):
            raise ValueError(text)
        return int(text[1:])
    except ValueError:
        raise InvalidCursorError() from None


def _time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


class UserDirectory:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def page(self, formation: str, *, prefix: str | None = None,
                   kind: str | None = None, since: datetime | None = None,
                   until: datetime | None = None, limit: int = 50,
                   cursor: str | None = None) -> UserPage:
        """Users in creation order. `prefix`: one of their identifiers starts with it
        (any case; secret identifiers never match); `kind`: they have an identifier of that type."""
        where = ["u.formation_id = $1", "u.id > $2"]
        args: list[Any] = [formation, _row_after(cursor)]
        match: list[str] = []
        if prefix:
            args.append(prefix.lower().replace("\\", "\\\\").replace("%", "\\%")
                        .replace("_", "\\_") + "%")
            match.append(f"lower(i.identifier) LIKE ${len(args)} ESCAPE '\\'")
            secret = ", ".join(f"'{t}'" for t in sorted(SECRET_TYPES))
            match.append(f"(i.type IS NULL OR i.type NOT IN ({secret}))")
        if kind:
            args.append(kind)
            match.append(f"i.type = ${len(args)}")
        if match:
            where.append("EXISTS (SELECT 1 FROM user_identifiers i WHERE i.user_id = u.id AND "
                         + " AND ".join(match) + ")")
        for clause, value in (("u.created_at >=", since), ("u.created_at <", until)):
            if value is not None:
                # SQLite keeps ISO text ('…T…Z'), which sorts as time does
                args.append(value if self.db.dialect == "postgres"
                            else value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
                where.append(f"{clause} ${len(args)}")
        args.append(limit + 1)
        rows = await self.db.fetch(
            f"SELECT u.id, u.public_id, u.created_at FROM users u WHERE {' AND '.join(where)}"
            f" ORDER BY u.id LIMIT ${len(args)}", *args)
        more = len(rows) > limit
        rows = rows[:limit]
        owned: dict[int, list[LinkedIdentifier]] = {r[0]: [] for r in rows}
        if rows:
            first, last = rows[0][0], rows[-1][0]
            for r in await self.db.fetch(
                    "SELECT user_id, identifier, type, created_at FROM user_identifiers"
                    " WHERE formation_id = $1 AND user_id >= $2 AND user_id <= $3"
                    " ORDER BY created_at, id", formation, first, last):
                if r[0] in owned:
                    owned[r[0]].append(LinkedIdentifier(masked(r[1], r[2]), r[2], _time(r[3])))
        users = [ListedUser(r[1], _time(r[2]), owned[r[0]]) for r in rows]
        return UserPage(users, _cursor(rows[-1][0]) if more else None)
