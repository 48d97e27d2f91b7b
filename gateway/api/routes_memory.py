"""/memories, /memory/buffer, /sessions and /credentials: a user's memory and sessions."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.deps import NAMES_USER, admin_access, client_access, require_user, runtime
from gateway.api.envelope import Envelope, Text, iso, iso_at, ok
from gateway.api.models import Deleted
from gateway.runtime.formations import Formation
from gateway.runtime.wiring import Runtime
from memory.types import NotFoundError, Session

router = APIRouter()
Rt = Annotated[Runtime, Depends(runtime)]
Client = Annotated[Formation, Depends(client_access)]
Admin = Annotated[Formation, Depends(admin_access)]
Limit = Annotated[int, Query(ge=1, le=500)]


class MemoryBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Text = Field("note", max_length=50)
    detail: Text = Field(min_length=1, max_length=10_000)
    user_id: str | None = Field(None, description="whose memory, instead of X-Muxi-User-ID")


class CredentialBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    service: Text = Field(min_length=1, max_length=100)
    name: Text | None = Field(None, max_length=200)
    credential: dict[str, Any] = Field(min_length=1)


class MemoryItem(BaseModel):
    id: str = Field(description="a note's mem_… id, or a fact's or preference's fact_… id")
    type: str = Field(description="`note`, `fact` or `preference`")
    content: str
    created_at: datetime = Field(description="a fact's or preference's: when last changed")
    metadata: dict[str, Any]
    key: str | None = Field(None, description="facts and preferences")
    value: str | None = Field(None, description="facts and preferences")


class FactItem(BaseModel):
    id: str
    kind: str = Field(description="`fact` or `preference`")
    key: str
    value: str
    updated_at: datetime
    source: Any = Field(description="where it was learnt (channel, message), when known")


class Memories(BaseModel):
    user_id: str
    memories: list[MemoryItem]
    facts: list[FactItem]
    count: int


class NewMemory(BaseModel):
    id: str
    content: str
    created_at: datetime
    metadata: dict[str, Any]


class BufferMessage(BaseModel):
    role: str
    content: str
    created_at: datetime


class BufferSession(BaseModel):
    session_id: str
    channel: str
    messages: list[BufferMessage]


class Buffer(BaseModel):
    user_id: str
    total_messages: int
    sessions: list[BufferSession]


class BufferCleared(BaseModel):
    user_id: str
    cleared_messages: int


class SessionBufferCleared(BufferCleared):
    session_id: str


class BufferSettings(BaseModel):
    size: int
    session_idle_timeout_seconds: float


class WorkingSettings(BaseModel):
    limit: int
    max_age_seconds: float
    shared_across_channels: bool


class PersistentSettings(BaseModel):
    backend: str
    kinds: list[str]
    search: str
    user_synopsis: bool


class MemoryConfig(BaseModel):
    formation_id: str
    buffer: BufferSettings
    working: WorkingSettings
    persistent: PersistentSettings


class BufferStats(BaseModel):
    formation_id: str
    buffer_size: int
    sessions: int
    users: int
    active_sessions: int
    sessions_with_messages: int
    total_messages: int
    buffered_messages: int
    oldest_message_at: datetime | None
    newest_message_at: datetime | None


class SessionInfo(BaseModel):
    session_id: str
    user_id: str
    channel: str
    started_at: datetime
    last_activity: datetime
    active: bool


class Sessions(BaseModel):
    sessions: list[SessionInfo]
    count: int


class SessionMessage(BufferMessage):
    id: str


class SessionMessages(BaseModel):
    session_id: str
    messages: list[SessionMessage]
    count: int
    has_more: bool


class CredentialInfo(BaseModel):
    credential_id: str
    id: str
    service: str
    name: str
    credential_preview: str = Field(description="field names and each value's last "
                                                "characters; never the secret")
    created_at: datetime


class CredentialList(BaseModel):
    credentials: list[CredentialInfo]
    count: int


class CredentialDeleted(BaseModel):
    credential_id: str
    deleted: bool


def _session(s: Session, idle_timeout: float) -> dict[str, Any]:
    return {"session_id": s.id, "user_id": s.user_id, "channel": s.channel,
            "started_at": iso(s.started_at), "last_activity": iso(s.last_activity),
            "active": s.active(idle_timeout)}


@router.get("/memories", tags=["memory"], dependencies=[NAMES_USER],
            response_model=Envelope[Memories])
async def list_memories(request: Request, rt: Rt, f: Client, limit: Limit = 50,
                        q: Annotated[str | None, Query(max_length=500, description=(
                            "search: the user's memories that share words with this text, "
                            "best first (stemmed full-text search)"))] = None) -> JSONResponse:
    user = await require_user(request, f, rt)
    if q is not None and q.strip():
        memories = await rt.memory.users.search_memories(user, q, limit=limit)
    else:
        memories = await rt.memory.users.memories(user, limit=limit)
    facts = await rt.memory.users.facts(user)
    sources = await rt.memory.users.fact_sources(user)
    listed = [{"id": m.id, "type": "note", "content": m.content,
               "created_at": iso(m.created_at), "metadata": iso_at(m.metadata)} for m in memories]
    if not (q and q.strip()):  # facts and preferences are memories too, each with its id
        listed += [{"id": fact_id(x.kind, x.key), "type": x.kind,
                    "content": x.value if x.kind == "preference" else f"{x.key}: {x.value}",
                    "key": x.key, "value": x.value, "created_at": iso(x.updated_at),
                    "metadata": {"source": iso_at(sources.get((x.kind, x.key)))}}
                   for x in facts]
    return ok(request, {
        "user_id": user,
        "memories": listed[:limit],
        "facts": [{"id": fact_id(x.kind, x.key), "kind": x.kind, "key": x.key,
                   "value": x.value, "updated_at": iso(x.updated_at),
                   "source": iso_at(sources.get((x.kind, x.key)))} for x in facts],
        "count": len(listed[:limit]),
    }, obj="memories", type_="memory.list")


def fact_id(kind: str, key: str) -> str:
    """A fact's id in the API: its kind and key, reversibly (facts are keyed, not numbered)."""
    raw = f"{kind}\x1f{key}".encode()
    return "fact_" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _fact_of(memory_id: str) -> tuple[str, str] | None:
    if not memory_id.startswith("fact_"):
        return None
    text = memory_id[len("fact_"):]
    try:
        kind, sep, key = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode(
            ).partition("\x1f")
    except (ValueError, UnicodeDecodeError):
        return None
    return (kind, key) if sep and kind in ("fact", "preference") else None


@router.post("/memories", tags=["memory"], status_code=201, dependencies=[NAMES_USER],
             response_model=Envelope[NewMemory])
async def add_memory(request: Request, body: MemoryBody, rt: Rt, f: Client) -> JSONResponse:
    user = await require_user(request, f, rt, given=body.user_id)
    memory = await rt.memory.users.add_memory(user, body.detail, {"type": body.type,
                                                                  "source": "api"})
    await rt.memory.users.refresh_synopsis(user)
    return ok(request, {"id": memory.id, "content": memory.content,
                        "created_at": iso(memory.created_at),
                        "metadata": iso_at(memory.metadata)},
              obj="memory", type_="memory.created", status=201)


@router.delete("/memories/{memory_id}", tags=["memory"], dependencies=[NAMES_USER],
               response_model=Envelope[Deleted])
async def delete_memory(request: Request, memory_id: str, rt: Rt, f: Client) -> JSONResponse:
    user = await require_user(request, f, rt)
    fact = _fact_of(memory_id)
    if fact is not None:
        if not await rt.memory.users.forget_fact(user, fact[1], kind=fact[0]):
            raise NotFoundError("memory", memory_id)
    else:
        await rt.memory.users.delete_memory(user, memory_id)
    await rt.memory.users.refresh_synopsis(user)
    return ok(request, {"id": memory_id, "deleted": True}, obj="memory", type_="memory.deleted")


@router.get("/memory/buffer", tags=["memory"], dependencies=[NAMES_USER],
            response_model=Envelope[Buffer])
async def buffer(request: Request, rt: Rt, f: Client) -> JSONResponse:
    user = await require_user(request, f, rt)
    sessions = await rt.memory.sessions.list(user, limit=20)
    out, total = [], 0
    for s in sessions:
        messages = await rt.memory.sessions.buffer(s.id)
        total += len(messages)
        out.append({"session_id": s.id, "channel": s.channel, "messages": [
            {"role": m.role, "content": m.content, "created_at": iso(m.created_at)}
            for m in messages]})
    return ok(request, {"user_id": user, "total_messages": total, "sessions": out},
              obj="buffer", type_="memory.buffer")


@router.delete("/memory/buffer", tags=["memory"], dependencies=[NAMES_USER],
               response_model=Envelope[BufferCleared])
async def clear_buffer(request: Request, rt: Rt, f: Client) -> JSONResponse:
    user = await require_user(request, f, rt)
    cleared = await rt.memory.sessions.clear_buffers(user)
    return ok(request, {"user_id": user, "cleared_messages": cleared},
              obj="buffer", type_="memory.buffer.cleared")


@router.delete("/memory/buffer/{session_id}", tags=["memory"], dependencies=[NAMES_USER],
               response_model=Envelope[SessionBufferCleared])
async def clear_session_buffer(request: Request, session_id: str, rt: Rt,
                               f: Client) -> JSONResponse:
    """Empty one of the user's sessions (404 for another user's); the session stays."""
    user = await require_user(request, f, rt)
    cleared = await rt.memory.sessions.clear_buffer(user, session_id)
    return ok(request, {"user_id": user, "session_id": session_id,
                        "cleared_messages": cleared},
              obj="buffer", type_="memory.buffer.session_cleared")


@router.get("/memory", tags=["memory"], response_model=Envelope[MemoryConfig])
async def memory_config(request: Request, rt: Rt, f: Admin) -> JSONResponse:
    """How memory is kept: the per-session buffer, the per-user working memory across
    channels, and persistent memory (facts, preferences, notes) in the database."""
    sessions, users = rt.memory.sessions, rt.memory.users
    return ok(request, {
        "formation_id": f.id,
        "buffer": {"size": sessions.buffer_size,
                   "session_idle_timeout_seconds": sessions.idle_timeout},
        "working": {"limit": users.working_limit, "max_age_seconds": users.working_max_age,
                    "shared_across_channels": True},
        "persistent": {"backend": rt.db.dialect,
                       "kinds": ["fact", "preference", "note"],
                       "search": "full_text", "user_synopsis": True},
    }, obj="memory_config", type_="memory.config")


@router.get("/memory/stats", tags=["memory"], response_model=Envelope[BufferStats])
async def buffer_stats(request: Request, rt: Rt, f: Admin) -> JSONResponse:
    """What this formation's session buffers hold now."""
    stats = await rt.memory.sessions.stats(f.id)
    return ok(request, {
        "formation_id": f.id, "buffer_size": rt.memory.sessions.buffer_size, **stats,
        "oldest_message_at": iso(stats["oldest_message_at"]),
        "newest_message_at": iso(stats["newest_message_at"]),
    }, obj="buffer_stats", type_="memory.stats")


@router.get("/sessions", tags=["sessions"], dependencies=[NAMES_USER],
            response_model=Envelope[Sessions])
async def sessions(request: Request, rt: Rt, f: Client, limit: Limit = 20) -> JSONResponse:
    user = await require_user(request, f, rt)
    items = await rt.memory.sessions.list(user, limit=limit)
    idle = rt.memory.sessions.idle_timeout
    return ok(request, {"sessions": [_session(s, idle) for s in items], "count": len(items)},
              obj="sessions", type_="session.list")


@router.get("/sessions/{session_id}", tags=["sessions"], dependencies=[NAMES_USER],
            response_model=Envelope[SessionInfo])
async def session(request: Request, session_id: str, rt: Rt, f: Client) -> JSONResponse:
    user = await require_user(request, f, rt)
    s = await rt.memory.sessions.get(user, session_id)
    return ok(request, _session(s, rt.memory.sessions.idle_timeout), obj="session",
              type_="session")


@router.get("/sessions/{session_id}/messages", tags=["sessions"], dependencies=[NAMES_USER],
            response_model=Envelope[SessionMessages])
async def session_messages(request: Request, session_id: str, rt: Rt, f: Client,
                           limit: Limit = 50) -> JSONResponse:
    user = await require_user(request, f, rt)
    await rt.memory.sessions.get(user, session_id)  # 404 unless it is this user's
    messages, more = await rt.memory.sessions.messages(session_id, limit)
    return ok(request, {
        "session_id": session_id,
        "messages": [{"id": m.id, "role": m.role, "content": m.content,
                      "created_at": iso(m.created_at)} for m in messages],
        "count": len(messages), "has_more": more,
    }, obj="session_messages", type_="session.messages")


def _credential(c: Any) -> dict[str, Any]:
    return {"credential_id": c.id, "id": c.id, "service": c.service, "name": c.name,
            "credential_preview": c.preview, "created_at": iso(c.created_at)}


@router.get("/credentials", tags=["credentials"], dependencies=[NAMES_USER],
            response_model=Envelope[CredentialList])
async def credentials(request: Request, rt: Rt, f: Client) -> JSONResponse:
    user = await require_user(request, f, rt)
    items = await rt.memory.credentials.list(user)
    return ok(request, {"credentials": [_credential(c) for c in items], "count": len(items)},
              obj="credentials", type_="credential.list")


@router.post("/credentials", tags=["credentials"], status_code=201, dependencies=[NAMES_USER],
             response_model=Envelope[CredentialInfo])
async def add_credential(request: Request, body: CredentialBody, rt: Rt,
                         f: Client) -> JSONResponse:
    user = await require_user(request, f, rt)
    created = await rt.memory.credentials.add(user, body.service, body.credential, body.name)
    return ok(request, _credential(created), obj="credential", type_="credential.created",
              status=201)


@router.get("/credentials/{credential_id}", tags=["credentials"], dependencies=[NAMES_USER],
            response_model=Envelope[CredentialInfo])
async def credential(request: Request, credential_id: str, rt: Rt, f: Client) -> JSONResponse:
    user = await require_user(request, f, rt)
    return ok(request, _credential(await rt.memory.credentials.get(user, credential_id)),
              obj="credential", type_="credential")


@router.delete("/credentials/{credential_id}", tags=["credentials"],
               dependencies=[NAMES_USER], response_model=Envelope[CredentialDeleted])
async def delete_credential(request: Request, credential_id: str, rt: Rt,
                            f: Client) -> JSONResponse:
    user = await require_user(request, f, rt)
    await rt.memory.credentials.delete(user, credential_id)
    return ok(request, {"credential_id": credential_id, "deleted": True}, obj="credential",
              type_="credential.deleted")
