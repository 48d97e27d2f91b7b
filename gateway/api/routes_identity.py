"""/health, /users/resolve and /users/identifiers."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.convertors import PathConvertor

from gateway.api.deps import admin_access, client_access, formation, runtime
from gateway.api.envelope import ApiError, Envelope, Text, iso, ok
from gateway.api.models import Components, DatedIdentifier, TypedIdentifier
from gateway.runtime.formations import Formation
from gateway.runtime.health import Readiness
from gateway.runtime.wiring import Runtime
from identity import IdentityService


class AnyPath(PathConvertor):
    """Like `path`, but also matches a newline, so a bad identifier reaches the handler and
    gets a 422 naming the problem instead of falling through to another route. Registered
    by the app's wiring (`gateway.api.app`) before the unlink route that uses it."""

    regex = r"[\s\S]*"


router = APIRouter()
Rt = Annotated[Runtime, Depends(runtime)]

IdentifierForm = str | list[Any] | dict[str, Any]


class ResolveBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    identifier: IdentifierForm
    type: Text | None = Field(None, max_length=40, description="the identifier's type, when "
                             "`identifier` is a plain value (e.g. 4242 with type telegram)")
    create_user: bool = True


class LinkBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    muxi_user_id: str | None = None
    identifiers: list[IdentifierForm] = Field(min_length=1, max_length=100)


class Health(BaseModel):
    status: Literal["healthy"]
    formation_id: str
    version: str


class ReadinessReport(BaseModel):
    status: Literal["ready", "degraded", "not_ready"]
    components: Components
    formation_id: str


class Resolved(BaseModel):
    identifier: str
    type: str | None
    muxi_user_id: str
    formation_id: str


class Linked(BaseModel):
    muxi_user_id: str
    created_user: bool
    identifiers: list[TypedIdentifier] = Field(description="linked now, then already linked")
    linked: list[TypedIdentifier]
    existing: list[TypedIdentifier]
    count: int


class UserIdentifiers(BaseModel):
    muxi_user_id: str
    identifiers: list[DatedIdentifier]
    count: int


class Unlinked(BaseModel):
    message: str
    muxi_user_id: str


def _typed(ident: Any) -> dict[str, Any]:
    return {"identifier": ident.display, "type": ident.type}


@router.get("/health", tags=["health"], response_model=Envelope[Health])
async def health(request: Request, f: Annotated[Formation, Depends(formation)]) -> JSONResponse:
    from gateway import __version__

    return ok(request, {"status": "healthy", "formation_id": f.id, "version": __version__},
              obj="health", type_="health")


@router.get("/ready", tags=["health"], response_model=Envelope[ReadinessReport], responses={
    503: {"model": Envelope[ReadinessReport], "description": "Cannot serve now (the database or "
                                                       "the cache is down); Retry-After"}})
async def ready(request: Request, rt: Rt,
                f: Annotated[Formation, Depends(formation)]) -> JSONResponse:
    """Each component: database, cache, channels (`up`, `retrying` with the last error,
    `stopped` with the reason), responder. 503 while the database or cache is down."""
    readiness = getattr(request.app.state, "readiness", None)
    if readiness is None:
        readiness = request.app.state.readiness = Readiness(rt)
    is_ready, report = await readiness.report()
    response = ok(request, {**report, "formation_id": f.id}, obj="readiness",
                  type_="readiness")
    if not is_ready:
        response.status_code = 503
        response.headers["Retry-After"] = "5"
    return response


@router.post("/users/resolve", tags=["users"], response_model=Envelope[Resolved])
async def resolve(request: Request, body: ResolveBody, rt: Rt,
                  f: Annotated[Formation, Depends(client_access)]) -> JSONResponse:
    given: Any = body.identifier
    if body.type is not None:
        if not isinstance(given, str):
            raise ApiError(422, "INVALID_PARAMS", "type: give it beside a plain identifier "
                           "value, or inside the identifier object, not both", {"errors": [
                               {"field": "type", "msg": "type given twice",
                                "type": "value_error"}]})
        given = {"identifier": given, "type": body.type}
    ident = rt.identity.parse(given)
    user = await rt.identity.resolve(f.id, ident, create=body.create_user)
    if user is None:
        raise ApiError(404, "USER_NOT_FOUND", f"no user has identifier {ident.display}")
    return ok(request, {"identifier": ident.display, "type": ident.type, "muxi_user_id": user,
                        "formation_id": f.id}, obj="user", type_="user.resolved")


@router.post("/users/identifiers", tags=["users"], status_code=201,
             response_model=Envelope[Linked], response_description="At least one identifier "
             "was linked (and the user created, when `muxi_user_id` was null and none matched)",
             responses={200: {"model": Envelope[Linked], "description": "Every identifier was "
                              "linked to that user already: nothing changed"}})
async def link(request: Request, body: LinkBody, rt: Rt,
               f: Annotated[Formation, Depends(admin_access)]) -> JSONResponse:
    result = await rt.identity.associate(f.id, body.identifiers, body.muxi_user_id,
                                         actor="admin_key")
    data = {
        "muxi_user_id": result.user_id,
        "created_user": result.created_user,
        "identifiers": [_typed(i) for i in result.linked + result.existing],
        "linked": [_typed(i) for i in result.linked],
        "existing": [_typed(i) for i in result.existing],
        "count": len(result.linked) + len(result.existing),
    }
    return ok(request, data, obj="user_identifiers", type_="user.identifiers.linked",
              status=201 if result.linked else 200)


@router.get("/users/identifiers/{user_id}", tags=["users"],
            response_model=Envelope[UserIdentifiers])
async def identifiers(request: Request, user_id: str, rt: Rt,
                      f: Annotated[Formation, Depends(admin_access)]) -> JSONResponse:
    items = await rt.identity.identifiers_of(f.id, user_id)
    return ok(request, {
        "muxi_user_id": user_id,
        "identifiers": [{"identifier": i.identifier, "type": i.type,
                         "created_at": iso(i.created_at.timestamp())} for i in items],
        "count": len(items),
    }, obj="user_identifiers", type_="user.identifiers")


async def unlink(request: Request, identifier: str, rt: Rt,
                 f: Annotated[Formation, Depends(admin_access)]) -> JSONResponse:
    owner = await rt.identity.unlink(f.id, _path_identifier(rt.identity, identifier),
                                     actor="admin_key")
    return ok(request, {"message": "identifier unlinked", "muxi_user_id": owner},
              obj="user_identifiers", type_="user.identifiers.unlinked")


def _path_identifier(identity: IdentityService, text: str) -> Any:
    """The SDK sends identifiers in the path as they are: the identity core's one text
    form (`alice@acme.com`, `tg_789`, `slack:U123`)."""
    return text
