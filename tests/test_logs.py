"""One log stream: library records come out in the chosen format, and an expected network
failure is one line, not a page of traceback."""

import asyncio
import json
import logging

import httpx
import pytest

from adapters import telegram
from gateway.runtime.logs import configure_logging, is_network_error
from tests.peers.http import stop
from tests.peers.telegram import TOKEN, TelegramPeer
from tests.test_telegram import private


@pytest.fixture
def json_logs(capsys):
    capsys.readouterr()
    configure_logging("json", "info", cache=False)
    yield capsys
    configure_logging("console", "info", cache=False)


def records(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]  # all JSON


def test_library_records_are_json_and_network_tracebacks_fold_into_one_line(json_logs):
    try:
        raise httpx.ConnectError("All connection attempts failed")
    except httpx.ConnectError:
        logging.getLogger("telegram.ext.Updater").exception("Error while getting Updates")
    try:
        raise ZeroDivisionError("a real bug")
    except ZeroDivisionError:
        logging.getLogger("slack_bolt.App").exception("listener failed")
    logging.getLogger("httpx").info("HTTP Request: POST …/getUpdates")  # chatty: dropped
    poll, bug = records(json_logs)
    assert poll["event"] == "Error while getting Updates" and poll["logger"] == (
        "telegram.ext.Updater")
    assert poll["error"] == "ConnectError: All connection attempts failed"
    assert "exception" not in poll
    assert "ZeroDivisionError: a real bug" in bug["exception"]  # bugs keep their traceback


@pytest.mark.parametrize("exc, expected", [
    (ConnectionResetError("reset"), True), (TimeoutError(), True),
    (httpx.ReadTimeout("slow"), True), (ValueError("bad"), False), (KeyError("k"), False)])
def test_what_counts_as_a_network_failure(exc, expected):
    assert is_network_error(exc) is expected


async def test_a_failed_telegram_poll_is_one_json_line(json_logs, engine):
    peer = TelegramPeer()
    await peer.start()
    adapter = telegram.create({"token": TOKEN, "api_url": peer.url, "poll_timeout": 1}, engine)
    run = asyncio.create_task(adapter.run())
    try:
        await peer.push(private("hello", 101))
        await peer.wait_sent(1)
        peer.fail_polls = 2  # Telegram's front end answering 502 for a while
        await peer.push(private("hello again", 102))
        await peer.wait_sent(2)
    finally:
        await stop(run)
        await peer.stop()
    lines = records(json_logs)
    assert peer.dropped == 2
    failures = [r for r in lines if r.get("logger", "").startswith("telegram")
                and r["level"] in ("error", "warning")]
    assert failures, "\n".join(json.dumps(r) for r in lines if "aiohttp" not in r.get("logger", ""))
    assert all("exception" not in r and r.get("error") for r in failures), failures
