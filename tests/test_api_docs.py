"""The API's document and its docs page: Swagger UI at /docs working with no network in a
real headless Chromium ("Try it out" sending the keys and the user), security declared on
every operation, and every success answered as the document says (schema and status).

The browser tests need Debian's chromium and the playwright package, as the web chat's do
(tests/test_webchat_browser.py); without them they skip, unless
THREADLINE_REQUIRE_SERVICES=1, where they fail."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from config.settings import Settings
from gateway.api.app import create_app
from gateway.runtime.formations import Formation
from gateway.runtime.wiring import Runtime
from tests.conftest import ADMIN, CLIENT
from tests.peers.http import serving
from tests.test_webchat_browser import ARGS, TIMEOUT_MS, chromium  # noqa: F401  (a fixture)

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
STREAMS = {("GET", "/v1/events")}  # endless: no JSON answer to check


@pytest.fixture
async def api(tmp_path) -> AsyncIterator[tuple[str, Runtime]]:
    """The API on SQLite (the document and the page do not depend on the store)."""
    settings = Settings(data_dir=tmp_path, identity_secret="test-identity-secret-0123456789",
                        credentials_key="kL3Z3fQ0m2nS4r8vYb1cD5eF7gH9iJ0kL2mN4oP6qR8=")
    runtime = await Runtime.open(settings)
    formation = settings.formation_id
    try:
        async with serving(create_app(runtime, {formation: Formation(formation, ADMIN, CLIENT)})
                           ) as url:
            yield url, runtime
    finally:
        await runtime.close()


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in doc["paths"].items()
            for method, op in item.items()]


async def test_every_operation_declares_its_security_and_the_keys_are_api_key_schemes(api):
    url, _ = api
    async with httpx.AsyncClient(base_url=url) as http:
        doc = (await http.get("/openapi.json")).json()
    schemes = doc["components"]["securitySchemes"]
    assert {name: (s["type"], s["in"], s["name"]) for name, s in schemes.items()} == {
        "AdminKey": ("apiKey", "header", "X-Muxi-Admin-Key"),
        "ClientKey": ("apiKey", "header", "X-Muxi-Client-Key"),
        "UserId": ("apiKey", "header", "X-Muxi-User-ID")}
    security = {(m, p): op["security"] for m, p, op in _operations(doc)}
    assert all("security" in op for _, _, op in _operations(doc))
    assert security[("GET", "/v1/health")] == security[("GET", "/v1/ready")] == []
    # A key alone, a key and the user, or either alone where the body can name the user.
    assert security[("POST", "/v1/users/resolve")] == [{"ClientKey": []}, {"AdminKey": []}]
    assert security[("GET", "/v1/users")] == [{"AdminKey": []}]
    assert security[("GET", "/v1/sessions")] == [{"ClientKey": [], "UserId": []},
                                                  {"AdminKey": [], "UserId": []}]
    assert security[("POST", "/v1/scheduler/jobs")] == [{"AdminKey": [], "UserId": []},
                                                        {"AdminKey": []}]
    for (method, path), required in security.items():
        if path not in ("/v1/health", "/v1/ready"):
            assert required and all({"AdminKey", "ClientKey"} & set(r) for r in required), (
                method, path)


async def test_every_operation_documents_its_success_answer(api):
    url, _ = api
    async with httpx.AsyncClient(base_url=url) as http:
        doc = (await http.get("/openapi.json")).json()
    for method, path, op in _operations(doc):
        successes = {code: r for code, r in op["responses"].items() if code.startswith("2")}
        assert successes, (method, path)
        for answer in successes.values():
            schemas = [media.get("schema") for media in answer.get("content", {}).values()]
            assert schemas and all(schemas), (method, path)
    link = doc["paths"]["/v1/users/identifiers"]["post"]["responses"]
    assert {"200", "201"} <= set(link)  # 201 linked something; 200 all were linked already


# The document and the answers agree: every JSON operation, driven once with real data.

def _validator(doc: dict[str, Any], path: str, method: str, status: int) -> Draft202012Validator:
    registry = Registry().with_resource(
        "urn:openapi", Resource.from_contents(doc, default_specification=DRAFT202012))
    pointer = "/".join(part.replace("~", "~0").replace("/", "~1") for part in (
        "paths", path, method.lower(), "responses", str(status), "content",
        "application/json", "schema"))
    return Draft202012Validator({"$ref": f"urn:openapi#/{pointer}"}, registry=registry)


def _times(value: Any, key: str = "") -> list[tuple[str, Any]]:
    """Every time in an answer, by the names the API gives times."""
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _times(v, k)]
    if isinstance(value, list):
        return [t for v in value for t in _times(v, key)]
    timed = key.endswith("_at") or key in ("at", "since", "next_run", "last_run")
    return [(key, value)] if timed and value is not None else []


def _template(doc: dict[str, Any], method: str, path: str) -> str:
    for template, item in doc["paths"].items():
        pattern = re.sub(r"\{[^}]+\}", "[^/]+", template)
        if method.lower() in item and re.fullmatch(pattern, path):
            return template
    raise AssertionError(f"{method} {path} is not in the document")


async def test_every_success_matches_the_document_and_every_time_is_iso_8601_utc(server):
    url, _ = server
    answers: list[httpx.Response] = []

    async def keep(response: httpx.Response) -> None:
        await response.aread()
        answers.append(response)

    admin = {"X-Muxi-Admin-Key": ADMIN}
    client = {"X-Muxi-Client-Key": CLIENT, "X-Muxi-User-ID": "ann@x.co"}
    async with httpx.AsyncClient(base_url=url + "/v1", event_hooks={"response": [keep]}
                                 ) as http:
        async def ok(method: str, path: str, **kwargs: Any) -> dict[str, Any]:
            r = await http.request(method, path, **kwargs)
            assert r.is_success, (method, path, r.text)
            return r.json()["data"]

        await ok("GET", "/health")
        await ok("GET", "/ready")
        user = (await ok("POST", "/users/resolve", json={"identifier": "ann@x.co"},
                         headers=client))["muxi_user_id"]
        await ok("POST", "/users/identifiers", headers=admin,
                 json={"muxi_user_id": user, "identifiers": [["U1", "slack"]]})
        again = await http.post("/users/identifiers", headers=admin,
                                json={"muxi_user_id": user, "identifiers": [["U1", "slack"]]})
        assert again.status_code == 200  # nothing new: documented as 200
        await ok("GET", f"/users/identifiers/{user}", headers=admin)
        for text in ("my budget is $5,000", "I prefer short answers",
                     "remember that the demo is on Friday"):
            chat = await ok("POST", "/chat", json={"message": text}, headers=client)
        session = chat["session_id"]
        await ok("GET", "/memories", headers=client)
        memory = await ok("POST", "/memories", json={"detail": "aisle seats"}, headers=client)
        await ok("DELETE", f"/memories/{memory['id']}", headers=client)
        await ok("GET", "/memory/buffer", headers=client)
        await ok("GET", "/memory", headers=admin)
        await ok("GET", "/memory/stats", headers=admin)
        await ok("GET", "/sessions", headers=client)
        await ok("GET", f"/sessions/{session}", headers=client)
        await ok("GET", f"/sessions/{session}/messages", headers=client)
        await ok("DELETE", f"/memory/buffer/{session}", headers=client)
        await ok("DELETE", "/memory/buffer", headers=client)
        cred = await ok("POST", "/credentials", headers=client,
                        json={"service": "github", "credential": {"token": "ghp_0123456789"}})
        await ok("GET", "/credentials", headers=client)
        await ok("GET", f"/credentials/{cred['id']}", headers=client)
        await ok("DELETE", f"/credentials/{cred['id']}", headers=client)
        await ok("GET", "/scheduler", headers=admin)
        job = await ok("POST", "/scheduler/jobs", headers=admin, json={
            "type": "one_time", "schedule": "in 10 minutes", "message": "x", "user_id": user})
        await ok("GET", "/scheduler/jobs", params={"user_id": "ann@x.co"}, headers=admin)
        await ok("GET", f"/scheduler/jobs/{job['id']}", headers=admin)
        await ok("PUT", f"/scheduler/jobs/{job['id']}", json={"title": "t"}, headers=admin)
        await ok("POST", f"/scheduler/jobs/{job['id']}/pause", headers=admin)
        await ok("POST", f"/scheduler/jobs/{job['id']}/resume", headers=admin)
        await ok("GET", "/status", headers=admin)
        await ok("GET", "/formation", headers=admin)
        await ok("GET", "/audit", headers=admin)
        await ok("GET", "/users", headers=admin)
        await ok("GET", f"/users/{user}/export", headers=admin)
        await ok("DELETE", f"/scheduler/jobs/{job['id']}", headers=admin)
        other = (await ok("POST", "/users/resolve", json={"identifier": "bo@x.co"},
                          headers=client))["muxi_user_id"]
        preview = await http.post(f"/users/{user}/merge", headers=admin,
                                  json={"from": other, "dry_run": True})
        assert preview.status_code == 200  # a preview: documented as 200
        merged = await ok("POST", f"/users/{user}/merge", json={"from": other}, headers=admin)
        await ok("GET", f"/merges/{merged['merge_id']}", headers=admin)
        await ok("POST", f"/merges/{merged['merge_id']}/undo", headers=admin)
        await ok("DELETE", "/users/identifiers/slack:U1", headers=admin)
        await ok("DELETE", f"/users/{user}", headers=admin)
        doc = (await http.get(url + "/openapi.json")).json()

    seen = set()
    for r in answers:
        if r.url.path == "/openapi.json":
            continue
        template = _template(doc, r.request.method, r.url.path)
        seen.add((r.request.method, template))
        responses = doc["paths"][template][r.request.method.lower()]["responses"]
        assert str(r.status_code) in responses, (r.request.method, template, r.status_code)
        body = r.json()
        errors = [e.message for e in _validator(doc, template, r.request.method,
                                                 r.status_code).iter_errors(body)]
        assert not errors, (r.request.method, template, errors)
        assert isinstance(body["timestamp"], int)  # the envelope's, in ms (MUXI's form)
        for key, value in _times(body["data"]):
            assert isinstance(value, str) and ISO_UTC.match(value), (template, key, value)
    documented = {(m, p) for m, p, _ in _operations(doc)} - STREAMS
    assert documented <= seen, f"not exercised here: {sorted(documented - seen)}"


# /docs in a real browser, with no network but the server's own.

async def _docs_page(executable: str, url: str, problems: list[str]) -> Any:
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=TIMEOUT_MS)
    p = await async_playwright().start()
    browser = await p.chromium.launch(executable_path=executable, args=ARGS, headless=True,
                                      timeout=TIMEOUT_MS)
    page = await (await browser.new_context()).new_page()
    page.set_default_timeout(TIMEOUT_MS)

    async def local_only(route: Any) -> None:
        if route.request.url.startswith(url):
            await route.continue_()
        else:  # a CDN, a font, a validator badge: fail the request and the test
            problems.append(f"fetched from elsewhere: {route.request.url}")
            await route.abort()

    await page.route("**/*", local_only)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}")
            if msg.type == "error" else None)
    page.on("response", lambda r: problems.append(f"{r.status} for {r.url}")
            if r.status >= 400 and "/v1/" not in r.url else None)
    await page.goto(f"{url}/docs")
    return p, browser, page


async def test_docs_render_every_operation_with_no_network(api, chromium):  # noqa: F811
    from playwright.async_api import expect

    url, _ = api
    async with httpx.AsyncClient(base_url=url) as http:
        doc = (await http.get("/openapi.json")).json()
    problems: list[str] = []
    p, browser, page = await _docs_page(chromium, url, problems)
    try:
        await expect(page.locator(".information-container .title")).to_contain_text(
            "Threadline formation API")
        await expect(page.locator(".opblock")).to_have_count(len(_operations(doc)))
        await expect(page.locator("button.authorize").first).to_be_visible()
        # A response model is shown, not an empty schema.
        await page.locator("#operations-sessions-sessions_v1_sessions_get "
                           ".opblock-summary").click()
        await expect(page.locator("#operations-sessions-sessions_v1_sessions_get")
                     ).to_contain_text("last_activity")
    finally:
        await browser.close()
        await p.stop()
    assert not problems, problems


async def test_try_it_out_sends_the_keys_and_the_user(api, chromium):  # noqa: F811
    from playwright.async_api import expect

    url, _ = api
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        told = await http.post("/chat", json={"message": "hello"}, headers={
            "X-Muxi-Client-Key": CLIENT, "X-Muxi-User-ID": "docs@x.co"})
    session = told.json()["data"]["session_id"]
    problems: list[str] = []
    sent: list[dict[str, str]] = []
    p, browser, page = await _docs_page(chromium, url, problems)
    try:
        page.on("request", lambda r: sent.append(r.headers) if "/v1/sessions" in r.url
                else None)
        await page.locator("button.authorize").first.click()
        for scheme, value in (("ClientKey", CLIENT), ("UserId", "docs@x.co")):
            box = page.locator(".auth-container").filter(has_text=scheme)
            await box.locator("input").fill(value)
            await box.locator("button.authorize").click()
            await expect(box.locator("button", has_text="Logout")).to_be_visible()
        await page.locator(".dialog-ux button.btn-done").first.click()
        operation = page.locator("#operations-sessions-sessions_v1_sessions_get")
        await operation.locator(".opblock-summary").click()
        await operation.locator("button.try-out__btn").click()
        await operation.locator("button.execute").click()
        await expect(operation.locator(".live-responses-table tbody .response-col_status").first
                     ).to_have_text("200")
        await expect(operation.locator(".live-responses-table")).to_contain_text(session)
    finally:
        await browser.close()
        await p.stop()
    assert not problems, problems
    assert sent and sent[-1]["x-muxi-client-key"] == CLIENT
    assert sent[-1]["x-muxi-user-id"] == "docs@x.co"
