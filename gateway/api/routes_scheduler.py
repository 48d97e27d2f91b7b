"""/scheduler/jobs: reminders and recurring messages (admin key; user in the body/query)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.deps import admin_access, identify, require_user, runtime
from gateway.api.envelope import ApiError, Text, ok
from gateway.runtime.formations import Formation
from gateway.runtime.wiring import Runtime
from memory.types import Task

router = APIRouter()
Rt = Annotated[Runtime, Depends(runtime)]
Admin = Annotated[Formation, Depends(admin_access)]


class JobBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Text = Field("one_time", max_length=20)
    schedule: Text = Field(min_length=1, max_length=200)
    message: Text = Field(min_length=1, max_length=5000)
    user_id: Text | None = Field(None, max_length=512)


def _job(t: Task) -> dict[str, Any]:
    return {"id": t.id, "type": t.kind, "schedule": t.schedule, "message": t.message,
            "user_id": t.user_id, "next_run": t.next_run, "status": t.status,
            "last_run": t.last_run, "created_at": t.created_at, "attempts": t.attempts,
            "last_error": t.last_error, "delivered_via": t.delivered_via}


async def _owned(rt: Runtime, f: Formation, job_id: str) -> Task:
    row = await rt.db.fetchrow(
        "SELECT user_id FROM scheduled_tasks WHERE id = $1 AND formation_id = $2", job_id, f.id)
    if row is None:
        raise ApiError(404, "NOT_FOUND", f"no scheduled job {job_id}")
    return await rt.memory.tasks.get(row[0], job_id)


@router.get("/scheduler/jobs", tags=["scheduler"])
async def jobs(request: Request, rt: Rt, f: Admin) -> JSONResponse:
    user = await require_user(request, f, rt)
    items = await rt.memory.tasks.list(user)
    return ok(request, {"jobs": [_job(t) for t in items], "count": len(items)},
              obj="jobs", type_="scheduler.jobs")


@router.post("/scheduler/jobs", tags=["scheduler"], status_code=201)
async def create_job(request: Request, body: JobBody, rt: Rt, f: Admin) -> JSONResponse:
    caller = await identify(request, f, rt, create=True, given=body.user_id)
    user = caller.user_id
    assert user is not None
    # It is delivered where the API listens (GET /events) or else the user's latest channel.
    task = await rt.memory.tasks.add(user, f.id, body.type, body.schedule, body.message,
                                     channel="api", conversation=f"api:{caller.label}")
    return ok(request, _job(task), obj="job", type_="scheduler.job.created", status=201)


@router.get("/scheduler/jobs/{job_id}", tags=["scheduler"])
async def job(request: Request, job_id: str, rt: Rt, f: Admin) -> JSONResponse:
    return ok(request, _job(await _owned(rt, f, job_id)), obj="job", type_="scheduler.job")


@router.delete("/scheduler/jobs/{job_id}", tags=["scheduler"])
async def delete_job(request: Request, job_id: str, rt: Rt, f: Admin) -> JSONResponse:
    task = await _owned(rt, f, job_id)
    await rt.memory.tasks.cancel(task.user_id, job_id)
    return ok(request, {"id": job_id, "deleted": True}, obj="job",
              type_="scheduler.job.deleted")
