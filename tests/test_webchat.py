"""The web chat page's HTTP side through a real server socket: who may talk, as whom, and
what streams back."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.requests import Request

from config.settings import ConfigError, Settings
from gateway.api.app import create_app
from gateway.runtime.formations import Formation
from gateway.runtime.wiring import Runtime
from gateway.webchat import TokenError, sign_token, verify_token
from gateway.webchat import page as webchat
from gateway.webchat.page import name_mode_refusal

ADMIN, CLIENT = "admin-key-0123456789abcdef", "client-key-0123456789abcdef"
SECRET = b"webchat-secret-0123456789abcdef"
OTHER_SECRET = b"another-host-app-secret-012345"

Serve = Callable[..., Awaitable[tuple[str, Runtime]]]


@pytest.fixture
async def serve(database_url: str, tmp_path: Any, formation: str) -> AsyncIterator[Serve]:
    """Start the gateway with the web chat on a real loopback socket; settings as given."""
    running: list[tuple[uvicorn.Server, asyncio.Task[None], Runtime]] = []

    async def start(**overrides: Any) -> tuple[str, Runtime]:
        settings = Settings(database_url=database_url, data_dir=tmp_path, formation_id=formation,
                            identity_secret="test-identity-secret-0123456789",
                            credentials_key="kL3Z3fQ0m2nS4r8vYb1cD5eF7gH9iJ0kL2mN4oP6qR8=",
                            **overrides)
        runtime = await Runtime.open(settings)
        served = Formation(formation, ADMIN, CLIENT)
        app = create_app(runtime, {formation: served},
                         extra_routes=webchat.routes(runtime, settings, served))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        running.append((server, task, runtime))
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    await task
                await asyncio.sleep(0.01)
        return f"http://127.0.0.1:{sock.getsockname()[1]}", runtime

    yield start
    for server, task, runtime in reversed(running):
        server.should_exit = True
        async with asyncio.timeout(10):
            await task
        await runtime.close()


def events(body: str) -> list[tuple[str, dict[str, Any]]]:
    """A server-sent event stream as (event, data) pairs; plain data frames are 'message'."""
    found = []
    for block in body.split("\n\n"):
        if not block.strip():
            continue
        kind, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        found.append((kind, json.loads("\n".join(data))))
    return found


async def say(http: httpx.AsyncClient, text: str, *, conversation: str = "tab-1",
              **who: str) -> tuple[str, dict[str, Any]]:
    """Send one message; the reply's text and its done event."""
    r = await http.post("/webchat/messages", json={"text": text, "conversation": conversation,
                                                   **who})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    stream = events(r.text)
    tokens = [data["token"] for kind, data in stream if kind == "message"]
    assert stream[-1][0] == "done", stream
    return "".join(tokens), stream[-1][1]


# --- tokens -------------------------------------------------------------------------------


def test_a_signed_token_names_its_identifier_until_it_expires():
    token = sign_token(SECRET, "alice@example.com", ttl=60)
    assert verify_token(SECRET, token) == "alice@example.com"
    typed = sign_token(SECRET, "U98765ABC", type="slack")
    assert verify_token(SECRET, typed) == {"identifier": "U98765ABC", "type": "slack"}
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", token)  # base64url, no padding
    with pytest.raises(TokenError) as expired:
        verify_token(SECRET, token, now=time.time() + 61)
    assert expired.value.code == "TOKEN_EXPIRED"
    with pytest.raises(ValueError):
        sign_token(SECRET, "", ttl=60)
    with pytest.raises(ValueError):
        sign_token(SECRET, "alice@example.com", ttl=0)


@pytest.mark.parametrize("mangle", [
    lambda t: t.split(".")[0] + "." + sign_token(OTHER_SECRET, "x").split(".")[1],
    lambda t: sign_token(OTHER_SECRET, "alice@example.com"),
    lambda t: t[:-2] + ("AA" if t[-2:] != "AA" else "BB"),
    lambda t: t.replace(".", ""),
    lambda t: t + ".extra",
    lambda t: "é" + t,
    lambda t: "",
], ids=["swapped-signature", "other-secret", "altered-signature", "no-dot", "three-parts",
        "non-ascii", "empty"])
def test_a_token_not_signed_with_the_secret_is_invalid(mangle):
    with pytest.raises(TokenError) as refused:
        verify_token(SECRET, mangle(sign_token(SECRET, "alice@example.com")))
    assert refused.value.code == "TOKEN_INVALID"


def test_a_short_webchat_secret_stops_start_up(tmp_path):
    settings = Settings(data_dir=tmp_path, webchat_secret="short")
    with pytest.raises(ConfigError, match="WEBCHAT_SECRET"):
        webchat.routes(None, settings, Formation("default", ADMIN, CLIENT))  # type: ignore[arg-type]


def _request(host: str) -> Request:
    return Request({"type": "http", "method": "GET", "path": "/",
                    "headers": [(b"host", b"127.0.0.1:8000")], "client": (host, 50000)})


@pytest.mark.parametrize("host,allowed", [
    ("127.0.0.1", True), ("::1", True), ("::ffff:127.0.0.1", True), ("10.0.0.7", False),
    ("203.0.113.5", False), ("testclient", False),
])
def test_name_mode_needs_a_loopback_client(host, allowed, tmp_path):
    settings = Settings(data_dir=tmp_path)
    assert (name_mode_refusal(_request(host), settings) is None) is allowed


# --- over HTTP ----------------------------------------------------------------------------


async def test_the_page_is_one_self_contained_file(serve):
    url, _ = await serve()
    async with httpx.AsyncClient(base_url=url) as http:
        for path in ("/", "/chat"):
            r = await http.get(path)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            for needed in ('id="identity"', 'id="message"', 'id="send"', 'id="messages"',
                           'id="status"', 'id="new-conversation"'):
                assert needed in r.text
            # Nothing is fetched from elsewhere: no external scripts, styles, fonts or images.
            assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(""", r.text)
            policy = r.headers["content-security-policy"]
            assert "default-src 'none'" in policy and "script-src 'sha256-" in policy
            assert r.headers["referrer-policy"] == "no-referrer"


async def test_config_tells_the_page_which_mode_it_is_in(serve):
    url, _ = await serve()
    async with httpx.AsyncClient(base_url=url) as http:
        config = (await http.get("/webchat/config")).json()
        assert config["mode"] == "name" and config["name_allowed"] and config["reason"] is None
        behind_proxy = (await http.get("/webchat/config",
                                       headers={"X-Forwarded-For": "203.0.113.5"})).json()
        assert behind_proxy["mode"] == "token" and "loopback" in behind_proxy["reason"]


async def test_a_valid_token_streams_tokens_then_done(serve):
    url, runtime = await serve(webchat_secret=SECRET.decode())
    formation = runtime.settings.formation_id
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.get("/webchat/config")).json()["mode"] == "token"
        token = sign_token(SECRET, "alice@example.com")
        r = await http.post("/webchat/messages", json={
            "text": "my budget is $5,000", "conversation": "tab-a", "token": token})
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        stream = events(r.text)
        kinds = [kind for kind, _ in stream]
        assert kinds[-1] == "done" and set(kinds[:-1]) == {"message"} and len(kinds) >= 4
        done = stream[-1][1]
        assert done["user_id"] == await runtime.identity.resolve(formation, "alice@example.com")
        assert done["session_id"].startswith("sess")
        assert "".join(d["token"] for _, d in stream[:-1]) == "Got it: your budget is $5,000."
        # A token with a type speaks as that typed identifier.
        _, typed = await say(http, "hello", token=sign_token(SECRET, "U98765ABC", type="slack"))
        assert typed["user_id"] == await runtime.identity.resolve(
            formation, {"identifier": "U98765ABC", "type": "slack"}, create=False)


async def test_expired_forged_and_foreign_tokens_get_401(serve):
    url, runtime = await serve(webchat_secret=SECRET.decode())
    formation = runtime.settings.formation_id
    alice = sign_token(SECRET, "alice@example.com")
    bob_payload = sign_token(OTHER_SECRET, "bob@example.com").split(".")[0]
    refused = {
        "expired": (sign_token(SECRET, "bob@example.com", ttl=60, now=time.time() - 3600),
                    "TOKEN_EXPIRED"),
        "forged": (bob_payload + "." + alice.split(".")[1], "TOKEN_INVALID"),
        "another secret": (sign_token(OTHER_SECRET, "bob@example.com"), "TOKEN_INVALID"),
        "garbage": ("not-a-token", "TOKEN_INVALID"),
    }
    async with httpx.AsyncClient(base_url=url) as http:
        for case, (token, code) in refused.items():
            r = await http.post("/webchat/messages", json={
                "text": "what's my budget?", "conversation": "tab-1", "token": token})
            assert r.status_code == 401, case
            body = r.json()
            assert body["code"] == code and body["message"], case
        r = await http.post("/webchat/messages", json={"text": "hi", "conversation": "tab-1"})
        assert r.status_code == 401 and r.json()["code"] == "TOKEN_REQUIRED"
    # No refused token created a user.
    assert await runtime.identity.resolve(formation, "bob@example.com", create=False) is None


async def test_name_mode_works_on_loopback_in_development(serve):
    url, runtime = await serve()
    runtime.scheduler.formation = runtime.settings.formation_id
    async with httpx.AsyncClient(base_url=url) as http:
        text, done = await say(http, "call me Sam", name="  user_123 ")
        assert "Sam" in text
        assert done["user_id"] == await runtime.identity.resolve(
            runtime.settings.formation_id, "user_123", create=False)


@pytest.mark.parametrize("settings,headers,why", [
    ({"env": "production"}, {}, "production"),
    ({"webchat_secret": SECRET.decode()}, {}, "secret"),
    ({}, {"X-Forwarded-For": "203.0.113.5"}, "loopback"),  # behind a proxy on this machine
], ids=["production", "secret-configured", "not-loopback"])
async def test_name_mode_is_refused_with_the_reason(serve, settings, headers, why):
    url, runtime = await serve(**settings)
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/webchat/messages", headers=headers, json={
            "text": "hi", "conversation": "tab-1", "name": "user_123"})
    assert r.status_code == 403
    assert r.json()["code"] == "NAME_MODE_DISABLED" and why in r.json()["message"]
    assert await runtime.identity.resolve(runtime.settings.formation_id, "user_123",
                                          create=False) is None


BAD_INPUT = [
    ({"conversation": "t"}, "text"),
    ({"text": "", "conversation": "t"}, "text"),
    ({"text": "   \n", "conversation": "t"}, "text"),
    ({"text": 42, "conversation": "t"}, "text"),
    ({"text": "x" * 20_001, "conversation": "t"}, "text"),
    ({"text": "hi"}, "conversation"),
    ({"text": "hi", "conversation": ""}, "conversation"),
    ({"text": "hi", "conversation": "a b/c"}, "conversation"),
    ({"text": "hi", "conversation": ["t"]}, "conversation"),
    ({"text": "hi", "conversation": "t", "name": "null"}, "name"),
    ({"text": "hi", "conversation": "t", "name": ""}, "name"),
    ({"text": "hi", "conversation": "t", "name": 7}, "name"),
    ({"text": "hi", "conversation": "t"}, "name"),
    ({"text": "hi", "conversation": "t", "name": "a", "token": "b"}, "token"),
    ("[1, 2]", "body"),
    ("{not json", "body"),
    ("", "body"),
]


@pytest.mark.parametrize("body,field", BAD_INPUT)
async def test_bad_input_gets_422_naming_the_field(serve, body, field):
    url, _ = await serve()
    content = body if isinstance(body, str) else json.dumps(body)
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/webchat/messages", content=content,
                            headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    error = r.json()
    assert error["code"] == "INVALID_PARAMS" and error["details"]["field"] == field
    assert error["message"].startswith(f"{field}: ")


async def test_the_longest_text_allowed_is_answered(serve):
    url, _ = await serve()
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        await say(http, "é" * webchat.MAX_TEXT, name="user_123")


async def test_each_tab_is_its_own_conversation(serve):
    url, _ = await serve()
    async with httpx.AsyncClient(base_url=url) as http:
        _, first = await say(http, "hello", conversation="tab-a", name="user_123")
        _, again = await say(http, "hello again", conversation="tab-a", name="user_123")
        _, other = await say(http, "hello", conversation="tab-b", name="user_123")
    assert first["session_id"] == again["session_id"] != other["session_id"]
    assert first["user_id"] == other["user_id"]


async def test_a_failed_turn_ends_the_stream_with_an_error_event(serve, monkeypatch):
    url, runtime = await serve()
    runtime.scheduler.formation = runtime.settings.formation_id

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(runtime.engine, "handle", broken)
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.post("/webchat/messages", json={
            "text": "hi", "conversation": "t", "name": "user_123"})
    assert r.status_code == 200
    kind, data = events(r.text)[-1]
    assert kind == "error" and data["type"] == "internal" and data["error"]
    assert "fire" not in data["error"]  # internals stay in the log


async def test_the_budget_follows_the_person_to_a_linked_identifier(serve):
    url, runtime = await serve(webchat_secret=SECRET.decode())
    formation = runtime.settings.formation_id
    web = sign_token(SECRET, "user_123")
    slack = sign_token(SECRET, "U98765ABC", type="slack")
    async with httpx.AsyncClient(base_url=url) as http:
        told, first = await say(http, "my budget is $5,000", token=web, conversation="tab-1")
        assert "$5,000" in told
        await runtime.identity.associate(
            formation, ["user_123", {"identifier": "U98765ABC", "type": "slack"}],
            first["user_id"])
        asked, done = await say(http, "what's my budget?", token=slack, conversation="tab-2")
    assert "$5,000" in asked and done["user_id"] == first["user_id"]


async def test_a_resent_message_with_the_same_id_is_one_turn(serve):
    url, runtime = await serve()
    runtime.scheduler.formation = runtime.settings.formation_id
    async with httpx.AsyncClient(base_url=url) as http:
        body = {"text": "my budget is $5,000", "conversation": "tab-1", "name": "user_123",
                "message_id": "m-1"}
        first = events((await http.post("/webchat/messages", json=body)).text)[-1][1]
        again = events((await http.post("/webchat/messages", json=body)).text)[-1][1]
    assert again == first
    buffer = await runtime.memory.sessions.buffer(first["session_id"])
    assert [m.content for m in buffer].count("my budget is $5,000") == 1


async def test_an_open_page_hears_its_reminder_and_a_reopened_one_finds_it(serve):
    url, runtime = await serve()
    runtime.scheduler.formation = runtime.settings.formation_id
    who = {"conversation": "tab-1", "name": "user_123"}
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        text, _ = await say(http, "remind me in 1 second to stretch", **who)
        assert "remind you to stretch" in text
        async with http.stream("GET", "/webchat/events", params=who) as stream:
            lines = stream.aiter_lines()
            assert (await anext(lines)).startswith("event: connected")
            await anext(lines), await anext(lines)  # its data and the blank line
            await asyncio.sleep(1.1)
            assert await runtime.scheduler.run_once() == 1
            assert (await anext(lines)).startswith("id: ")
            assert await anext(lines) == "event: push"
            pushed = json.loads((await anext(lines))[5:])
        assert pushed["text"] == "⏰ Reminder: stretch" and pushed["conversation"] == "tab-1"
        assert await runtime.scheduler.run_once() == 0  # once
        transcript = (await http.get("/webchat/transcript", params=who)).json()
        assert [m["content"] for m in transcript["messages"]][-1] == "⏰ Reminder: stretch"
        other = (await http.get("/webchat/transcript",
                                params={**who, "name": "someone_else"})).json()
        assert other["messages"] == []  # another person's view of the same tab id is empty
        refused = await http.get("/webchat/events", params={"conversation": "tab-1"})
        assert refused.status_code == 422


async def test_with_the_page_closed_a_reminder_waits_in_the_transcript(serve):
    url, runtime = await serve()
    runtime.scheduler.formation = runtime.settings.formation_id
    who = {"conversation": "tab-2", "name": "user_456"}
    async with httpx.AsyncClient(base_url=url) as http:
        await say(http, "remind me in 1 second to drink water", **who)
        await asyncio.sleep(1.1)
        assert await runtime.scheduler.run_once() == 0  # nobody to push to: kept instead
        transcript = (await http.get("/webchat/transcript", params=who)).json()
    assert transcript["messages"][-1]["content"] == "⏰ Reminder: drink water"
    # ISO 8601 UTC, as every time the API gives
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z",
                        transcript["messages"][-1]["created_at"])


async def test_name_mode_refuses_other_sites_rebound_hosts_and_form_posts(serve):
    url, runtime = await serve()
    runtime.scheduler.formation = runtime.settings.formation_id
    body = {"text": "what's my budget?", "conversation": "t", "name": "alice@acme.com"}
    async with httpx.AsyncClient(base_url=url) as http:
        assert (await http.post("/webchat/messages", json=body)).status_code == 200
        cross = await http.post("/webchat/messages", json=body,
                                headers={"Origin": "https://evil.example"})
        rebound = await http.post("/webchat/messages", json=body,
                                  headers={"Host": "evil.example:8000"})
        form = await http.post("/webchat/messages", data=body)  # a plain HTML form's post
        plain = await http.post("/webchat/messages", content=json.dumps(body),
                                headers={"Content-Type": "text/plain"})
        listen = await http.get("/webchat/transcript", params={"conversation": "t",
                                                              "name": "alice@acme.com"},
                                headers={"Host": "attacker.example"})
        same = await http.post("/webchat/messages", json=body, headers={"Origin": url})
    assert (cross.status_code, cross.json()["code"]) == (403, "NAME_MODE_DISABLED")
    assert "another site" in cross.json()["message"]
    assert (rebound.status_code, listen.status_code) == (403, 403)
    assert "loopback host" in rebound.json()["message"]
    assert form.status_code == plain.status_code == 415
    assert same.status_code == 200  # the page itself, same origin


@pytest.mark.parametrize("exp", ["NaN", "Infinity", "1e999"])
def test_a_token_that_never_expires_is_refused(exp):
    import base64
    import hashlib
    import hmac

    head = base64.urlsafe_b64encode(
        f'{{"sub": "alice@acme.com", "exp": {exp}}}'.encode()).rstrip(b"=").decode()
    sig = base64.urlsafe_b64encode(
        hmac.new(SECRET, head.encode(), hashlib.sha256).digest()).rstrip(b"=").decode()
    with pytest.raises(TokenError) as info:
        verify_token(SECRET, f"{head}.{sig}")
    assert info.value.code == "TOKEN_INVALID"


async def test_the_name_field_reads_the_identifier_syntax(serve):
    url, runtime = await serve()
    formation = runtime.settings.formation_id
    async with httpx.AsyncClient(base_url=url) as http:
        await say(http, "my budget is $5,000", name="U98765ABC:slack")
    user = await runtime.identity.resolve(formation, ("U98765ABC", "slack"), create=False)
    assert user is not None  # a Slack identifier, not an untyped "U98765ABC:slack"
    assert await runtime.identity.resolve(formation, "slack:U98765ABC", create=False) == user


async def test_a_body_over_the_limit_gets_413(serve):
    url, _ = await serve()
    big = '{"text": "' + "x" * (webchat.MAX_BODY + 10) + '", "conversation": "t", "name": "a"}'
    async with httpx.AsyncClient(base_url=url) as http:
        answer = await http.post("/webchat/messages", content=big,
                                 headers={"Content-Type": "application/json"})
    assert answer.status_code == 413 and answer.json()["code"] == "PAYLOAD_TOO_LARGE"


# --- checking a token on load -------------------------------------------------------------


async def test_verify_names_the_signed_identifier_and_refuses_a_bad_token(serve):
    url, runtime = await serve(webchat_secret=SECRET.decode())
    formation = runtime.settings.formation_id
    alice = sign_token(SECRET, "alice@example.com", ttl=600)
    forged = alice.split(".")[0] + "." + sign_token(OTHER_SECRET, "x").split(".")[1]
    expired = sign_token(SECRET, "bob@example.com", ttl=60, now=time.time() - 3600)
    async with httpx.AsyncClient(base_url=url) as http:
        good = await http.post("/webchat/verify", json={"token": alice})
        assert good.status_code == 200, good.text
        assert good.json()["identifier"] == "alice@example.com"
        assert good.json()["type"] is None and 590 <= good.json()["expires_in"] <= 600
        typed = await http.post("/webchat/verify", json={
            "token": sign_token(SECRET, "U98765ABC", type="slack")})
        assert (typed.json()["identifier"], typed.json()["type"]) == ("U98765ABC", "slack")
        for token, code in ((forged, "TOKEN_INVALID"), (expired, "TOKEN_EXPIRED"),
                            ("not-a-token", "TOKEN_INVALID")):
            r = await http.post("/webchat/verify", json={"token": token})
            assert (r.status_code, r.json()["code"]) == (401, code), r.text
        assert "signature" in (await http.post("/webchat/verify",
                                               json={"token": forged})).json()["message"]
        missing = await http.post("/webchat/verify", json={})
        assert missing.status_code == 422 and missing.json()["details"]["field"] == "token"
        form = await http.post("/webchat/verify", data={"token": alice})
        assert form.status_code == 415
    # Checking a token makes nobody a user.
    assert await runtime.identity.resolve(formation, "alice@example.com", create=False) is None


# --- link codes ---------------------------------------------------------------------------


async def test_a_link_code_works_with_or_without_its_dash_in_any_case(serve):
    url, runtime = await serve(webchat_secret=SECRET.decode())
    formation = runtime.settings.formation_id
    alice = sign_token(SECRET, "alice@example.com")
    forms = [lambda c: c, lambda c: c.replace("-", ""), lambda c: c.lower(),
             lambda c: c.replace("-", "").lower()]
    async with httpx.AsyncClient(base_url=url) as http:
        for n, form in enumerate(forms):
            offer, _ = await say(http, "/link", token=alice)
            shown = re.search(r"Your link code is ([A-Z0-9]{5}-[A-Z0-9]{5})\.", offer)
            assert shown, offer
            linked, done = await say(http, f"/link {form(shown.group(1))}",
                                     token=sign_token(SECRET, f"bob{n}@example.com"),
                                     conversation=f"bob-{n}")
            assert linked.startswith("Linked!"), (n, linked)
            assert done["user_id"] == await runtime.identity.resolve(
                formation, "alice@example.com", create=False)


# --- the launcher and framing -------------------------------------------------------------


async def test_the_page_may_be_framed_only_by_itself_and_the_listed_sites(serve):
    url, _ = await serve()
    listed, _ = await serve(webchat_secret=SECRET.decode(), webchat_frame_ancestors=[
        "https://shop.example.com", "http://localhost:5173"])
    async with httpx.AsyncClient(base_url=url) as http:
        plain = await http.get("/chat")
    async with httpx.AsyncClient(base_url=listed) as http:
        framed = await http.get("/chat")
    assert "frame-ancestors 'self';" in plain.headers["content-security-policy"]
    assert plain.headers["x-frame-options"] == "SAMEORIGIN"  # browsers without CSP level 2
    assert ("frame-ancestors 'self' https://shop.example.com http://localhost:5173;"
            in framed.headers["content-security-policy"])
    assert "x-frame-options" not in framed.headers  # it could only say SAMEORIGIN


@pytest.mark.parametrize("given,origins", [
    ("https://shop.example.com http://localhost:5173", ["https://shop.example.com",
                                                         "http://localhost:5173"]),
    ("https://shop.example.com/, https://*.acme.com", ["https://shop.example.com",
                                                        "https://*.acme.com"]),
    ("", []),
])
def test_frame_ancestors_are_read_from_the_environment(given, origins, tmp_path):
    from config.settings import load_settings

    settings = load_settings({"THREADLINE_DATA_DIR": str(tmp_path),
                              "THREADLINE_WEBCHAT_FRAME_ANCESTORS": given})
    assert settings.webchat_frame_ancestors == origins


def test_frame_ancestors_are_read_from_the_formation_file(tmp_path):
    from config.settings import load_settings

    formation = tmp_path / "formation.yaml"
    formation.write_text("server:\n  webchat_frame_ancestors: [https://shop.example.com]\n")
    settings = load_settings({"THREADLINE_DATA_DIR": str(tmp_path),
                              "THREADLINE_FORMATION_FILE": str(formation)})
    assert settings.webchat_frame_ancestors == ["https://shop.example.com"]


@pytest.mark.parametrize("bad", ["https://a.example; script-src *", "*", "shop.example.com",
                                 "https://a.example/path", "javascript:alert(1)", "'self'"])
def test_a_frame_ancestor_that_is_not_an_origin_stops_start_up(bad, tmp_path):
    from config.settings import load_settings

    with pytest.raises(ConfigError, match="WEBCHAT_FRAME_ANCESTORS"):
        load_settings({"THREADLINE_DATA_DIR": str(tmp_path),
                       "THREADLINE_WEBCHAT_FRAME_ANCESTORS": bad})


async def test_the_launcher_script_is_served_for_other_sites_to_include(serve):
    url, _ = await serve()
    async with httpx.AsyncClient(base_url=url) as http:
        r = await http.get("/webchat/launcher.js")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/javascript")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cross-origin-resource-policy"] == "cross-origin"
    assert "data-token" in r.text or "dataset.token" in r.text
    code = r.text.split("*/", 1)[-1].replace('"http://www.w3.org/2000/svg"', "")
    assert not re.search(r"https?://", code)  # nothing fixed is fetched: no CDN
