"""Web chat identity tokens: the host application signs who the visitor is.

A token is `<base64url(payload)>.<base64url(HMAC-SHA-256(secret, <base64url(payload)>))>`
(base64url without padding) with the payload {"sub": identifier, "exp": unix seconds} and
optionally "type": the identifier's type ("slack", "email", …). Any language can make one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from config.errors import ThreadlineError

MAX_TOKEN = 4096
_B64URL = re.compile(r"^[A-Za-z0-9_-]+$")


class TokenError(ThreadlineError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Claims:
    """What a verified token says: who, of what identifier type, until when."""

    identifier: str
    type: str | None
    expires_at: float

    @property
    def who(self) -> Any:
        """The identifier as the identity service takes it."""
        return {"identifier": self.identifier, "type": self.type} if self.type else self.identifier


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _key(secret: bytes | str) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def _signature(secret: bytes | str, payload_part: str) -> bytes:
    return hmac.new(_key(secret), payload_part.encode("ascii"), hashlib.sha256).digest()


def sign_token(secret: bytes, identifier: str, ttl: int = 3600, type: str | None = None, *,
               now: float | None = None) -> str:
    """A token saying the bearer is `identifier` for the next `ttl` seconds."""
    if not isinstance(identifier, str) or not identifier.strip():
        raise ValueError("identifier must be a non-empty string")
    if ttl <= 0:
        raise ValueError("ttl must be a positive number of seconds")
    payload: dict[str, Any] = {"sub": identifier,
                               "exp": int(time.time() if now is None else now) + int(ttl)}
    if type is not None:
        payload["type"] = type
    head = _b64encode(json.dumps(payload, separators=(",", ":")).encode())
    return f"{head}.{_b64encode(_signature(secret, head))}"


def verify_token(secret: bytes | str, token: str, *, now: float | None = None) -> Any:
    """The identifier a token vouches for (a string, or {"identifier", "type"}).

    Raises TokenError with code TOKEN_INVALID or TOKEN_EXPIRED.
    """
    return read_token(secret, token, now=now).who


def read_token(secret: bytes | str, token: str, *, now: float | None = None) -> Claims:
    """A token's claims, once its signature and expiry are checked (TokenError if not)."""
    head, _, sig = token.partition(".")
    if (len(token) > MAX_TOKEN or not _B64URL.match(head) or not _B64URL.match(sig)):
        raise TokenError("TOKEN_INVALID", "the token is malformed: expected "
                                          "<base64url payload>.<base64url signature>")
    try:
        given = _b64decode(sig)
    except ValueError:
        raise TokenError("TOKEN_INVALID", "the token's signature is not base64url") from None
    if not hmac.compare_digest(given, _signature(secret, head)):
        raise TokenError("TOKEN_INVALID", "the token's signature does not match: it was not "
                                          "signed with this server's webchat secret")
    try:
        payload = json.loads(_b64decode(head))
    except ValueError:  # includes bad base64, bad UTF-8 and bad JSON
        payload = None
    if not isinstance(payload, dict):
        raise TokenError("TOKEN_INVALID", "the token's payload is not a JSON object")
    sub, exp, kind = payload.get("sub"), payload.get("exp"), payload.get("type")
    if not isinstance(sub, str) or not sub.strip():
        raise TokenError("TOKEN_INVALID", "the token has no sub (the identifier)")
    if isinstance(exp, bool) or not isinstance(exp, (int, float)) or not math.isfinite(exp):
        raise TokenError("TOKEN_INVALID", "the token has no exp (expiry, finite unix seconds)")
    if kind is not None and not isinstance(kind, str):
        raise TokenError("TOKEN_INVALID", "the token's type must be a string")
    at = time.time() if now is None else now
    if exp <= at:
        raise TokenError("TOKEN_EXPIRED", f"the token expired {int(at - exp)} s ago; ask the "
                                          "host application for a new one")
    return Claims(sub, kind or None, float(exp))
