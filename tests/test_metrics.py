"""GET /metrics: Prometheus text with turns, the responder, the identity cache, channel
states and scheduler lag, from a registry of the runtime's own."""

from __future__ import annotations

from dataclasses import replace

import httpx
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from config.settings import Settings
from gateway.runtime.metrics import Metrics
from gateway.runtime.supervisor import Supervisor
from gateway.runtime.wiring import Runtime
from tests.conftest import CLIENT
from tests.test_health import Flaky, wait_for


class Broken:
    name = "broken"

    async def respond(self, context, changes):
        raise RuntimeError("model on fire")


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(found: dict, name: str, **labels: str) -> float | None:
    return found.get((name, frozenset(labels.items())))


async def chat(http: httpx.AsyncClient, user: str, text: str) -> None:
    answer = await http.post("/v1/chat", json={"message": text},
                             headers={"X-Muxi-Client-Key": CLIENT, "X-Muxi-User-ID": user})
    assert answer.status_code == 200, answer.text


async def test_metrics_count_turns_responder_cache_channels_and_scheduler_lag(server):
    url, runtime = server
    supervisor = Supervisor(base_delay=0.05)
    supervisor.add(Flaky("telegram"))
    supervisor.add(Flaky("discord", refuse=True))
    runtime.channel_states = supervisor.states
    supervisor.start()
    try:
        await wait_for(lambda: supervisor.is_up("telegram")
                       and supervisor.states["discord"].status == "stopped")
        async with httpx.AsyncClient(base_url=url) as http:
            for text in ("my budget is $5,000", "what's my budget?", "/whoami"):
                await chat(http, "metrics@acme.com", text)
            runtime.engine.responder = Broken()
            await chat(http, "metrics@acme.com", "and now?")
            # A reminder that should have fired a minute ago: the scheduler is behind.
            user = await runtime.identity.resolve(runtime.settings.formation_id,
                                                  "metrics@acme.com")
            assert user is not None
            task = runtime.memory.tasks.plan(user, runtime.settings.formation_id, "one_time",
                                             "in 1 second", "stretch", channel="api",
                                             conversation="api:metrics@acme.com")
            await runtime.memory.tasks.insert(replace(task, next_run=task.next_run - 61))
            try:
                answer = await http.get("/metrics")
            finally:  # no other test's scheduler (on the shared database) may fire it
                await runtime.memory.tasks.cancel(user, task.id)
    finally:
        await supervisor.stop()
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = samples(answer.text)
    turns = "threadline_turn_duration_seconds_count"
    assert value(found, turns, channel="api", outcome="answered") == 2
    assert value(found, turns, channel="api", outcome="command") == 1
    assert value(found, turns, channel="api", outcome="apology") == 1
    assert value(found, "threadline_turn_duration_seconds_sum", channel="api",
                 outcome="answered") > 0
    assert value(found, "threadline_responder_duration_seconds_count", responder="offline") == 2
    assert value(found, "threadline_responder_errors_total", responder="broken",
                 error="RuntimeError") == 1
    assert value(found, "threadline_identity_cache_lookups_total", result="miss") >= 1
    assert value(found, "threadline_identity_cache_lookups_total", result="hit") >= 3
    assert value(found, "threadline_channel_state", channel="telegram", state="up") == 1
    assert value(found, "threadline_channel_state", channel="telegram", state="retrying") == 0
    assert value(found, "threadline_channel_state", channel="discord", state="stopped") == 1
    assert value(found, "threadline_scheduler_lag_seconds") >= 60


async def test_scheduler_lag_is_zero_when_nothing_is_due(tmp_path):
    runtime = await Runtime.open(Settings(data_dir=tmp_path))  # a database of its own
    try:
        found = samples((await runtime.metrics.render(runtime)).decode())
    finally:
        await runtime.close()
    assert value(found, "threadline_scheduler_lag_seconds") == 0
    assert value(found, "threadline_inbox_depth") == 0
    assert value(found, "threadline_inbox_age_seconds") == 0


async def test_the_inbox_depth_and_age_count_messages_kept_and_not_said(tmp_path):
    from gateway.conversation.messages import InboundMessage

    runtime = await Runtime.open(Settings(data_dir=tmp_path))  # a database of its own
    try:
        for n in range(3):
            assert await runtime.engine.accept(InboundMessage(
                channel="web", identifier="inbox@x.co", conversation="c", text="hi",
                message_id=f"m{n}"))
        claims = runtime.memory.claims
        await claims.db.execute("UPDATE processed_messages SET created_at = created_at - 30"
                                " WHERE message_id = 'm0'")
        kept = samples((await runtime.metrics.render(runtime)).decode())
        await runtime.engine.handle(InboundMessage(channel="web", identifier="inbox@x.co",
                                                   conversation="c", text="hi",
                                                   message_id="m0"), None)
        after = samples((await runtime.metrics.render(runtime)).decode())
    finally:
        await runtime.close()
    assert value(kept, "threadline_inbox_depth") == 3
    assert 30 <= value(kept, "threadline_inbox_age_seconds") < 60
    assert value(after, "threadline_inbox_depth") == 2  # said: no longer kept
    assert value(after, "threadline_inbox_age_seconds") < 30


async def test_metrics_can_require_a_bearer_key(server):
    url, runtime = server
    runtime.settings = runtime.settings.model_copy(
        update={"metrics_key": SecretStr("scrape-key-0123456789")})
    async with httpx.AsyncClient(base_url=url) as http:
        missing = await http.get("/metrics")
        wrong = await http.get("/metrics", headers={"Authorization": "Bearer nope"})
        right = await http.get("/metrics",
                               headers={"Authorization": "Bearer scrape-key-0123456789"})
    assert (missing.status_code, wrong.status_code, right.status_code) == (401, 401, 200)
    assert "threadline_turn_duration_seconds" in right.text


def test_each_runtime_has_a_registry_of_its_own():
    first, second = Metrics(), Metrics()
    first.turn("api", "answered", 0.1)
    assert first.registry is not second.registry
    assert value(samples(second.render_now().decode()),
                 "threadline_turn_duration_seconds_count", channel="api",
                 outcome="answered") is None


async def test_a_retried_request_counts_as_replayed_not_as_a_second_turn(server):
    url, _ = server
    headers = {"X-Muxi-Client-Key": CLIENT, "X-Muxi-User-ID": "retry@acme.com",
               "X-Muxi-Idempotency-Key": "k-1"}
    async with httpx.AsyncClient(base_url=url) as http:
        for _ in range(3):
            answer = await http.post("/v1/chat", json={"message": "hello"}, headers=headers)
            assert answer.status_code == 200
        found = samples((await http.get("/metrics")).text)
    turns = "threadline_turn_duration_seconds_count"
    assert value(found, turns, channel="api", outcome="answered") == 1
    assert value(found, turns, channel="api", outcome="replayed") == 2
