"""The API's documentation, served with no network: Swagger UI at /docs, its scripts and
styles from the swagger-ui-bundle package (never a CDN), reading /openapi.json.

The document declares the keys and the user header as security schemes. FastAPI lists a
route's schemes as alternatives; a route that acts for a user needs a key *and* the user,
so `UserId` is folded into each key's requirement here."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from gateway.api.deps import USER

ASSETS = "/docs/assets"
USER_SCHEME = USER.scheme_name


def install_docs(app: FastAPI) -> None:
    """/docs and its assets, and the OpenAPI document with its security completed. The app
    is made with `docs_url=None, redoc_url=None` (FastAPI's own pages load a CDN)."""
    app.mount(ASSETS, StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")

    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} — docs",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon-32x32.png")

    app.add_route("/docs", docs, include_in_schema=False)

    def openapi() -> dict[str, Any]:
        if not app.openapi_schema:
            complete_security(FastAPI.openapi(app))
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def complete_security(schema: dict[str, Any]) -> None:
    """Every operation states its security: none (`[]`) for the health probes; a key; or a
    key and the user, where the route acts for one (either alone too, where the body or the
    query can name the user instead)."""
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            if not isinstance(operation, dict):
                continue
            security = operation.setdefault("security", [])
            if {USER_SCHEME: []} not in security:
                continue
            keys = [r for r in security if USER_SCHEME not in r]
            with_user = [{**r, USER_SCHEME: []} for r in keys]
            operation["security"] = with_user + (keys if _user_elsewhere(schema, operation)
                                                 else [])


def _user_elsewhere(schema: dict[str, Any], operation: dict[str, Any]) -> bool:
    if any(p.get("name") == "user_id" for p in operation.get("parameters", [])):
        return True
    content = operation.get("requestBody", {}).get("content", {})
    body = content.get("application/json", {}).get("schema", {})
    if "$ref" in body:
        body = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]
    return "user_id" in body.get("properties", {})
