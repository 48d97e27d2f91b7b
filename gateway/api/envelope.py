"""The response envelope the MUXI SDK unwraps, and errors in the shape it maps to exceptions."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, Generic, Literal, TypeVar

import structlog
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from config.errors import ThreadlineError
from gateway.conversation.request_ids import HEADER
from gateway.runtime.logs import Throttle, mark_logged
from identity import (
    IdentifierConflictError,
    IdentifierNotFoundError,
    IdentityError,
    InvalidIdentifierError,
    MergeNotFoundError,
    MergeUndoRefusedError,
    UserNotFoundError,
)
from identity.storage import DatabaseUnavailableError
from memory.lifecycle import iso, iso_at  # noqa: F401  (one ISO 8601 UTC form everywhere)
from memory.types import InvalidScheduleError, NotFoundError, TaskStateError

log = structlog.get_logger("threadline.api")

RETRY_AFTER = "5"  # seconds, as /ready says while a dependency is down


NUL_MESSAGE = "must not contain a NUL character (\\u0000)"


def _no_nul(value: str) -> str:
    # PostgreSQL cannot store U+0000 in text: refuse it here, naming the field. (Requests
    # are checked whole before their models are, by `gateway.api.deps.refuse_nul`; this
    # keeps a model safe wherever else it is validated.)
    if "\x00" in value:
        raise ValueError(NUL_MESSAGE)
    return value


Text = Annotated[str, AfterValidator(_no_nul)]


def nul_fields(value: Any, path: str = "") -> Iterator[str]:
    """Where in a parsed JSON value a string (or an object's key) holds U+0000, as
    dotted paths the way validation errors name fields (`identifiers.0`, `credential.token`)."""
    if isinstance(value, str):
        if "\x00" in value:
            yield path or "body"
    elif isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                yield f"{path or 'body'} (a key)"
            else:
                yield from nul_fields(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from nul_fields(item, f"{path}.{i}" if path else str(i))


class ApiError(ThreadlineError):
    def __init__(self, status: int, code: str, message: str,
                 details: dict[str, Any] | None = None, *,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}
        self.headers = headers


def nul_error(fields: list[str]) -> ApiError:
    return ApiError(422, "INVALID_PARAMS", f"{fields[0]}: {NUL_MESSAGE}", {"errors": [
        {"field": f, "msg": NUL_MESSAGE, "type": "value_error"} for f in fields]})


def request_id(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = f"req_{uuid.uuid4().hex[:20]}"
    return rid


def ok(request: Request, data: Any, *, obj: str, type_: str, status: int = 200) -> JSONResponse:
    return JSONResponse(
        {"object": obj, "type": type_, "timestamp": int(time.time() * 1000),
         "request": {"id": request_id(request)}, "success": True, "data": data},
        status_code=status,
    )


def error_response(request: Request, status: int, code: str, message: str,
                   details: dict[str, Any] | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"object": "error", "type": code.lower(), "timestamp": int(time.time() * 1000),
         "request": {"id": request_id(request)}, "success": False,
         "code": code, "message": message, "error": {"code": code, "message": message},
         "details": details or {}},
        status_code=status, headers=headers,
    )


T = TypeVar("T")
MS_DESCRIPTION = ("when the answer was made, in milliseconds since the Unix epoch: the MUXI "
                  "envelope's form, kept for its SDKs; every other time in the API is an "
                  "ISO 8601 UTC string")


class RequestRef(BaseModel):
    id: str = Field(examples=["req_0123456789abcdef0123"])


class Envelope(BaseModel, Generic[T]):
    """Every success: the answer in `data` (which the MUXI SDK returns, adding
    `request_id` and `timestamp`)."""

    object: str
    type: str
    timestamp: int = Field(description=MS_DESCRIPTION)
    request: RequestRef
    success: Literal[True]
    data: T


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    """Every error: `code` and `message` at the top level, as the SDKs read them; a 422
    lists each bad field in `details.errors` as {field, msg, type}."""

    object: Literal["error"]
    type: str
    timestamp: int = Field(description=MS_DESCRIPTION)
    request: RequestRef
    success: Literal[False]
    code: str
    message: str
    error: ErrorDetail
    details: dict[str, Any]


def _identity_status(exc: IdentityError) -> tuple[int, str, dict[str, Any]]:
    if isinstance(exc, IdentifierConflictError):
        return 409, "IDENTIFIER_CONFLICT", {"identifier": exc.identifier.display,
                                            "owner_id": exc.owner_id}
    if isinstance(exc, UserNotFoundError):
        return 404, "USER_NOT_FOUND", {"user_id": exc.user_id}
    if isinstance(exc, IdentifierNotFoundError):
        return 404, "IDENTIFIER_NOT_FOUND", {"identifier": exc.identifier.display}
    if isinstance(exc, MergeNotFoundError):
        return 404, "MERGE_NOT_FOUND", {"merge_id": exc.merge_id[:80]}
    if isinstance(exc, MergeUndoRefusedError):
        details: dict[str, Any] = {"merge_id": exc.merge_id, "reason": exc.reason}
        if exc.reason == "identifier_changed":
            details.update(identifier=exc.identifier, owner_id=exc.owner_id)
        elif exc.reason == "kept_user_gone":
            details.update(user_id=exc.user_id, later_merge_id=exc.later_merge)
        else:
            details["undone_at" if exc.reason == "already_undone" else "expired_at"] = iso(
                exc.at)
        return 409, f"MERGE_{exc.reason.upper()}", details
    if isinstance(exc, InvalidIdentifierError):
        return 422, "INVALID_PARAMS", {"errors": [{"field": exc.field, "msg": str(exc),
                                                   "type": "value_error"}]}
    return 422, "INVALID_PARAMS", {}


def install_error_handlers(app: Any) -> None:
    outages = Throttle(interval=10.0)

    @app.exception_handler(DatabaseUnavailableError)
    async def database_down(request: Request, exc: DatabaseUnavailableError) -> JSONResponse:
        # Every request fails alike while it lasts: one line per failure class per interval.
        cause = exc.__cause__ or exc
        if (suppressed := outages.allow(type(cause).__name__)) is not None:
            log.warning("database unavailable; answering 503", error=str(exc),
                        suppressed=suppressed)
        runtime = getattr(request.app.state, "runtime", None)
        if runtime is not None:
            runtime.metrics.unavailable.labels("database").inc()
        return error_response(request, 503, "DATABASE_UNAVAILABLE",
                              "the database cannot be reached just now; try again shortly",
                              headers={"Retry-After": RETRY_AFTER})

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status, exc.code, exc.message, exc.details,
                              headers=exc.headers)

    @app.exception_handler(IdentityError)
    async def identity_error(request: Request, exc: IdentityError) -> JSONResponse:
        status, code, details = _identity_status(exc)
        return error_response(request, status, code, str(exc), details)

    @app.exception_handler(NotFoundError)
    async def not_found(request: Request, exc: NotFoundError) -> JSONResponse:
        return error_response(request, 404, "NOT_FOUND", str(exc))

    @app.exception_handler(InvalidScheduleError)
    async def bad_schedule(request: Request, exc: InvalidScheduleError) -> JSONResponse:
        return error_response(request, 422, "INVALID_PARAMS", str(exc), {
            "errors": [{"field": "schedule", "msg": str(exc), "type": "value_error"}]})

    @app.exception_handler(TaskStateError)
    async def job_state(request: Request, exc: TaskStateError) -> JSONResponse:
        # Firing right now: a moment later it is scheduled (or done) again.
        running = exc.status == "running"
        return error_response(request, 409, "JOB_RUNNING" if running else "JOB_NOT_ACTIVE",
                              str(exc), {"job_id": exc.task_id, "status": exc.status},
                              headers={"Retry-After": "1"} if running else None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body") or "body",
             "msg": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"field": "body", "msg": "invalid request"}
        return error_response(request, 422, "INVALID_PARAMS",
                              f"{first['field']}: {first['msg']}", {"errors": errors})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "ERROR")
        return error_response(request, exc.status_code, code, str(exc.detail),
                              headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception) -> JSONResponse:
        # The route's template, never the path itself: a path can carry an identifier or a
        # key ("/v1/users/identifiers/api_key:sk-…").
        route = getattr(request.scope.get("route"), "path", "?")
        log.exception("request failed", method=request.method, route=route,
                      request_id=request_id(request))
        mark_logged(exc)
        # Sent from outside every middleware (Starlette's error handling is outermost), so
        # the request id header is set here.
        return error_response(request, 500, "INTERNAL_ERROR",
                              "the server failed to handle this request; it has been logged",
                              headers={HEADER: request_id(request)})
