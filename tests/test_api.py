"""The HTTP API through a real server socket, with raw HTTP and the official MUXI SDK."""

import asyncio
import json
import re
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import ADMIN, CLIENT


def headers(user=None, key=CLIENT, admin=False):
    h = {"X-Muxi-Admin-Key" if admin else "X-Muxi-Client-Key": ADMIN if admin else key}
    if user:
        h["X-Muxi-User-ID"] = user
    return h


async def test_the_spec_story_over_http(server):
    url, _ = server
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        told = (await http.post("/chat", json={"message": "My budget is $5,000"},
                                headers=headers("user_123"))).json()
        assert told["success"] and "$5,000" in told["data"]["message"]["content"]
        user = told["data"]["user_id"]
        linked = await http.post("/users/identifiers", headers=headers(admin=True), json={
            "muxi_user_id": user,
            "identifiers": ["user_123", {"identifier": "U98765ABC", "type": "slack"}]})
        assert linked.status_code == 201, linked.text
        asked = (await http.post("/chat", json={"message": "What's my budget?"},
                                 headers=headers("U98765ABC"))).json()["data"]
        assert "$5,000" in asked["message"]["content"] and asked["user_id"] == user
        listed = (await http.get(f"/users/identifiers/{user}", headers=headers(admin=True))
                  ).json()["data"]
        assert [i["identifier"] for i in listed["identifiers"]] == ["user_123", "U98765ABC"]


async def test_errors_carry_code_message_and_status(server):
    url, _ = server
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        r = await http.post("/chat", json={"message": "hi"})
        assert r.status_code == 401 and r.json()["code"] == "UNAUTHORIZED"
        r = await http.post("/users/identifiers", headers=headers(),
                            json={"identifiers": ["a@b.co"]})
        assert r.status_code == 403 and r.json()["code"] == "FORBIDDEN"
        r = await http.post("/chat", json={"nope": 1}, headers=headers("a@b.co"))
        assert r.status_code == 422 and r.json()["code"] == "INVALID_PARAMS"
        assert "message" in r.json()["message"]
        r = await http.post("/chat", content=b"{not json", headers={
            **headers("a@b.co"), "Content-Type": "application/json"})
        assert r.status_code == 422
        r = await http.post("/users/identifiers", headers=headers(admin=True),
                            json={"identifiers": ["null"]})
        assert r.status_code == 422 and "identifiers[0]" in r.json()["message"]
        a = (await http.post("/users/resolve", headers=headers(),
                             json={"identifier": "alice@x.co"})).json()["data"]["muxi_user_id"]
        b = (await http.post("/users/resolve", headers=headers(),
                             json={"identifier": "bob@x.co"})).json()["data"]["muxi_user_id"]
        r = await http.post("/users/identifiers", headers=headers(admin=True),
                            json={"muxi_user_id": b, "identifiers": ["alice@x.co", "new@x.co"]})
        assert r.status_code == 409 and r.json()["code"] == "IDENTIFIER_CONFLICT"
        assert a in r.json()["message"]
        r = await http.post("/users/resolve", headers=headers(),
                            json={"identifier": "new@x.co", "create_user": False})
        assert r.status_code == 404
        r = await http.delete("/users/identifiers/ghost@x.co", headers=headers(admin=True))
        assert r.status_code == 404


async def test_formations_are_addressed_by_path_with_their_own_keys(server):
    url, _ = server
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/api/other/v1/users/resolve", headers=headers(),
                            json={"identifier": "alice@x.co"})
        assert r.status_code == 401  # the default formation's key is not other's
        other = {"X-Muxi-Client-Key": "other-client-0123456789a"}
        there = (await http.post("/api/other/v1/users/resolve", headers=other,
                                 json={"identifier": "alice@x.co"})).json()["data"]
        here = (await http.post("/v1/users/resolve", headers=headers(),
                                json={"identifier": "alice@x.co"})).json()["data"]
        assert there["muxi_user_id"] != here["muxi_user_id"]
        r = await http.get(f"/api/other/v1/users/identifiers/{here['muxi_user_id']}",
                           headers={"X-Muxi-Admin-Key": "other-admin-0123456789ab"})
        assert r.status_code == 404
        assert (await http.get("/api/nowhere/v1/health")).status_code == 404


async def test_streaming_chat_sends_tokens_then_done(server):
    url, _ = server
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        async with http.stream("POST", "/chat", json={"message": "my budget is $5", "stream": True},
                               headers=headers("s@x.co")) as r:
            body = "".join([chunk async for chunk in r.aiter_text()])
    assert r.headers["content-type"].startswith("text/event-stream")
    assert body.count("data: {\"token\"") >= 3 and "event: done" in body


async def test_the_official_muxi_sdk_works_against_the_server(server, monkeypatch):
    from muxi import AsyncFormationClient, FormationClient
    from muxi.errors import ConflictError, NotFoundError, ValidationError

    monkeypatch.setenv("MUXI_SDK_VERSION_NOTIFICATION", "0")
    url, runtime = server
    formation = runtime.settings.formation_id
    client = AsyncFormationClient(server_url=url, formation_id=formation, admin_key=ADMIN,
                                  client_key=CLIENT)
    assert (await client.health())["status"] == "healthy"
    told = await client.chat({"message": "My budget is $5,000"}, user_id="user_123")
    user = told["user_id"]
    linked = await client.link_user_identifier(user, ["user_123", ["U98765ABC", "slack"]])
    assert linked["muxi_user_id"] == user
    asked = await client.chat({"message": "What's my budget?"}, user_id="U98765ABC")
    assert "$5,000" in asked["message"]["content"]
    ids = await client.get_user_identifiers_for_user(user)
    assert {i["identifier"] for i in ids["identifiers"]} == {"user_123", "U98765ABC"}
    resolved = await client.resolve_user("U98765ABC")
    assert resolved["muxi_user_id"] == user
    with pytest.raises(ConflictError):
        other = (await client.resolve_user("bob@x.co", create_user=True))["muxi_user_id"]
        await client.link_user_identifier(other, ["user_123"])
    with pytest.raises(ValidationError):
        await client.link_user_identifier(user, ["undefined"])

    memory = await client.add_memory("user_123", "note", "prefers aisle seats")
    memories = await client.get_memories("U98765ABC")
    assert any(m["content"] == "prefers aisle seats" for m in memories["memories"])
    await client.delete_memory("user_123", memory["id"])
    sessions = await client.get_sessions("user_123")
    assert sessions["count"] == 2
    messages = await client.get_session_messages(asked["session_id"], "user_123")
    assert [m["role"] for m in messages["messages"]] == ["user", "assistant"]
    assert (await client.get_user_buffer("user_123"))["total_messages"] == 4

    cred = await client.create_credential("user_123", {"service": "github",
                                                       "credential": {"token": "ghp_x1234567890"}})
    assert "ghp_x1234567890" not in str(cred) and cred["credential_preview"]
    assert (await client.list_credentials("user_123"))["count"] == 1
    await client.delete_credential(cred["credential_id"], "user_123")
    with pytest.raises(NotFoundError):
        await client.get_credential(cred["credential_id"], "user_123")

    job = await client.create_scheduler_job("one_time", "in 10 minutes", "stretch", "user_123")
    assert (await client.get_scheduler_jobs("user_123"))["count"] == 1
    assert (await client.get_scheduler_job(job["id"]))["message"] == "stretch"
    with pytest.raises(ValidationError):
        await client.create_scheduler_job("recurring", "whenever", "x", "user_123")
    await client.delete_scheduler_job(job["id"])

    tokens = [e async for e in await client.chat_stream({"message": "hello"},
                                                        user_id="user_123")]
    assert tokens[-1]["event"] == "done"

    await client.unlink_user_identifier("U98765ABC")
    with pytest.raises(NotFoundError):
        await client.unlink_user_identifier("U98765ABC")
    await client.__aexit__(None, None, None)

    # The sync client too.
    def sync_calls() -> None:
        with FormationClient(url=url, client_key=CLIENT) as sync:
            assert sync.health()["status"] == "healthy"
            assert "don't have" in sync.chat({"message": "what's my budget?"},
                                             user_id="U98765ABC")["message"]["content"]

    await asyncio.to_thread(sync_calls)


async def test_a_failing_request_never_logs_the_key_in_its_path(server, monkeypatch, capsys):
    from gateway.runtime.logs import configure_logging

    url, runtime = server

    async def broken(*args, **kwargs):
        raise RuntimeError("cache timed out after commit")

    monkeypatch.setattr(runtime.identity, "unlink", broken)
    capsys.readouterr()
    configure_logging("json", "info", cache=False)
    try:
        async with httpx.AsyncClient(base_url=url + "/v1") as http:
            r = await http.delete("/users/identifiers/api_key:sk-live-TOPSECRET-123456",
                                  headers=headers(admin=True))
    finally:
        configure_logging("console", "info", cache=False)
    assert r.status_code == 500
    logged = capsys.readouterr().err
    assert "request failed" in logged and "/users/identifiers/{identifier" in logged
    assert "TOPSECRET" not in logged


async def test_a_failing_request_is_logged_once_with_its_request_id(database_url, tmp_path,
                                                                    formation, capsys):
    """Served as `threadline serve` serves (uvicorn logging into the one stream): the error
    is one JSON line with the request id, not a second traceback from the server."""
    import uvicorn

    from config.settings import Settings
    from gateway.api.app import create_app
    from gateway.runtime.formations import Formation
    from gateway.runtime.logs import configure_logging
    from gateway.runtime.server import server_config
    from gateway.runtime.wiring import Runtime

    settings = Settings(database_url=database_url, data_dir=tmp_path, formation_id=formation,
                        identity_secret="test-identity-secret-0123456789",
                        credentials_key="kL3Z3fQ0m2nS4r8vYb1cD5eF7gH9iJ0kL2mN4oP6qR8=")
    runtime = await Runtime.open(settings)

    async def broken(*args, **kwargs):
        raise RuntimeError("cache timed out after commit")

    runtime.identity.unlink = broken
    app = create_app(runtime, {formation: Formation(formation, ADMIN, CLIENT)})
    server = uvicorn.Server(server_config(app, runtime, "127.0.0.1", 0))
    capsys.readouterr()
    configure_logging("json", "info", cache=False)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/v1") as http:
            r = await http.delete("/users/identifiers/user_1", headers=headers(admin=True))
    finally:
        server.should_exit = True
        await task
        configure_logging("console", "info", cache=False)
        await runtime.close()
    assert r.status_code == 500
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    failed = [line for line in lines if "cache timed out after commit" in str(line)]
    assert [line["event"] for line in failed] == ["request failed"], failed
    assert failed[0]["request_id"] == r.json()["request"]["id"] == r.headers["X-Request-ID"]


async def test_spec_pattern_3_an_api_key_header_reaches_its_user_and_is_never_stored(
        server, capsys):
    """Link an api key as an `api_key` identifier, then chat with the key as
    X-Muxi-User-ID: the same user answers, and the key is found in no table and no log."""
    from gateway.runtime.logs import configure_logging

    url, runtime = server
    key = "sk-live-PATTERN3-9f8e7d6c5b4a"
    capsys.readouterr()
    configure_logging("json", "info", cache=False)
    try:
        async with httpx.AsyncClient(base_url=url + "/v1") as http:
            told = (await http.post("/chat", json={"message": "my budget is $5,000"},
                                    headers=headers("user_123"))).json()["data"]
            linked = await http.post("/users/identifiers", headers=headers(admin=True), json={
                "muxi_user_id": told["user_id"],
                "identifiers": [{"identifier": key, "type": "api_key"}]})
            assert linked.status_code == 201, linked.text
            asked = (await http.post("/chat", json={"message": "what's my budget?"},
                                     headers=headers(key))).json()["data"]
            again = (await http.post("/chat", json={"message": "/whoami"},
                                     headers=headers(key))).json()["data"]
            jobs = await http.post("/scheduler/jobs", headers=headers(admin=True), json={
                "schedule": "in 10 minutes", "message": "stretch", "user_id": key})
            assert jobs.status_code == 201
    finally:
        configure_logging("console", "info", cache=False)
    assert asked["user_id"] == told["user_id"] and "$5,000" in asked["message"]["content"]
    assert "api_key" in again["message"]["content"]
    logged = capsys.readouterr().err
    assert logged and key not in logged
    for table in await _tables(runtime.db):
        rows = await runtime.db.fetch(f"SELECT * FROM {table}")
        assert not [row for row in rows if key in repr(tuple(row))], table


async def _tables(db) -> list[str]:
    if db.dialect == "sqlite":
        rows = await db.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return [r[0] for r in rows]


@pytest.mark.parametrize("sent", [
    "josé".encode(),  # UTF-8 bytes, as HTTP carries them
    b"jos%C3%A9",  # percent-encoded UTF-8
])
async def test_a_non_ascii_user_id_in_the_header_is_the_same_user_as_in_json(server, sent):
    url, runtime = server
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        body = (await http.post("/users/resolve", json={"identifier": "josé"},
                                headers=headers(admin=True))).json()["data"]
        chat = await http.post("/chat", json={"message": "hi"},
                               headers={**headers(), "X-Muxi-User-ID": sent})
        for name in ("山田太郎", "🦊fox"):
            quoted = (await http.post("/chat", json={"message": "hi"}, headers={
                **headers(), "X-Muxi-User-ID": name.encode()}))
            assert quoted.status_code == 200, quoted.text
            assert quoted.json()["data"]["user_id"] == await runtime.identity.resolve(
                runtime.settings.formation_id, name, create=False)
    assert chat.status_code == 200, chat.text
    assert chat.json()["data"]["user_id"] == body["muxi_user_id"]


async def test_resolve_honours_a_type_given_beside_a_plain_value(server):
    url, _ = server
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        typed = (await http.post("/users/resolve", headers=headers(admin=True),
                                 json={"identifier": "4242", "type": "telegram"})).json()
        same = (await http.post("/users/resolve", headers=headers(admin=True),
                                json={"identifier": "tg_4242"})).json()
        typo = await http.post("/users/resolve", headers=headers(admin=True),
                               json={"identifier": "4242", "type": "telegarm"})
        text = (await http.post("/users/resolve", headers=headers(admin=True),
                                json={"identifier": "slack:U98765ABC"})).json()
    assert typed["data"]["identifier"] == "tg_4242" and typed["data"]["type"] == "telegram"
    assert typed["data"]["muxi_user_id"] == same["data"]["muxi_user_id"]
    assert typo.status_code == 422 and "did you mean 'telegram'" in typo.json()["message"]
    assert text["data"]["type"] == "slack" and text["data"]["identifier"] == "U98765ABC"


async def test_memories_can_be_searched_through_the_api(server):
    url, _ = server
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        for note in ("the demo is on Friday", "my sister lives in Lyon", "the budget is tight"):
            await http.post("/chat", json={"message": f"remember that {note}"},
                            headers=headers("searcher@x.co"))
        found = (await http.get("/memories", params={"q": "when is the demo?", "limit": 2},
                                headers=headers("searcher@x.co"))).json()["data"]
        listed = (await http.get("/memories", headers=headers("searcher@x.co"))).json()["data"]
    assert [m["content"] for m in found["memories"]] == ["the demo is on Friday"]
    assert listed["count"] == 3


NUL = "a\u0000b"


def _nul_requests(doc: dict, path: str, method: str, op: dict):
    """For one operation, a request per text input (path and query parameters, each JSON
    body field, the user header) holding a NUL, and the field its 422 must name."""
    def filled(where: str | None = None) -> str:
        return re.sub(r"\{([^}:]+)(:[^}]*)?\}", lambda m: quote(NUL, safe="")
                      if m.group(1) == where else "x", path)

    for p in op.get("parameters", []):
        if p["in"] == "path":
            yield {"url": filled(p["name"])}, f"path.{p['name']}"
        elif p["in"] == "query" and "string" in json.dumps(p["schema"]):
            yield {"url": filled(), "params": {p["name"]: NUL}}, f"query.{p['name']}"
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    schema = body.get("schema", {})
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    for name, prop in schema.get("properties", {}).items():
        kinds = [prop.get("type")] + [k.get("type") for k in prop.get("anyOf", [])]
        if "array" in kinds:
            yield {"url": filled(), "json": {name: [NUL]}}, f"{name}.0"
        elif "string" in kinds:
            yield {"url": filled(), "json": {name: NUL}}, name
        elif "object" in kinds:
            yield {"url": filled(), "json": {name: {"token": NUL}}}, f"{name}.token"
    if any("UserId" in r for r in op.get("security", [])):
        yield {"url": filled(), "headers": {"X-Muxi-User-ID": "a%00b"}}, "X-Muxi-User-ID"


async def test_a_nul_in_any_text_input_of_any_operation_is_a_422_naming_it(server):
    """PostgreSQL refuses U+0000 in text: everywhere a client can put one, the answer is
    a 422 naming the field, never a 500 (the `server` fixture runs both stores)."""
    url, _ = server
    tried = set()
    async with httpx.AsyncClient(base_url=url) as http:
        doc = (await http.get("/openapi.json")).json()
        for path, item in doc["paths"].items():
            for method, op in item.items():
                for request, field in _nul_requests(doc, path, method, op):
                    sent = {"X-Muxi-Admin-Key": ADMIN, "X-Muxi-User-ID": "nul@x.co",
                            **request.pop("headers", {})}
                    answer = await http.request(method.upper(), headers=sent, **request)
                    assert answer.status_code == 422, (method, path, field, answer.text)
                    assert answer.json()["code"] == "INVALID_PARAMS"
                    message = answer.json()["message"]
                    assert message.startswith(f"{field}:") and "NUL" in message, (
                        method, path, message)
                    tried.add((method, path, field))
    assert len({(m, p) for m, p, _ in tried}) >= 30 and len(tried) >= 60, sorted(tried)
    assert ("post", "/v1/credentials", "credential.token") in tried
    assert ("get", "/v1/memories", "query.q") in tried
    assert ("delete", "/v1/users/identifiers/{identifier}", "path.identifier") in tried


async def test_a_body_over_the_limit_gets_413_after_the_key_and_before_it_is_read(server):
    url, _ = server
    big = b'{"message": "' + b"x" * (2 << 20) + b'"}'
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        stranger = await http.post("/chat", content=big,
                                   headers={"Content-Type": "application/json"})
        known = await http.post("/chat", content=big, headers={
            **headers("big@x.co"), "Content-Type": "application/json"})

        fine = await http.post("/chat", json={"message": "hi"}, headers=headers("big@x.co"))
    assert stranger.status_code == 401
    assert known.status_code == 413 and known.json()["code"] == "PAYLOAD_TOO_LARGE"
    assert fine.status_code == 200
    # A chunked body says no length: it is cut off once it passes the limit.
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST /v1/chat HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json"
                 f"\r\nX-Muxi-Client-Key: {CLIENT}\r\nX-Muxi-User-ID: big@x.co\r\n"
                 "Transfer-Encoding: chunked\r\n\r\n".encode())
    chunk = b"x" * 65536
    for _ in range(40):  # 2.5 MB, if the server took it all
        try:
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()
        except ConnectionError:
            break  # the server answered and closed: what we want
    status = await reader.readline()
    writer.close()
    assert status.startswith(b"HTTP/1.1 413")


async def test_facts_and_preferences_are_memories_with_ids_that_can_be_deleted(server):
    url, runtime = server
    user_headers = headers("facts@x.co")
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        for text in ("my budget is $5,000", "I prefer short answers",
                     "remember that the demo is on Friday"):
            await http.post("/chat", json={"message": text}, headers=user_headers)
        listed = (await http.get("/memories", headers=user_headers)).json()["data"]
        by_type = {m["type"]: m for m in listed["memories"]}
        assert set(by_type) == {"note", "fact", "preference"} and listed["count"] == 3
        assert by_type["fact"]["content"] == "budget: $5,000"
        gone = await http.delete(f"/memories/{by_type['fact']['id']}", headers=user_headers)
        again = await http.delete(f"/memories/{by_type['fact']['id']}", headers=user_headers)
        bogus = await http.delete("/memories/fact_bm9wZQ", headers=user_headers)
        asked = (await http.post("/chat", json={"message": "what's my budget?"},
                                 headers=user_headers)).json()["data"]
    assert gone.status_code == 200 and again.status_code == 404 and bogus.status_code == 404
    assert "$5,000" not in asked["message"]["content"]
