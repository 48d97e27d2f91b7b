"""Merging two users with a preview, and undoing a merge from the merge journal (admin key):
POST /users/{keep_id}/merge, GET /merges/{merge_id}, POST /merges/{merge_id}/undo."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.deps import admin_access, runtime
from gateway.api.envelope import Envelope, ErrorBody, iso, ok
from gateway.api.models import DatedIdentifier
from gateway.runtime.formations import Formation
from gateway.runtime.wiring import Runtime
from identity import MergeRecord
from memory.merges import PART, summary

router = APIRouter()
Rt = Annotated[Runtime, Depends(runtime)]
Admin = Annotated[Formation, Depends(admin_access)]


class MergeBody(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    from_: str = Field(alias="from", max_length=100,
                       description="the user folded into keep_id (usr_…); it is deleted")
    dry_run: bool = Field(False, description="only say what would move and which facts "
                          "collide (the kept user's value wins); nothing is written")


class UndoBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    dry_run: bool = Field(False, description="only check that the merge can be undone")


class FactCollision(BaseModel):
    kind: str
    key: str
    kept_value: str
    merged_value: str
    winner: str = Field(description="`kept`: the kept user's value stays")


class Merge(BaseModel):
    merge_id: str | None = Field(description="none for a preview")
    dry_run: bool
    formation_id: str
    kept_user: str
    merged_user: str
    identifiers: list[DatedIdentifier] = Field(description="the identifiers that move")
    moves: dict[str, int] | None = Field(description="how many of each kind move; none "
                                                     "once past the retention window")
    fact_collisions: list[FactCollision] | None
    actor: str
    at: datetime
    expires_at: datetime = Field(description="until when it can be undone")
    undone_at: datetime | None
    undone_by: str | None
    undo: str | None = Field(description="the call that undoes it, while it can be")


def _base(request: Request) -> str:
    """/v1 or /api/{formation_id}/v1, as this request was addressed."""
    path = request.url.path
    return path[:path.index("/v1/") + 3]


def merge_data(request: Request, record: MergeRecord, *, dry_run: bool) -> dict[str, Any]:
    """A journaled merge (or a preview of one) as the API shows it; times in ISO 8601 UTC.
    `moves` is null once the retention window has passed (the journal keeps who and when)."""
    moves = summary(record.parts.get(PART)) if record.parts is not None else None
    undoable = not dry_run and record.undone_at is None and record.parts is not None
    return {
        "merge_id": None if dry_run else record.id,
        "dry_run": dry_run,
        "formation_id": record.formation,
        "kept_user": record.kept_user,
        "merged_user": record.merged_user,
        "identifiers": [{"identifier": i.identifier, "type": i.type,
                         "created_at": iso(i.created_at.timestamp())}
                        for i in record.identifiers],
        "moves": None if moves is None else {"identifiers": len(record.identifiers),
                                             **moves["counts"]},
        "fact_collisions": None if moves is None else moves["fact_collisions"],
        "actor": record.actor,
        "at": iso(record.at),
        "expires_at": iso(record.expires_at),
        "undone_at": iso(record.undone_at),
        "undone_by": record.undone_by,
        "undo": f"POST {_base(request)}/merges/{record.id}/undo" if undoable else None,
    }


@router.post("/users/{keep_id}/merge", tags=["users"], status_code=201,
             response_model=Envelope[Merge], response_description="Merged and journaled",
             responses={200: {"model": Envelope[Merge], "description": "A preview "
                              "(dry_run): what would move; nothing was written"}})
async def merge(request: Request, keep_id: str, body: MergeBody, rt: Rt,
                f: Admin) -> JSONResponse:
    """Fold user `from` into `keep_id`: identifiers, memory, sessions, credentials and tasks
    move over; where both have a fact, keep_id's wins. Journaled: undo it within the
    retention window with POST /merges/{merge_id}/undo. `dry_run: true` previews it."""
    record = await rt.identity.merge(f.id, keep_id, body.from_, actor="admin_key",
                                     dry_run=body.dry_run)
    return ok(request, merge_data(request, record, dry_run=body.dry_run), obj="merge",
              type_="user.merge.preview" if body.dry_run else "user.merged",
              status=200 if body.dry_run else 201)


@router.get("/merges/{merge_id}", tags=["users"], response_model=Envelope[Merge])
async def merge_record(request: Request, merge_id: str, rt: Rt, f: Admin) -> JSONResponse:
    """A journaled merge: who, what moved, when, until when it can be undone."""
    record = await rt.identity.merge_record(f.id, merge_id)
    return ok(request, merge_data(request, record, dry_run=False), obj="merge", type_="merge")


@router.post("/merges/{merge_id}/undo", tags=["users"], response_model=Envelope[Merge],
             responses={409: {"model": ErrorBody, "description": "MERGE_ALREADY_UNDONE, "
                              "MERGE_EXPIRED, MERGE_KEPT_USER_GONE or "
                              "MERGE_IDENTIFIER_CHANGED"}})
async def undo(request: Request, merge_id: str, rt: Rt, f: Admin,
               body: UndoBody | None = None) -> JSONResponse:
    """Undo a merge: the merged-away user is back with its id, identifiers and memory as
    they were; what the kept user gained since stays with it. 409 when already undone
    (MERGE_ALREADY_UNDONE), past the window (MERGE_EXPIRED), the kept user is gone
    (MERGE_KEPT_USER_GONE), or a moved identifier was unlinked or linked elsewhere since
    (MERGE_IDENTIFIER_CHANGED, naming it)."""
    dry_run = body is not None and body.dry_run
    record = await rt.identity.undo_merge(f.id, merge_id, actor="admin_key", dry_run=dry_run)
    data = merge_data(request, record, dry_run=False)
    return ok(request, {**data, "dry_run": dry_run}, obj="merge",
              type_="merge.undo.preview" if dry_run else "merge.undone")
