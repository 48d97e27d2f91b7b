"""The API is a channel: every chat goes through the engine's one entry point, a retried
request gets its reply again, and what the assistant says unprompted reaches API clients
through GET /v1/events (read with the official SDK's stream_events)."""

import asyncio
import json
import threading

import httpx
from muxi import FormationClient

from gateway.conversation.scheduler import Scheduler
from tests.conftest import ADMIN, CLIENT


def headers(user=None, **extra):
    h = {"X-Muxi-Client-Key": CLIENT, **extra}
    if user:
        h["X-Muxi-User-ID"] = user
    return h


async def test_a_retried_chat_with_the_same_idempotency_key_is_one_turn(server):
    url, runtime = server
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        same = headers("user_123", **{"X-Muxi-Idempotency-Key": "k-1"})
        first = (await http.post("/chat", json={"message": "my budget is $5,000"},
                                 headers=same)).json()["data"]
        again = (await http.post("/chat", json={"message": "my budget is $5,000"},
                                 headers=same)).json()["data"]
        assert again == first
        other = (await http.post("/chat", json={"message": "my budget is $5,000"},
                                 headers=headers("user_123", **{"X-Muxi-Idempotency-Key": "k-2"})
                                 )).json()["data"]
        assert other["request_id"] != first["request_id"]
        bad = await http.post("/chat", json={"message": "hi"},
                              headers=headers("user_123", **{"X-Muxi-Idempotency-Key": "a b"}))
        assert bad.status_code == 422 and "Idempotency" in bad.json()["message"]
    buffer = await runtime.memory.sessions.buffer(first["session_id"])
    assert [m.content for m in buffer].count("my budget is $5,000") == 2  # k-1 once, k-2 once


async def test_the_official_sdks_idempotency_key_claims_the_turn(server):
    url, runtime = server
    formation = FormationClient(server_url=url, formation_id=runtime.settings.formation_id,
                                admin_key=ADMIN, client_key=CLIENT)
    reply = await asyncio.to_thread(formation.chat, {"message": "remember the demo is Friday"},
                                    user_id="sdk@x.co")
    buffer = await runtime.memory.sessions.buffer(reply["session_id"])
    assert [m.role for m in buffer] == ["user", "assistant"]
    claimed = await runtime.db.fetch(
        "SELECT message_id, status FROM processed_messages WHERE channel = 'api'"
        " AND message_id LIKE $1", reply["user_id"] + ":%")
    assert [row[1] for row in claimed] == ["sent"]  # a retry with that key gets this reply


def _listen(url: str, formation_id: str, user: str, got: list, ready: threading.Event,
            stop: threading.Event) -> None:
    formation = FormationClient(server_url=url, formation_id=formation_id, admin_key=ADMIN,
                                client_key=CLIENT)
    for event in formation.stream_events(user):
        if event["event"] == "connected":
            ready.set()
        elif event["event"] == "message":
            got.append(json.loads(event["data"]))
        if stop.is_set():
            break


async def test_a_reminder_set_over_the_api_arrives_once_on_the_event_stream(server):
    url, runtime = server
    runtime.scheduler.formation = runtime.settings.formation_id
    runtime.scheduler.interval = 0.2
    scheduler = asyncio.create_task(runtime.scheduler.run())
    got: list = []
    ready, stop = threading.Event(), threading.Event()
    listener = asyncio.create_task(asyncio.to_thread(
        _listen, url, runtime.settings.formation_id, "api-user@x.co", got, ready, stop))
    try:
        assert await asyncio.to_thread(ready.wait, 10)
        async with httpx.AsyncClient(base_url=url + "/v1") as http:
            told = (await http.post("/chat", json={"message": "remind me in 2 seconds to stretch"},
                                    headers=headers("api-user@x.co"))).json()["data"]
            assert "remind you to stretch" in told["message"]["content"]
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # anything twice would have arrived by now
            assert [e["text"] for e in got] == ["⏰ Reminder: stretch"]
            assert got[0]["channel"] == "api"
            # ... and it is in the session's messages.
            messages = (await http.get(f"/sessions/{told['session_id']}/messages",
                                       headers=headers("api-user@x.co"))).json()["data"]
            assert "⏰ Reminder: stretch" in json.dumps(messages, ensure_ascii=False)
            jobs = (await http.get("/scheduler/jobs", headers={"X-Muxi-Admin-Key": ADMIN},
                                   params={"user_id": "api-user@x.co"})).json()["data"]["jobs"]
            assert jobs == []  # delivered: done
    finally:
        stop.set()
        runtime.scheduler.stop()
        await scheduler
        # Wake the listener so its thread can see `stop`.
        await runtime.engine.memory.tasks.add(
            await runtime.identity.resolve(runtime.settings.formation_id, "api-user@x.co"),
            runtime.settings.formation_id, "one_time", "in 0 seconds", "bye",
            channel="api", conversation="api:api-user@x.co")
        await Scheduler(runtime.memory, runtime.channels,
                        formation=runtime.settings.formation_id).run_once()
        await asyncio.wait_for(listener, 10)


async def test_a_failed_delivery_is_visible_through_the_api(server):
    url, runtime = server

    class Down:
        name = "telegram"

        async def deliver(self, message):
            raise ConnectionError("telegram is unreachable")

    runtime.channels.add(Down())
    user = await runtime.identity.resolve(runtime.settings.formation_id, ("77", "telegram"))
    task = await runtime.memory.tasks.add(user, runtime.settings.formation_id, "one_time",
                                          "in 0 seconds", "stretch", channel="telegram",
                                          conversation="77")
    scheduler = Scheduler(runtime.memory, runtime.channels, formation=runtime.settings.formation_id)
    await scheduler.run_once(at=task.next_run + 1)
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        job = (await http.get(f"/scheduler/jobs/{task.id}",
                              headers={"X-Muxi-Admin-Key": ADMIN})).json()["data"]
    assert job["status"] == "scheduled" and job["attempts"] == 1
    assert job["last_error"] == "telegram: ConnectionError: telegram is unreachable"
