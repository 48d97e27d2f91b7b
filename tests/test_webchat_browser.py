"""The web chat page in a real headless Chromium: tell the budget, switch to a linked
identity, ask, and read the answer on the page.

Needs Debian's chromium (/usr/bin/chromium, or THREADLINE_TEST_CHROMIUM) and the playwright
package; without them the test skips, unless THREADLINE_REQUIRE_SERVICES=1, where it fails.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from gateway.webchat import sign_token
from tests.test_webchat import SECRET, serve  # noqa: F401  (serve is the server fixture)

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
async def opened(chromium: str, url: str, problems: list[str]) -> AsyncIterator[Any]:
    """A fresh page in headless Chromium; what goes wrong on it is added to `problems`."""
    from playwright.async_api import async_playwright, expect

    expect.set_options(timeout=TIMEOUT_MS)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium, args=ARGS, headless=True,
                                          timeout=TIMEOUT_MS)
        try:
            page = await browser.new_page(viewport={"width": 900, "height": 700})
            page.set_default_timeout(TIMEOUT_MS)
            page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
            page.on("console", lambda msg: problems.append(f"console: {msg.text}")
                    if msg.type == "error" else None)
            page.on("request", lambda req: None if req.url.startswith(url)
                    else problems.append(f"fetched from elsewhere: {req.url}"))
            page.on("response", lambda r: problems.append(f"{r.status} for {r.url}")
                    if r.status >= 400 else None)
            yield page
        finally:
            await browser.close()


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

        # A token that has run out: the page says so, and the gateway refuses it.
        expired = sign_token(SECRET, "alice@example.com", ttl=60, now=time.time() - 3600)
        await page.goto(f"{url}/chat?token={expired}")
        await expect(page.locator("#status")).to_contain_text("expired")
        await page.locator("#message").fill("hello?")
        await page.locator("#send").click()
        await expect(page.locator(".msg.error")).to_contain_text("expired")
        await expect(page.locator("#message")).to_have_value("hello?")  # kept for a retry
        await page.screenshot(path=str(tmp_path / "expired.png"))

        # Without a token the page explains why it cannot be used.
        await page.goto(f"{url}/chat")
        await expect(page.locator("#status")).to_contain_text("sign-in token")
        await expect(page.locator("#send")).to_be_disabled()
    # The only thing that went wrong is the refused expired token (and the console saying so).
    assert [p for p in problems if p.startswith("401 ")] == [f"401 for {url}/webchat/messages"]
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
