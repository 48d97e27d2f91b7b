"""Value types and errors of the identity core. Imports only the root error."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from config.errors import ThreadlineError


class IdentityError(ThreadlineError):
    """Root of every error the identity core raises."""


class InvalidIdentifierError(IdentityError, ValueError):
    """An identifier that cannot be accepted; the message names the problem."""

    def __init__(self, message: str, *, field: str = "identifier") -> None:
        super().__init__(message)
        self.field = field


class IdentifierConflictError(IdentityError):
    """An identifier already belongs to a different user."""

    def __init__(self, identifier: Identifier, owner_id: str, requested_id: str) -> None:
        self.identifier = identifier
        self.owner_id = owner_id
        self.requested_id = requested_id  # the user the batch was going to
        super().__init__(
            f"identifier {identifier.display} is already linked to user {owner_id}; "
            f"it cannot also be linked to user {requested_id}"
        )


class UserNotFoundError(IdentityError, LookupError):
    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        super().__init__(f"no user {user_id} in this formation")


class IdentifierNotFoundError(IdentityError, LookupError):
    def __init__(self, identifier: Identifier) -> None:
        self.identifier = identifier
        super().__init__(f"identifier {identifier.display} is not linked to any user")


@dataclass(frozen=True, slots=True)
class Identifier:
    """A canonical identifier: build it with `identity.parse_identifier`, not directly.

    `key` is what the store and the cache index on: the canonical value, or for secret
    types (api keys) a keyed hash of it, so the plain secret never leaves this object.
    """

    value: str = field(repr=False)
    type: str | None
    key: str = field(repr=False)
    secret: bool = False

    @property
    def display(self) -> str:
        """A form safe for logs and listings."""
        if self.secret:
            return f"{self.type}:…{self.key[-8:]}"
        return self.value

    @property
    def text(self) -> str:
        """The one text form that parses back to this identifier: the value where it
        carries its type (emails, tg_…, discord_…, github_…) or has none, else
        `type:value`. Secret ones give their fingerprint, never the secret."""
        if self.secret:
            return self.display
        if self.type is None or self.type == "email" or self.value.startswith(
                f"{'tg' if self.type == 'telegram' else self.type}_"):
            return self.value
        return f"{self.type}:{self.value}"

    def __str__(self) -> str:
        return self.display

    def __repr__(self) -> str:
        return f"Identifier({self.display!r}, type={self.type!r})"


@dataclass(frozen=True, slots=True)
class LinkedIdentifier:
    """One identifier of a user as listed by the store (secret ones shown masked)."""

    identifier: str
    type: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class AssociateResult:
    user_id: str
    created_user: bool
    linked: tuple[Identifier, ...]
    existing: tuple[Identifier, ...]


class MergeNotFoundError(IdentityError, LookupError):
    def __init__(self, merge_id: str) -> None:
        self.merge_id = merge_id
        super().__init__(f"no merge {merge_id[:80]} in this formation's merge journal")


class MergeUndoRefusedError(IdentityError):
    """A journaled merge that can no longer be undone; `reason` says why:
    `already_undone`, `expired`, `kept_user_gone` or `identifier_changed`."""

    def __init__(self, merge_id: str, reason: str, message: str, *,
                 identifier: str | None = None, owner_id: str | None = None,
                 user_id: str | None = None, later_merge: str | None = None,
                 at: float | None = None) -> None:
        self.merge_id = merge_id
        self.reason = reason
        self.identifier = identifier  # identifier_changed: which one, as listings show it
        self.owner_id = owner_id  # … and who has it now (None: nobody)
        self.user_id = user_id  # kept_user_gone: the user that is gone
        self.later_merge = later_merge  # … and the merge that took it, if journaled
        self.at = at  # already_undone: when; expired: when the window closed
        super().__init__(f"merge {merge_id} cannot be undone: {message}")


@dataclass(frozen=True, slots=True)
class MovedIdentifier:
    """An identifier a merge moved: `key` as stored (a secret one's keyed hash), and as
    listings show it."""

    key: str = field(repr=False)
    identifier: str
    type: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class MergeRecord:
    """One merge as its journal keeps it: enough to show it and to undo it.

    `parts` holds what each merge hook moved, by part name (memory's is "memory"); None
    once the retention window has passed and the journal no longer keeps it."""

    id: str
    formation: str
    kept_user: str
    merged_user: str
    merged_created_at: str  # as the database stored it, so an undo recreates it exactly
    identifiers: tuple[MovedIdentifier, ...]
    parts: dict[str, Any] | None
    actor: str
    at: float  # Unix seconds
    expires_at: float
    undone_at: float | None = None
    undone_by: str | None = None

    @property
    def keys(self) -> list[str]:
        """The stored keys of the moved identifiers (what the cache is indexed on)."""
        return [i.key for i in self.identifiers]
