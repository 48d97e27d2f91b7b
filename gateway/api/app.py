"""The ASGI app: the formation API at /v1 and /api/{formation_id}/v1, channel webhooks,
the web chat page."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, FastAPI
from starlette.convertors import register_url_convertor

from gateway import __version__
from gateway.api import (
    routes_admin,
    routes_chat,
    routes_events,
    routes_identity,
    routes_memory,
    routes_merges,
    routes_scheduler,
    routes_users,
)
from gateway.api.docs import install_docs
from gateway.api.envelope import Envelope, ErrorBody, install_error_handlers
from gateway.api.limits import BodyLimit
from gateway.api.request_ids import RequestIds
from gateway.runtime import metrics
from gateway.runtime.formations import Formation
from gateway.runtime.wiring import Runtime

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong API key"},
    403: {"model": ErrorBody, "description": "The client key may not do this"},
    404: {"model": ErrorBody, "description": "Not found"},
    409: {"model": ErrorBody, "description": "Conflict, e.g. IDENTIFIER_CONFLICT"},
    422: {"model": ErrorBody, "description": "Invalid parameters (INVALID_PARAMS)"},
}


def api_router() -> APIRouter:
    router = APIRouter(responses=ERRORS)
    for module in (routes_identity, routes_merges, routes_chat, routes_memory,
                   routes_scheduler, routes_events, routes_admin, routes_users):
        router.include_router(module.router)
    # An identifier in a path may hold any character (a bad one then gets a 422 naming it).
    register_url_convertor("anypath", routes_identity.AnyPath())
    router.add_api_route("/users/identifiers/{identifier:anypath}", routes_identity.unlink,
                         methods=["DELETE"], tags=["users"],
                         response_model=Envelope[routes_identity.Unlinked])
    return router


def create_app(runtime: Runtime, formations: dict[str, Formation], *,
               extra_routes: list[Any] | None = None, lifespan: Any = None) -> FastAPI:
    app = FastAPI(
        title="Threadline formation API",
        version=__version__,
        description="One user behind every identifier; compatible with the MUXI formation "
                    "API and SDK. Authorize with a key (and the user a call speaks for) to "
                    "try the operations here. Every time is an ISO 8601 UTC string, but the "
                    "envelope's `timestamp` (milliseconds, as MUXI's). A NUL character "
                    "(U+0000) in any text is refused with 422 INVALID_PARAMS naming the "
                    "field.",
        lifespan=lifespan,
        docs_url=None, redoc_url=None,  # /docs is served from the package: see docs.py
    )
    install_docs(app)
    app.state.runtime = runtime
    app.state.formations = formations
    app.state.default_formation = runtime.settings.formation_id
    app.state.started_at = time.time()  # for /status's uptime
    install_error_handlers(app)
    router = api_router()
    app.include_router(router, prefix="/v1")
    app.include_router(router, prefix="/api/{formation_id}/v1", include_in_schema=False)
    for route in [metrics.route(), *(extra_routes or [])]:
        app.router.routes.append(route)
    app.add_middleware(BodyLimit, limit=runtime.settings.max_body_bytes, formations=formations,
                       default=runtime.settings.formation_id)
    app.add_middleware(RequestIds)  # outermost: every answer carries X-Request-ID
    return app
