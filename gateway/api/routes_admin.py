"""/status, /formation and /audit for the operator (admin key); and the MUXI features a
chat gateway does not have (agents, MCP, SOPs, triggers), refused with NOT_SUPPORTED."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from gateway import __version__
from gateway.api.deps import admin_access, client_access, runtime
from gateway.api.envelope import ApiError, Envelope, iso, ok
from gateway.api.models import Components
from gateway.runtime.formations import Formation
from gateway.runtime.health import Readiness
from gateway.runtime.wiring import Runtime
from identity.audit import AuditEntry, AuditLog
from memory.lifecycle import parse_iso

router = APIRouter()
Rt = Annotated[Runtime, Depends(runtime)]
Admin = Annotated[Formation, Depends(admin_access)]
Client = Annotated[Formation, Depends(client_access)]

# What the MUXI runtime offers and Threadline does not; the SDK's calls get a 404 naming it.
UNSUPPORTED = {
    "agents": ["/agents", "/agents/{rest:path}"],
    "MCP servers and tools": ["/mcp", "/mcp/{rest:path}"],
    "SOPs": ["/sops", "/sops/{rest:path}"],
    "triggers": ["/triggers", "/triggers/{rest:path}"],
}


class SchedulerState(BaseModel):
    running: bool


class Status(BaseModel):
    status: str = Field(description="`ready`, `degraded` or `not_ready`")
    formation_id: str
    version: str
    started_at: datetime
    uptime_seconds: float
    components: Components
    scheduler: SchedulerState
    users: int
    jobs: dict[str, int] = Field(description="this formation's jobs in each state")


class ResponderInfo(BaseModel):
    name: str
    model: str | None


class MemoryInfo(BaseModel):
    backend: str
    buffer_size: int
    session_idle_timeout_seconds: float


class FormationInfo(BaseModel):
    formation_id: str
    id: str
    version: str
    description: str
    channels: list[str]
    identifier_types: list[str]
    responder: ResponderInfo
    memory: MemoryInfo
    features: dict[str, bool]


class AuditRecord(BaseModel):
    id: int
    at: datetime
    actor: str = Field(description="`admin_key`, `cli`, `channel:<name>`, …")
    action: str = Field(description="`link`, `unlink`, `merge`, `link_code_redeemed`, "
                                    "`export`, `erase`")
    user_id: str | None
    identifier: str | None = Field(description="secret identifiers by fingerprint only")
    identifier_type: str | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class AuditRecords(BaseModel):
    entries: list[AuditRecord]
    count: int


def _readiness(request: Request, rt: Runtime) -> Readiness:
    readiness = getattr(request.app.state, "readiness", None)
    if readiness is None:
        readiness = request.app.state.readiness = Readiness(rt)
    return readiness


@router.get("/status", tags=["admin"], response_model=Envelope[Status])
async def status(request: Request, rt: Rt, f: Admin) -> JSONResponse:
    """The gateway's state (as /ready reports it, but always 200), its uptime, and what
    this formation holds."""
    _, report = await _readiness(request, rt).report()
    started = request.app.state.started_at
    return ok(request, {
        "status": report["status"],
        "formation_id": f.id,
        "version": __version__,
        "started_at": iso(started),
        "uptime_seconds": round(time.time() - started, 3),
        "components": report["components"],
        "scheduler": {"running": rt.scheduler.running},
        "users": await rt.identity.store.count_users(f.id),
        "jobs": await rt.memory.tasks.counts(f.id),
    }, obj="status", type_="formation.status")


@router.get("/formation", tags=["admin"], response_model=Envelope[FormationInfo])
async def formation_info(request: Request, rt: Rt, f: Admin) -> JSONResponse:
    """What this formation is made of; no secret (channel settings are named, not shown)."""
    settings = rt.settings
    channels = ["api", "web", *sorted(name for name, conf in settings.channels.items()
                                      if conf.get("enabled", True) is not False)]
    return ok(request, {
        "formation_id": f.id,
        "id": f.id,
        "version": __version__,
        "description": "Threadline: one user behind every identifier, across channels",
        "channels": channels,
        "identifier_types": sorted(rt.identity.parser.types),
        "responder": {"name": rt.engine.responder.name,
                      "model": settings.llm_model if settings.responder == "openai" else None},
        "memory": {"backend": rt.db.dialect, "buffer_size": rt.memory.sessions.buffer_size,
                   "session_idle_timeout_seconds": rt.memory.sessions.idle_timeout},
        "features": {"chat": True, "streaming": True, "memory": True, "scheduler": True,
                     "identity_linking": True, "audit": True,
                     **{feature: False for feature in ("agents", "mcp", "sops", "triggers")}},
    }, obj="formation", type_="formation.info")


def _moment(name: str, text: str | None) -> float | None:
    """An ISO 8601 time (UTC when it names no zone) or Unix seconds."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_iso(text).timestamp()
    except ValueError:
        raise ApiError(422, "INVALID_PARAMS", f"{name}: an ISO 8601 time or Unix seconds",
                       {"errors": [{"field": name, "msg": "not a time",
                                    "type": "value_error"}]}) from None


def _entry(e: AuditEntry) -> dict[str, Any]:
    return {"id": e.id, "at": iso(e.at), "actor": e.actor, "action": e.action,
            "user_id": e.user_id, "identifier": e.identifier,
            "identifier_type": e.identifier_type, "before": e.before, "after": e.after}


@router.get("/audit", tags=["admin"], response_model=Envelope[AuditRecords])
async def audit_log(request: Request, rt: Rt, f: Admin,
                    user_id: Annotated[str | None, Query(max_length=100)] = None,
                    identifier: Annotated[str | None, Query(max_length=512)] = None,
                    since: Annotated[str | None, Query(description=(
                        "at or after: ISO 8601, UTC when it names no zone (Unix seconds are "
                        "taken too)"))] = None,
                    until: Annotated[str | None, Query(description=(
                        "before: ISO 8601, UTC when it names no zone"))] = None,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> JSONResponse:
    """Who linked, unlinked, merged or redeemed a link code, newest first: filter by user
    (usr_…), identifier, and time (since inclusive, until exclusive)."""
    key = rt.identity.parse(identifier).key if identifier is not None else None
    entries = await AuditLog(rt.db).entries(
        f.id, user_id=user_id, identifier_key=key, since=_moment("since", since),
        until=_moment("until", until), limit=limit)
    return ok(request, {"entries": [_entry(e) for e in entries], "count": len(entries)},
              obj="audit_log", type_="audit.list")


def _unsupported(feature: str) -> Any:
    async def refuse(f: Client) -> JSONResponse:
        raise ApiError(404, "NOT_SUPPORTED", f"{feature} are not supported by Threadline, a "
                       "chat gateway: it has no agent runtime", {"feature": feature})
    return refuse


for _feature, _paths in UNSUPPORTED.items():
    for _path in _paths:
        router.add_api_route(_path, _unsupported(_feature),
                             methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                             include_in_schema=False)
