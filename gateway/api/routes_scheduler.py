"""/scheduler and /scheduler/jobs: reminders and recurring messages (admin key; user in the
body/query)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.api.deps import NAMES_USER, admin_access, identify, require_user, runtime
from gateway.api.envelope import ApiError, Envelope, ErrorBody, Text, iso, ok
from gateway.api.models import Deleted
from gateway.runtime.formations import Formation
from gateway.runtime.wiring import Runtime
from memory.tasks import LEASE_SECONDS
from memory.types import Task

router = APIRouter()
Rt = Annotated[Runtime, Depends(runtime)]
Admin = Annotated[Formation, Depends(admin_access)]


class JobBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Text = Field("one_time", max_length=20)
    schedule: Text = Field(min_length=1, max_length=200)
    message: Text = Field(min_length=1, max_length=5000)
    user_id: Text | None = Field(None, max_length=512, description=(
        "whose job (a usr_… id or any identifier), instead of X-Muxi-User-ID"))


class JobChange(BaseModel):
    """What `update_scheduler_job` sends: any of message, schedule and title."""

    model_config = ConfigDict(extra="ignore")
    schedule: Text | None = Field(None, min_length=1, max_length=200)
    message: Text | None = Field(None, min_length=1, max_length=5000)
    title: Text | None = Field(None, max_length=200)


class Job(BaseModel):
    id: str
    type: str = Field(description="`one_time` or `recurring`")
    schedule: str
    message: str
    title: str | None
    user_id: str
    next_run: datetime | None = Field(description="none while paused or once finished")
    status: str = Field(description="`scheduled`, `paused`, `running`, `done`, `failed` "
                                    "or `cancelled`")
    paused: bool
    last_run: datetime | None
    created_at: datetime
    attempts: int = Field(description="failed deliveries so far")
    last_error: str | None
    delivered_via: str | None = Field(description="where it was last delivered, e.g. "
                                                  "`telegram:123`")


class Jobs(BaseModel):
    jobs: list[Job]
    count: int


class Retry(BaseModel):
    first_delay_seconds: float
    max_delay_seconds: float
    max_attempts: int


class SchedulerConfig(BaseModel):
    running: bool = Field(description="false: this process fires nothing (e.g. API-only)")
    interval_seconds: float
    lease_seconds: float
    retry: Retry
    job_types: list[str]
    schedule_formats: dict[str, list[str]]
    jobs: dict[str, int] = Field(description="this formation's jobs in each state")


def _job(t: Task) -> dict[str, Any]:
    # A paused job has no next run until it is resumed (its due time is kept meanwhile).
    return {"id": t.id, "type": t.kind, "schedule": t.schedule, "message": t.message,
            "title": t.title, "user_id": t.user_id,
            "next_run": None if t.status == "paused" else iso(t.next_run), "status": t.status,
            "paused": t.status == "paused", "last_run": iso(t.last_run),
            "created_at": iso(t.created_at), "attempts": t.attempts,
            "last_error": t.last_error, "delivered_via": t.delivered_via}


@router.get("/scheduler", tags=["scheduler"], response_model=Envelope[SchedulerConfig])
async def scheduler_config(request: Request, rt: Rt, f: Admin) -> JSONResponse:
    """How this gateway fires jobs, and how many jobs of this formation are in each state."""
    s = rt.scheduler
    return ok(request, {
        "running": s.running,  # False: this process fires nothing (e.g. API-only)
        "interval_seconds": s.interval,
        "lease_seconds": LEASE_SECONDS,
        "retry": {"first_delay_seconds": s.backoff.first, "max_delay_seconds": s.backoff.cap,
                  "max_attempts": s.backoff.max_attempts},
        "job_types": ["one_time", "recurring"],
        "schedule_formats": {
            "one_time": ["ISO 8601 time", "in N seconds|minutes|hours|days"],
            "recurring": ["5-field cron expression", "every N minutes|hours|days"]},
        "jobs": await rt.memory.tasks.counts(f.id),
    }, obj="scheduler", type_="scheduler.config")


@router.get("/scheduler/jobs", tags=["scheduler"], dependencies=[NAMES_USER],
            response_model=Envelope[Jobs])
async def jobs(request: Request, rt: Rt, f: Admin,
               user_id: Annotated[str | None, Query(max_length=512, description=(
                   "whose jobs, instead of X-Muxi-User-ID (the MUXI SDK sends it here)"))
               ] = None) -> JSONResponse:
    user = await require_user(request, f, rt, given=user_id)
    items = await rt.memory.tasks.list(user)
    return ok(request, {"jobs": [_job(t) for t in items], "count": len(items)},
              obj="jobs", type_="scheduler.jobs")


@router.post("/scheduler/jobs", tags=["scheduler"], status_code=201, dependencies=[NAMES_USER],
             response_model=Envelope[Job])
async def create_job(request: Request, body: JobBody, rt: Rt, f: Admin) -> JSONResponse:
    caller = await identify(request, f, rt, create=True, given=body.user_id)
    user = caller.user_id
    assert user is not None
    # It is delivered where the API listens (GET /events) or else the user's latest channel.
    task = await rt.memory.tasks.add(user, f.id, body.type, body.schedule, body.message,
                                     channel="api", conversation=f"api:{caller.label}")
    return ok(request, _job(task), obj="job", type_="scheduler.job.created", status=201)


@router.get("/scheduler/jobs/{job_id}", tags=["scheduler"], response_model=Envelope[Job])
async def job(request: Request, job_id: str, rt: Rt, f: Admin) -> JSONResponse:
    return ok(request, _job(await rt.memory.tasks.in_formation(f.id, job_id)), obj="job",
              type_="scheduler.job")


@router.put("/scheduler/jobs/{job_id}", tags=["scheduler"], response_model=Envelope[Job],
            responses={409: {"model": ErrorBody, "description": "The job is firing right now "
                             "(JOB_RUNNING; Retry-After) or finished (JOB_NOT_ACTIVE)"}})
async def update_job(request: Request, job_id: str, body: JobChange, rt: Rt,
                     f: Admin) -> JSONResponse:
    if body.schedule is None and body.message is None and body.title is None:
        raise ApiError(422, "INVALID_PARAMS", "body: give message, schedule or title",
                       {"errors": [{"field": "body", "msg": "nothing to change",
                                    "type": "missing"}]})
    task = await rt.memory.tasks.update(f.id, job_id, schedule=body.schedule,
                                        message=body.message, title=body.title)
    return ok(request, _job(task), obj="job", type_="scheduler.job.updated")


@router.post("/scheduler/jobs/{job_id}/pause", tags=["scheduler"],
             response_model=Envelope[Job])
async def pause_job(request: Request, job_id: str, rt: Rt, f: Admin) -> JSONResponse:
    """A paused job never fires; pausing it again changes nothing."""
    task = await rt.memory.tasks.pause(f.id, job_id)
    return ok(request, _job(task), obj="job", type_="scheduler.job.paused")


@router.post("/scheduler/jobs/{job_id}/resume", tags=["scheduler"],
             response_model=Envelope[Job])
async def resume_job(request: Request, job_id: str, rt: Rt, f: Admin) -> JSONResponse:
    """It fires at its next due time: a recurring job skips the runs it missed; a one-time
    job whose time passed while paused fires at once."""
    task = await rt.memory.tasks.resume(f.id, job_id)
    return ok(request, _job(task), obj="job", type_="scheduler.job.resumed")


@router.delete("/scheduler/jobs/{job_id}", tags=["scheduler"],
               response_model=Envelope[Deleted])
async def delete_job(request: Request, job_id: str, rt: Rt, f: Admin) -> JSONResponse:
    task = await rt.memory.tasks.in_formation(f.id, job_id)
    await rt.memory.tasks.cancel(task.user_id, job_id)
    return ok(request, {"id": job_id, "deleted": True}, obj="job",
              type_="scheduler.job.deleted")
