"""/users for operators (admin key): list and search users, export one, erase one."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from gateway.api.deps import admin_access, runtime
from gateway.api.envelope import ApiError, Envelope, iso, ok
from gateway.api.models import DatedIdentifier
from gateway.runtime.formations import Formation
from gateway.runtime.lifecycle import export_document
from gateway.runtime.wiring import Runtime
from identity.directory import UserDirectory
from identity.types import LinkedIdentifier
from memory.lifecycle import parse_iso

router = APIRouter()
Rt = Annotated[Runtime, Depends(runtime)]
Admin = Annotated[Formation, Depends(admin_access)]


class UserEntry(BaseModel):
    user_id: str
    created_at: datetime
    identifiers: list[DatedIdentifier]


class UserPage(BaseModel):
    users: list[UserEntry]
    count: int
    next_cursor: str | None
    has_more: bool


class ExportedFact(BaseModel):
    kind: str
    key: str
    value: str
    updated_at: datetime
    source: Any


class ExportedMemory(BaseModel):
    id: str
    content: str
    metadata: dict[str, Any]
    created_at: datetime


class ExportedSynopsis(BaseModel):
    text: str
    updated_at: datetime


class ExportedWorkingItem(BaseModel):
    id: str
    channel: str
    role: str
    content: str
    created_at: datetime


class ExportedMessage(BaseModel):
    seq: int
    role: str
    content: str
    created_at: datetime


class ExportedSession(BaseModel):
    session_id: str
    channel: str
    conversation: str
    context: dict[str, Any]
    started_at: datetime
    last_activity: datetime
    messages: list[ExportedMessage]


class ExportedTask(BaseModel):
    id: str
    kind: str
    schedule: str
    message: str
    title: str | None
    status: str
    next_run: datetime | None
    last_run: datetime | None
    created_at: datetime
    channel: str | None
    conversation: str | None
    attempts: int
    last_error: str | None
    delivered_via: str | None


class ExportedCredential(BaseModel):
    id: str
    service: str
    name: str
    created_at: datetime


class ExportedAudit(BaseModel):
    at: datetime
    actor: str
    action: str
    identifier: str | None
    identifier_type: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class UserExport(BaseModel):
    user_id: str
    formation_id: str
    exported_at: datetime
    identifiers: list[DatedIdentifier]
    facts: list[ExportedFact]
    memories: list[ExportedMemory]
    synopsis: ExportedSynopsis | None
    working_memory: list[ExportedWorkingItem]
    sessions: list[ExportedSession]
    scheduled_tasks: list[ExportedTask]
    credentials: list[ExportedCredential] = Field(description="metadata: never the secret")
    audit: list[ExportedAudit]


class Erasure(BaseModel):
    user_id: str
    erased: bool
    user_ref: str = Field(description="what the erasure's audit record keeps of the user: a "
                                      "one-way digest")
    removed: dict[str, int]


def _when(name: str, text: str | None) -> datetime | None:
    """An ISO 8601 time; UTC when it names no zone."""
    if text is None:
        return None
    try:
        return parse_iso(text)
    except ValueError:
        raise ApiError(422, "INVALID_PARAMS", f"{name}: not an ISO 8601 time", {"errors": [
            {"field": name, "msg": "not an ISO 8601 time", "type": "value_error"}]}) from None


def _identifier(i: LinkedIdentifier) -> dict[str, Any]:
    return {"identifier": i.identifier, "type": i.type,
            "created_at": iso(i.created_at.timestamp())}


@router.get("/users", tags=["users"], response_model=Envelope[UserPage])
async def list_users(
        request: Request, rt: Rt, f: Admin,
        q: Annotated[str | None, Query(max_length=512, description=(
            "users with an identifier starting with this text"))] = None,
        type: Annotated[str | None, Query(max_length=40, description=(
            "users with an identifier of this type (email, slack, telegram, …)"))] = None,
        since: Annotated[str | None, Query(description="created at or after (ISO 8601)")] = None,
        until: Annotated[str | None, Query(description="created before (ISO 8601)")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: Annotated[str | None, Query(max_length=100, description=(
            "`next_cursor` of the previous page"))] = None) -> JSONResponse:
    """The formation's users in creation order, with their identifiers, a page at a time."""
    page = await UserDirectory(rt.db).page(
        f.id, prefix=q or None, kind=type or None, since=_when("since", since),
        until=_when("until", until), limit=limit, cursor=cursor)
    users = [{"user_id": u.user_id, "created_at": iso(u.created_at.timestamp()),
              "identifiers": [_identifier(i) for i in u.identifiers]} for u in page.users]
    return ok(request, {"users": users, "count": len(users), "next_cursor": page.next_cursor,
                        "has_more": page.next_cursor is not None},
              obj="list", type_="users.list")


@router.get("/users/{user_id}/export", tags=["users"], response_model=Envelope[UserExport])
async def export_user(request: Request, user_id: str, rt: Rt, f: Admin) -> JSONResponse:
    """Everything Threadline keeps about one user, as one JSON document: identifiers,
    facts, memories, sessions and messages, scheduled tasks, credential metadata (never
    secrets) and the audit records about them. The export itself is audited."""
    document = await export_document(rt, f.id, user_id, actor="admin_key")
    return ok(request, document, obj="user_export", type_="users.export")


@router.delete("/users/{user_id}", tags=["users"], response_model=Envelope[Erasure])
async def erase_user(request: Request, user_id: str, rt: Rt, f: Admin) -> JSONResponse:
    """Erase one user everywhere: every identifier, all memory, sessions, tasks and
    credentials, cached entries included. What stays is one audit record of the erasure
    holding no personal data (a one-way digest of the user id, and counts)."""
    erased = await rt.identity.erase(f.id, user_id, actor="admin_key")
    return ok(request, {"user_id": user_id, "erased": True, "user_ref": erased.user_ref,
                        "removed": erased.counts}, obj="user_erasure", type_="users.erase")
