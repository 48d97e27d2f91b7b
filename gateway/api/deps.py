"""Who is calling: the formation (from the path), the key, and the user.

All async: FastAPI runs a plain `def` dependency in a worker thread, a hop per request.
The keys and the user header are declared as the OpenAPI document's security schemes
(`AdminKey`, `ClientKey`, `UserId`), so that /docs can send them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import unquote

from fastapi import Depends, Header, Request, Security
from fastapi.security import APIKeyHeader

from gateway.api.envelope import ApiError, nul_error, nul_fields
from gateway.runtime.formations import Formation
from gateway.runtime.wiring import Runtime
from identity import Identifier

_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")


async def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


async def formation(request: Request) -> Formation:
    formations: dict[str, Formation] = request.app.state.formations
    fid = request.path_params.get("formation_id") or request.app.state.default_formation
    found = formations.get(fid)
    if found is None:
        raise ApiError(404, "FORMATION_NOT_FOUND", f"no formation {fid!r} on this server")
    return found


USER_HEADER = "X-Muxi-User-ID"
ADMIN_KEY = APIKeyHeader(
    name="X-Muxi-Admin-Key", scheme_name="AdminKey", auto_error=False,
    description="The formation's admin key: every operation.")
CLIENT_KEY = APIKeyHeader(
    name="X-Muxi-Client-Key", scheme_name="ClientKey", auto_error=False,
    description="The formation's client key: chat, users' memory, sessions and credentials, "
                "resolving identifiers. Operations that need the admin key answer it 403.")
USER = APIKeyHeader(
    name=USER_HEADER, scheme_name="UserId", auto_error=False,
    description="Who the call speaks for, not a secret: a usr_… id or any identifier "
                "(alice@acme.com, slack:U123, tg_789). UTF-8, or percent-encoded UTF-8. "
                "Operations with a `user_id` field or query parameter take it there instead.")
# A route that acts for a user declares it (the value is read by `identify`).
NAMES_USER = Security(USER)

AdminKey = Annotated[str | None, Security(ADMIN_KEY)]
ClientKey = Annotated[str | None, Security(CLIENT_KEY)]
# The admin-only routes read the client key only to answer it 403 rather than 401.
UndocumentedClientKey = Annotated[str | None, Header(alias="X-Muxi-Client-Key",
                                                     include_in_schema=False)]


async def refuse_nul(request: Request) -> None:
    """A NUL (U+0000) anywhere in the path, the query, the user header or the JSON body is
    a 422 naming the field: PostgreSQL cannot store it in text, and no identifier or
    message holds one. Checked once the key is, before any model or store sees the request."""
    header_text(request, USER_HEADER)  # raises for a NUL, or for bytes that are not UTF-8
    fields = [f"path.{k}" for k, v in request.path_params.items()
              if "\x00" in str(v)]
    fields += [f"query.{k}" for k, v in request.query_params.multi_items()
               if "\x00" in k or "\x00" in v]
    if "json" in request.headers.get("content-type", ""):
        try:
            body = await request.json()  # parsed once already, for the route: cached
        except ValueError:
            body = None  # the route's own parsing says what is wrong with it
        fields += nul_fields(body)
    if fields:
        raise nul_error(fields)


async def client_access(request: Request, f: Annotated[Formation, Depends(formation)],
                        client_key: ClientKey = None, admin_key: AdminKey = None) -> Formation:
    """The client key, or the admin key (which may do everything)."""
    if f.is_admin(admin_key) or f.is_client(client_key):
        await refuse_nul(request)
        return f
    if admin_key is None and client_key is None:
        raise ApiError(401, "UNAUTHORIZED", "send X-Muxi-Client-Key or X-Muxi-Admin-Key")
    raise ApiError(401, "UNAUTHORIZED", "the API key is not valid for this formation")


async def admin_access(request: Request, f: Annotated[Formation, Depends(formation)],
                       admin_key: AdminKey = None,
                       client_key: UndocumentedClientKey = None) -> Formation:
    if f.is_admin(admin_key):
        await refuse_nul(request)
        return f
    if admin_key is None and f.is_client(client_key):
        raise ApiError(403, "FORBIDDEN", "this call needs the admin key (X-Muxi-Admin-Key)")
    if admin_key is None and client_key is None:
        raise ApiError(401, "UNAUTHORIZED", "send X-Muxi-Admin-Key")
    raise ApiError(401, "UNAUTHORIZED", "the API key is not valid for this formation")


def header_text(request: Request, name: str) -> str | None:
    """A header as the UTF-8 text it carries (HTTP hands over bytes; Starlette reads them as
    Latin-1). Percent-encoded UTF-8 ("jos%C3%A9") is accepted too, for clients that can
    only send ASCII headers."""
    value = request.headers.get(name)
    if value is None:
        return None
    try:
        text = value.encode("latin-1").decode("utf-8")
        if _PERCENT.search(text):
            text = unquote(text, errors="strict")
    except (UnicodeEncodeError, UnicodeDecodeError):
        raise ApiError(422, "INVALID_PARAMS", f"{name}: not valid UTF-8", {"errors": [
            {"field": name, "msg": "not valid UTF-8", "type": "value_error"}]}) from None
    if "\x00" in text:  # only percent-encoded: HTTP itself refuses a raw NUL in a header
        raise nul_error([name])
    return text


@dataclass(frozen=True)
class Caller:
    """Who a request speaks for: the user, and the identifier that named them (None when
    named by their usr_… id). `label` names the caller without any secret."""

    user_id: str | None
    identifier: Identifier | None

    @property
    def label(self) -> str:
        return self.identifier.display if self.identifier is not None else str(self.user_id)


async def identify(request: Request, f: Formation, rt: Runtime, *, create: bool,
                   given: str | None = None) -> Caller:
    """The user behind X-Muxi-User-ID (or a user_id parameter): a usr_… id of this
    formation, or any identifier, resolved (and created on first contact when `create`)."""
    raw = given or header_text(request, USER_HEADER) or request.query_params.get("user_id")
    if not raw or not raw.strip():
        raise ApiError(422, "INVALID_PARAMS", f"{USER_HEADER}: a user identifier is required",
                       {"errors": [{"field": USER_HEADER, "msg": "required",
                                    "type": "missing"}]})
    raw = raw.strip()
    if raw.startswith("usr_") and await rt.identity.store.user_exists(f.id, raw):
        return Caller(raw, None)
    user, matched = await rt.identity.resolve_identifier(f.id, raw, create=create)
    return Caller(user, matched)


async def user_of(request: Request, f: Formation, rt: Runtime, *, create: bool,
                  given: str | None = None) -> str | None:
    return (await identify(request, f, rt, create=create, given=given)).user_id


async def require_user(request: Request, f: Formation, rt: Runtime,
                       given: str | None = None) -> str:
    user = await user_of(request, f, rt, create=False, given=given)
    if user is None:
        raise ApiError(404, "USER_NOT_FOUND", "no user has that identifier in this formation")
    return user
