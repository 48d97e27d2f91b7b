"""Per-user credentials, encrypted at rest (Fernet: AES-128-CBC with HMAC-SHA-256).

Listed only as a preview; the secret is decrypted only for the code that uses it.
"""

from __future__ import annotations

import builtins
import json
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from identity.storage import Database
from memory.types import Credential, NotFoundError, new_id, now


def preview(secret: dict[str, Any]) -> str:
    """Field names with the last characters of each value, e.g. `token: …f3a9`."""
    parts = []
    for key, value in sorted(secret.items()):
        text = str(value)
        parts.append(f"{key}: …{text[-4:]}" if len(text) > 8 else f"{key}: …")
    return ", ".join(parts)[:200]


class Credentials:
    def __init__(self, db: Database, key: bytes) -> None:
        self.db = db
        self._fernet = Fernet(key)

    def __repr__(self) -> str:
        return "Credentials(key=***)"

    async def add(self, user_id: str, service: str, secret: dict[str, Any],
                  name: str | None = None) -> Credential:
        token = self._fernet.encrypt(json.dumps(secret).encode()).decode()
        credential = Credential(new_id("cred"), service, name or service, preview(secret), now())
        await self.db.execute(
            "INSERT INTO credentials (id, user_id, service, name, ciphertext, preview, created_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            credential.id, user_id, service, credential.name, token, credential.preview,
            credential.created_at,
        )
        return credential

    async def list(self, user_id: str) -> builtins.list[Credential]:
        rows = await self.db.fetch(
            "SELECT id, service, name, preview, created_at FROM credentials WHERE user_id = $1"
            " ORDER BY created_at",
            user_id,
        )
        return [Credential(*r) for r in rows]

    async def get(self, user_id: str, credential_id: str) -> Credential:
        row = await self.db.fetchrow(
            "SELECT id, service, name, preview, created_at FROM credentials"
            " WHERE user_id = $1 AND id = $2",
            user_id, credential_id,
        )
        if row is None:
            raise NotFoundError("credential", credential_id)
        return Credential(*row)

    async def reveal(self, user_id: str, credential_id: str) -> dict[str, Any]:
        token = await self.db.fetchval(
            "SELECT ciphertext FROM credentials WHERE user_id = $1 AND id = $2",
            user_id, credential_id,
        )
        if token is None:
            raise NotFoundError("credential", credential_id)
        try:
            return json.loads(self._fernet.decrypt(token.encode()))
        except InvalidToken:
            raise NotFoundError("credential readable with the configured key",
                                credential_id) from None

    async def delete(self, user_id: str, credential_id: str) -> None:
        async with self.db.transaction() as tx:
            found = await tx.fetchval(
                "DELETE FROM credentials WHERE user_id = $1 AND id = $2 RETURNING id",
                user_id, credential_id,
            )
        if found is None:
            raise NotFoundError("credential", credential_id)
