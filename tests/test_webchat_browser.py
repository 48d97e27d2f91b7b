"""The web chat page in a real headless Chromium: the budget across linked identities, a
bad token refused on load, a failed send kept for Retry, desktop and phone widths, link
codes, and the launcher on another site's page.

Needs Debian's chromium (/usr/bin/chromium, or THREADLINE_TEST_CHROMIUM) and the playwright
package; without them the test skips, unless THREADLINE_REQUIRE_SERVICES=1, where it fails.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.webchat import sign_token
from tests.test_webchat import (  # noqa: F401  (serve is the server fixture)
    CLIENT,
    OTHER_SECRET,
    SECRET,
    serve,
)

CHROMIUM = os.environ.get("THREADLINE_TEST_CHROMIUM", "/usr/bin/chromium")
REQUIRE = os.environ.get("THREADLINE_REQUIRE_SERVICES") == "1"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 15_000


def _missing(what: str) -> None:
    message = f"{what} is not installed, so the page cannot be tested in a browser"
    if REQUIRE:
        pytest.fail(message + "; THREADLINE_REQUIRE_SERVICES=1 forbids skipping", pytrace=False)
    pytest.skip(message)


@pytest.fixture
def chromium() -> str:
    if importlib.util.find_spec("playwright") is None:
        _missing("the playwright package (pip install playwright)")
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


@asynccontextmanager
async def browsing(chromium: str, problems: list[str],
                   allowed: tuple[str, ...]) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Headless Chromium; yields `new_page(width, height)`, each page in a fresh context
    (its own storage). What goes wrong on any page is added to `problems`, and so is a
    request to anywhere but the `allowed` origins."""
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=TIMEOUT_MS)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=ARGS, headless=True,
                                          timeout=TIMEOUT_MS)

        async def new_page(width: int = 900, height: int = 700) -> Any:
            phone = width < 520
            context = await browser.new_context(viewport={"width": width, "height": height},
                                                device_scale_factor=1, is_mobile=phone,
                                                has_touch=phone)
            page = await context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda msg: problems.append(f"console: {msg.text}")
                    if msg.type == "error" else None)
            page.on("request", lambda req: None if req.url.startswith(allowed)
                    else problems.append(f"fetched from elsewhere: {req.url}"))
            page.on("response", lambda r: problems.append(f"{r.status} for {r.url}")
                    if r.status >= 400 else None)
            return page

        try:
            yield new_page
        finally:
            await browser.close()


@asynccontextmanager
async def opened(chromium: str, url: str, problems: list[str], width: int = 900,
                 height: int = 700) -> AsyncIterator[Any]:
    """A fresh page in headless Chromium; what goes wrong on it is added to `problems`."""
    async with browsing(chromium, problems, (url,)) as new_page:
        yield await new_page(width, height)


def png_size(path: Path) -> tuple[int, int]:
    """A screenshot's width and height, read from its PNG header (so it is a real PNG)."""
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR", path
    assert len(data) > 1000, path
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


async def shoot(page: Any, path: Path, width: int) -> None:
    await page.screenshot(path=str(path))
    assert png_size(path)[0] == width


async def test_the_budget_told_as_one_identity_is_read_as_a_linked_one(
        serve, chromium, tmp_path: Path) -> None:  # noqa: F811
    from playwright.async_api import expect

    url, runtime = await serve()

    runtime.scheduler.formation = runtime.settings.formation_id
    formation = runtime.settings.formation_id
    problems: list[str] = []
    async with opened(chromium, url, problems) as page:
        await page.goto(url + "/")

        identity, message = page.locator("#identity"), page.locator("#message")
        await expect(identity).to_be_visible()  # development, loopback: name mode
        await identity.fill("user_123")
        await message.fill("My budget is $5,000")
        await message.press("Enter")
        told = page.locator(".msg.assistant[data-state=done]")
        await expect(told).to_have_count(1)
        await expect(told).to_contain_text("$5,000")
        await expect(page.locator(".msg.user")).to_have_text(["My budget is $5,000"])

        user = await runtime.identity.resolve(formation, "user_123", create=False)
        await runtime.identity.associate(formation, ["user_123", "U98765ABC"], user)

        await identity.fill("U98765ABC")
        await message.fill("What's my budget?")
        await page.locator("#send").click()
        # Changing the name started a new conversation: the list holds only the new turn.
        await expect(page.locator(".msg.note")).to_contain_text("U98765ABC")
        await expect(page.locator(".msg.user")).to_have_text(["What's my budget?"])
        answer = page.locator(".msg.assistant[data-state=done]")
        await expect(answer).to_have_count(1)
        await expect(answer).to_contain_text("$5,000")
        await expect(page.locator("#status")).to_have_text("")
        assert await page.locator(".msg.error").count() == 0

        shot = tmp_path / "webchat.png"
        await page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 1000
    assert not problems, problems


async def test_token_mode_speaks_as_the_signed_identifier_and_hides_the_token(
        serve, chromium, tmp_path: Path) -> None:  # noqa: F811
    from playwright.async_api import expect

    url, _ = await serve(webchat_secret=SECRET.decode())
    problems: list[str] = []
    async with opened(chromium, url, problems) as page:
        await page.goto(f"{url}/chat?token={sign_token(SECRET, 'alice@example.com')}")
        await expect(page.locator("#who")).to_have_text("Signed in as alice@example.com")
        await expect(page.locator("#identity")).to_be_hidden()  # no name field with a secret
        assert "token" not in page.url  # kept out of the address bar and history
        await page.locator("#message").fill("call me Alice")
        await page.locator("#message").press("Enter")
        await expect(page.locator(".msg.assistant[data-state=done]")).to_contain_text("Alice")
        await page.locator("#new-conversation").click()
        await expect(page.locator(".msg.assistant")).to_have_count(0)

        # A token that has run out: refused on load, so nothing can be sent with it.
        expired = sign_token(SECRET, "alice@example.com", ttl=60, now=time.time() - 3600)
        await page.goto(f"{url}/chat?token={expired}")
        await expect(page.locator("#status")).to_contain_text("expired")
        await expect(page.locator("#send")).to_be_disabled()
        await expect(page.locator("#who")).to_have_text("")
        await page.screenshot(path=str(tmp_path / "expired.png"))

        # Without a token the page explains why it cannot be used.
        await page.goto(f"{url}/chat")
        await expect(page.locator("#status")).to_contain_text("sign-in token")
        await expect(page.locator("#send")).to_be_disabled()
    # The only thing that went wrong is the refused expired token (and the console saying so).
    assert [p for p in problems if p.startswith("401 ")] == [f"401 for {url}/webchat/verify"]
    assert [p for p in problems if "401" not in p] == [], problems


async def test_a_reminder_appears_live_and_the_conversation_survives_a_reload(
        serve, chromium, tmp_path: Path) -> None:  # noqa: F811
    import asyncio

    from playwright.async_api import expect

    url, runtime = await serve()

    runtime.scheduler.formation = runtime.settings.formation_id
    runtime.scheduler.interval = 0.2
    scheduler = asyncio.create_task(runtime.scheduler.run())
    problems: list[str] = []
    try:
        async with opened(chromium, url, problems) as page:
            await page.goto(url + "/")
            await page.locator("#identity").fill("stretcher@example.com")
            await page.locator("#message").fill("remind me in 3 seconds to stretch")
            await page.locator("#message").press("Enter")
            await expect(page.locator(".msg.assistant[data-state=done]")).to_contain_text(
                "remind you to stretch")
            pushed = page.locator(".msg.pushed")
            await expect(pushed).to_have_text(["⏰ Reminder: stretch"])
            await page.screenshot(path=str(tmp_path / "reminder.png"))
            await asyncio.sleep(1.0)
            await expect(pushed).to_have_count(1)  # once

            await page.reload()
            await expect(page.locator(".msg.user")).to_have_text(
                ["remind me in 3 seconds to stretch"])
            await expect(page.locator(".msg.assistant")).to_have_count(2)
            await expect(page.locator(".msg.assistant").last).to_have_text(
                "⏰ Reminder: stretch")
            await page.screenshot(path=str(tmp_path / "reloaded.png"))
    finally:
        runtime.scheduler.stop()
        await scheduler
    assert not problems, problems


async def test_the_first_piece_of_a_model_reply_shows_before_the_model_has_finished(
        serve, chromium) -> None:  # noqa: F811
    from playwright.async_api import expect

    from gateway.conversation.responders.openai import OpenAIResponder
    from tests.peers.llm import ChatCompletionsPeer

    peer = ChatCompletionsPeer()
    peer.reply = "Your budget is five thousand dollars, as you told me."
    await peer.start()
    url, runtime = await serve()
    runtime.engine.responder = OpenAIResponder(base_url=peer.url, model="test-model",
                                               api_key=None, timeout=5)
    peer.released.clear()  # the model holds back its last piece until we let it go
    problems: list[str] = []
    try:
        async with opened(chromium, url, problems) as page:
            await page.goto(url + "/")
            await page.locator("#identity").fill("streamer@example.com")
            await page.locator("#message").fill("what's my budget?")
            await page.locator("#message").press("Enter")
            bubble = page.locator(".msg.assistant")
            await expect(bubble).to_contain_text("Your budget")  # a piece is on the page
            assert not peer.finished.is_set()  # ...while the model is still writing
            assert await bubble.get_attribute("data-state") != "done"
            peer.released.set()
            await expect(page.locator(".msg.assistant[data-state=done]")).to_have_text(
                peer.reply)
    finally:
        peer.released.set()
        await runtime.engine.responder.close()
        await peer.stop()
    assert not problems, problems


# Records every text the "who" line ever shows, from the first moment of the page.
WATCH_WHO = """
window.__who = [];
document.addEventListener("DOMContentLoaded", function () {
  var who = document.getElementById("who");
  new MutationObserver(function () { window.__who.push(who.textContent); })
    .observe(who, { childList: true, characterData: true, subtree: true });
});
"""


async def test_a_token_with_a_bad_signature_is_refused_on_load(
        serve, chromium, tmp_path: Path) -> None:  # noqa: F811
    from playwright.async_api import expect

    url, _ = await serve(webchat_secret=SECRET.decode())
    alice = sign_token(SECRET, "alice@example.com")
    forged = alice.split(".")[0] + "." + sign_token(OTHER_SECRET, "alice@example.com").split(".")[1]
    problems: list[str] = []
    async with opened(chromium, url, problems) as page:
        await page.add_init_script(WATCH_WHO)
        await page.goto(f"{url}/chat?token={forged}")
        await expect(page.locator("#status")).to_contain_text("signature does not match")
        await expect(page.locator("#send")).to_be_disabled()
        await expect(page.locator("#message")).to_be_disabled()
        await expect(page.locator("#who")).to_have_text("")
        assert not [seen for seen in await page.evaluate("window.__who") if "Signed in" in seen]
        await shoot(page, tmp_path / "forged.png", 900)

        # The same person with a good token is signed in once the gateway has said so.
        await page.goto(f"{url}/chat?token={alice}")
        await expect(page.locator("#who")).to_have_text("Signed in as alice@example.com")
        await expect(page.locator("#send")).to_be_enabled()
        await expect(page.locator("#status")).to_have_text("")
    assert [p for p in problems if p.startswith("401 ")] == [f"401 for {url}/webchat/verify"]
    assert [p for p in problems if "401" not in p] == [], problems


def _expected_failures(problems: list[str]) -> list[str]:
    """What went wrong other than the failures a test made on purpose."""
    made = ("net::ERR_CONNECTION_REFUSED", "net::ERR_CONNECTION_RESET", "net::ERR_FAILED",
            "503")
    return [p for p in problems if not any(m in p for m in made)]


async def test_a_failed_send_keeps_the_text_offers_retry_and_says_so_once(
        serve, chromium, tmp_path: Path) -> None:  # noqa: F811
    import httpx
    from playwright.async_api import expect

    url, runtime = await serve()
    runtime.scheduler.formation = runtime.settings.formation_id
    problems: list[str] = []
    async with opened(chromium, url, problems) as page:
        await page.goto(url + "/")
        await page.locator("#identity").fill("user_123")
        message, errors = page.locator("#message"), page.locator(".msg.error")

        # The gateway cannot be reached: the text stays on the page, with Retry.
        await page.route("**/webchat/messages", lambda route: route.abort("connectionrefused"))
        await message.fill("my budget is $5,000")
        await message.press("Enter")
        await expect(errors).to_have_count(1)
        await expect(errors).to_contain_text("Could not reach the gateway")
        await expect(page.get_by_text("Could not reach the gateway")).to_have_count(1)  # once
        await expect(page.locator("#status")).to_have_text("")
        await expect(page.locator(".msg.user")).to_have_text(["my budget is $5,000"])
        await expect(page.locator(".msg.assistant")).to_have_count(0)
        await shoot(page, tmp_path / "unreachable.png", 900)
        await page.unroute("**/webchat/messages")
        await errors.get_by_role("button", name="Retry").click()
        answer = page.locator(".msg.assistant[data-state=done]")
        await expect(answer).to_contain_text("$5,000")
        await expect(errors).to_have_count(0)
        await expect(page.locator(".msg.user")).to_have_count(1)

        # The gateway answers 503: its message, once, and Retry.
        async def unavailable(route: Any) -> None:
            await route.fulfill(status=503, json={
                "code": "UNAVAILABLE", "message": "the gateway is restarting"})

        await page.route("**/webchat/messages", unavailable, times=1)
        await message.fill("call me Sam")
        await page.locator("#send").click()
        await expect(errors).to_contain_text("the gateway is restarting")
        await expect(page.get_by_text("the gateway is restarting")).to_have_count(1)
        await expect(page.locator("#status")).to_have_text("")
        await errors.get_by_role("button", name="Retry").click()
        await expect(answer).to_have_count(2)
        await expect(answer.last).to_contain_text("Sam")

        # The reply is lost on its way back after the turn was taken: Retry sends the same
        # message id, so the gateway answers again without a second turn.
        async def lost(route: Any) -> None:
            await route.fetch()
            await route.abort("connectionreset")

        await page.route("**/webchat/messages", lost, times=1)
        await message.fill("I live in Berlin")
        await message.press("Enter")
        await expect(errors).to_have_count(1)
        await errors.get_by_role("button", name="Retry").click()
        await expect(answer).to_have_count(3)
        await expect(answer.last).to_contain_text("Berlin")
        await expect(errors).to_have_count(0)
        conversation = await page.evaluate(
            "Object.keys(localStorage).filter(k => k.includes('conversation'))"
            ".map(k => localStorage.getItem(k))[0]")
    async with httpx.AsyncClient(base_url=url) as http:
        said = (await http.get("/webchat/transcript", params={
            "conversation": conversation, "name": "user_123"})).json()["messages"]
    users = [m["content"] for m in said if m["role"] == "user"]
    assert users == ["my budget is $5,000", "call me Sam", "I live in Berlin"]
    assert _expected_failures(problems) == [], problems


async def test_the_page_fits_a_desktop_and_a_phone(serve, chromium, tmp_path: Path) -> None:  # noqa: F811
    from playwright.async_api import expect

    url, _ = await serve()
    problems: list[str] = []
    async with browsing(chromium, problems, (url,)) as new_page:
        for width, height in ((1280, 800), (375, 667)):
            page = await new_page(width, height)
            await page.goto(url + "/")
            await page.locator("#identity").fill("user_123")
            await page.locator("#message").fill("my budget is $5,000")
            await page.locator("#message").press("Enter")
            await expect(page.locator(".msg.assistant[data-state=done]")).to_contain_text(
                "$5,000")
            bar = await page.locator("#identity-bar").bounding_box()
            header = await page.locator("header").bounding_box()
            label = await page.locator("#identity-bar label").bounding_box()
            field = await page.locator("#identity").bounding_box()
            assert bar and header and label and field
            # One row each: the name bar at most 15% of a phone's height, the header less.
            assert bar["height"] <= 0.15 * height, (width, bar)
            assert header["height"] <= 0.1 * height, (width, header)
            assert abs((label["y"] + label["height"] / 2) - (field["y"] + field["height"] / 2)) < 4
            assert await page.evaluate("document.documentElement.scrollWidth") <= width
            await shoot(page, tmp_path / f"webchat-{width}.png", width)
    assert not problems, problems


async def test_a_link_code_is_redeemed_as_shown_and_the_open_page_hears_of_it(
        serve, chromium, tmp_path: Path) -> None:  # noqa: F811
    import re

    import httpx
    from playwright.async_api import expect

    url, runtime = await serve(webchat_secret=SECRET.decode())
    runtime.scheduler.formation = runtime.settings.formation_id
    problems: list[str] = []
    async with opened(chromium, url, problems) as page:
        await page.goto(f"{url}/chat?token={sign_token(SECRET, 'alice@example.com')}")
        await page.locator("#message").fill("hello")  # a command alone opens no session
        await page.locator("#message").press("Enter")
        await expect(page.locator(".msg.assistant[data-state=done]")).to_have_count(1)
        await page.locator("#message").fill("/link")
        await page.locator("#message").press("Enter")
        offer = page.locator(".msg.assistant[data-state=done]").last
        await expect(offer).to_contain_text("Your link code is")
        shown = re.search(r"[A-Z0-9]{5}-[A-Z0-9]{5}", await offer.inner_text())
        assert shown, await offer.inner_text()
        async with httpx.AsyncClient(base_url=url) as http:  # from the API, typed as shown
            linked = await http.post("/v1/chat", json={"message": f"/link {shown[0].lower()}"},
                                     headers={"X-Muxi-Client-Key": CLIENT,
                                              "X-Muxi-User-ID": "U98765ABC"})
        assert linked.json()["data"]["message"]["content"].startswith("Linked!"), linked.text
        assert await runtime.scheduler.run_once() == 1
        # Told on the open page as it happens: a pushed message, like a reminder.
        await expect(page.locator(".msg.pushed")).to_contain_text("was just linked")
        await shoot(page, tmp_path / "linked.png", 900)
    assert not problems, problems


HOST_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Acme</title>
<link rel="icon" href="data:,"></head>
<body><h1>Acme support</h1><p>The host's own page, on its own site.</p>
<script src="{gateway}/webchat/launcher.js" data-token="{token}" async></script>
</body></html>"""


@asynccontextmanager
async def host_site(page: dict[str, str]) -> AsyncIterator[int]:
    """Another web site (its own port, so its own origin) serving `page["html"]` at /."""
    import asyncio
    import socket

    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    async def home(request: Request) -> HTMLResponse:
        return HTMLResponse(page["html"])

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(Starlette(routes=[Route("/", home)]),
                                           log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await task


async def test_the_launcher_opens_the_chat_in_a_corner_of_another_sites_page(
        serve, chromium, tmp_path: Path) -> None:  # noqa: F811
    from playwright.async_api import expect

    content: dict[str, str] = {}
    async with host_site(content) as port:
        host, unlisted = f"http://localhost:{port}", f"http://127.0.0.1:{port}"
        url, _ = await serve(webchat_secret=SECRET.decode(), webchat_frame_ancestors=[host])
        content["html"] = HOST_PAGE.format(
            gateway=url, token=sign_token(SECRET, "alice@example.com"))
        problems: list[str] = []
        async with browsing(chromium, problems, (url, host, unlisted)) as new_page:
            # Desktop: a button in the corner opens a panel beside it, and closes it again.
            page = await new_page(1280, 800)
            await page.goto(host + "/")
            launcher = page.get_by_role("button", name="Open chat")
            await expect(launcher).to_be_visible()
            corner = await launcher.bounding_box()
            assert corner and corner["x"] > 1280 - 120 and corner["y"] > 800 - 120, corner
            assert await page.locator("iframe").count() == 0  # nothing loads until asked
            await launcher.click()
            panel = page.locator("iframe[title='Threadline chat']")
            chat = page.frame_locator("iframe[title='Threadline chat']")
            await expect(chat.locator("#who")).to_have_text("Signed in as alice@example.com")
            box = await panel.bounding_box()
            assert box and 320 <= box["width"] <= 420 and box["height"] >= 400, box
            assert box["x"] + box["width"] > 1280 - 40 and box["y"] + box["height"] < 800, box
            await chat.locator("#message").fill("call me Alice")
            await chat.locator("#message").press("Enter")
            await expect(chat.locator(".msg.assistant[data-state=done]")).to_contain_text(
                "Alice")
            await shoot(page, tmp_path / "launcher-1280-open.png", 1280)
            await page.get_by_role("button", name="Close chat").click()
            await expect(panel).to_be_hidden()
            await expect(launcher).to_be_focused()
            await shoot(page, tmp_path / "launcher-1280-closed.png", 1280)
            await launcher.click()  # opened again, the chat is as it was; Escape closes it
            await expect(chat.locator(".msg.user")).to_have_text(["call me Alice"])
            await chat.locator("#message").press("Escape")
            await expect(panel).to_be_hidden()

            # Phone: the panel takes the screen; the chat's own close button gives it back.
            page = await new_page(375, 667)
            await page.goto(host + "/")
            launcher = page.get_by_role("button", name="Open chat")
            await launcher.click()
            panel = page.locator("iframe[title='Threadline chat']")
            chat = page.frame_locator("iframe[title='Threadline chat']")
            await expect(chat.locator("#who")).to_have_text("Signed in as alice@example.com")
            box = await panel.bounding_box()
            assert box == {"x": 0, "y": 0, "width": 375, "height": 667}, box
            header = await chat.locator("header").bounding_box()
            assert header and header["height"] <= 0.1 * 667, header
            await chat.locator("#message").fill("my budget is $5,000")
            await chat.locator("#message").press("Enter")
            await expect(chat.locator(".msg.assistant[data-state=done]")).to_contain_text(
                "$5,000")
            await shoot(page, tmp_path / "launcher-375-open.png", 375)
            await chat.get_by_role("button", name="Close chat").click()
            await expect(panel).to_be_hidden()
            await expect(launcher).to_be_visible()
            await shoot(page, tmp_path / "launcher-375-closed.png", 375)

            # A site that is not listed may not frame the chat.
            page = await new_page(1280, 800)
            await page.goto(unlisted + "/")
            async with page.expect_console_message(
                    lambda m: "frame-ancestors" in m.text) as refused:
                await page.get_by_role("button", name="Open chat").click()
            assert f"Framing '{url}/'" in (await refused.value).text
            assert await page.frame_locator("iframe").locator("#who").count() == 0
    assert [p for p in problems if "frame-ancestors" not in p] == [], problems
