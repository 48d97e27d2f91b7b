"""One log stream: library records come out in the chosen format, and an expected network
failure is one line, not a page of traceback."""

import asyncio
import json
import logging

import httpx
import pytest

from adapters import telegram
from gateway.runtime.logs import Throttle, configure_logging, is_network_error
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


def test_an_error_raised_from_a_network_failure_is_one_too():
    from identity.storage import DatabaseUnavailableError

    try:
        try:
            raise ConnectionRefusedError(111, "Connect call failed")
        except OSError as exc:
            raise DatabaseUnavailableError("the database is unavailable") from exc
    except DatabaseUnavailableError as exc:
        assert is_network_error(exc)
    assert not is_network_error(DatabaseUnavailableError("no cause"))


def test_a_throttle_lets_one_line_per_class_per_interval_through():
    now = [0.0]
    throttle = Throttle(interval=10.0, clock=lambda: now[0])
    assert throttle.allow("ConnectionRefusedError") == 0
    assert [throttle.allow("ConnectionRefusedError") for _ in range(500)] == [None] * 500
    assert throttle.allow("AdminShutdownError") == 0  # another class: its own line
    now[0] = 10.0
    assert throttle.allow("ConnectionRefusedError") == 500  # with how many were not logged
    assert throttle.allow("ConnectionRefusedError") is None


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


# --- request ids --------------------------------------------------------------------------

class Broken:
    """A responder that fails: the turn logs a warning and says the apology."""

    name = "broken"

    async def respond(self, context, changes):
        raise RuntimeError("model on fire")


def _turn_lines(lines: list[dict]) -> list[dict]:
    return [r for r in lines if r.get("event") in ("user created", "responder failed", "turn")]


async def test_every_log_line_of_an_api_turn_carries_its_request_id(json_logs, server):
    from tests.conftest import CLIENT

    url, runtime = server
    runtime.engine.responder = Broken()
    json_logs.readouterr()  # start-up lines
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        answer = await http.post("/chat", json={"message": "hello"}, headers={
            "X-Muxi-Client-Key": CLIENT, "X-Muxi-User-ID": "trace-me@acme.com",
            "X-Request-ID": "lb-7f3a9c.42"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["X-Request-ID"] == "lb-7f3a9c.42"
    body = answer.json()
    assert body["request"]["id"] == body["data"]["request_id"] == "lb-7f3a9c.42"
    lines = records(json_logs)
    assert [r["event"] for r in _turn_lines(lines)] == ["user created", "responder failed",
                                                        "turn"]
    assert lines and all(r.get("request_id") == "lb-7f3a9c.42" for r in lines), lines


async def test_a_request_without_a_usable_request_id_gets_one_of_its_own(server):
    url, _ = server
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        plain = await http.get("/health")
        odd = await http.get("/health", headers={"X-Request-ID": "two words; and \"quotes\""})
        long = await http.get("/health", headers={"X-Request-ID": "x" * 300})
        missing = await http.get("/no-such-route")
    ids = [r.headers["X-Request-ID"] for r in (plain, odd, long, missing)]
    assert all(i.startswith("req_") for i in ids) and len(set(ids)) == 4, ids
    assert [r.json()["request"]["id"] for r in (plain, odd, long, missing)] == ids


async def test_every_log_line_of_a_channel_turn_carries_the_same_request_id(json_logs, engine):
    from adapters.inmemory import InMemoryChannel

    engine.responder = Broken()
    channel = InMemoryChannel(engine)
    json_logs.readouterr()
    first = await channel.push("first@acme.com", "hello")
    lines_of_first = records(json_logs)
    second = await channel.push("first@acme.com", "hello again")
    lines_of_second = records(json_logs)
    assert first is not None and second is not None
    assert first.request_id.startswith("req_") and first.request_id != second.request_id
    assert [r["event"] for r in _turn_lines(lines_of_first)] == [
        "user created", "responder failed", "turn"]
    assert all(r.get("request_id") == first.request_id for r in lines_of_first), lines_of_first
    assert all(r.get("request_id") == second.request_id for r in lines_of_second)
    assert len(lines_of_second) >= 2
