"""Health that tells the truth: /v1/health is liveness, /v1/ready reports each component,
and the supervisor says a channel is up only once it has connected."""

import asyncio

import httpx

from gateway.conversation.ports import QUIET, AdapterConfigError
from gateway.runtime.supervisor import Supervisor


class Flaky:
    """Connects after `fail` failed attempts; `refuse` makes it reject its credentials."""

    exclusive = False

    def __init__(self, name, *, fail=0, refuse=False, connect_after=0.0):
        self.name, self.fail, self.refuse, self.connect_after = name, fail, refuse, connect_after
        self.attempts = 0

    async def run(self, ready=QUIET):
        self.attempts += 1
        if self.refuse:
            raise AdapterConfigError(f"channels.{self.name}.token was rejected")
        if self.attempts <= self.fail:
            raise ConnectionError("connection refused")
        await asyncio.sleep(self.connect_after)
        ready("connected")
        await asyncio.Event().wait()

    async def deliver(self, message):
        pass


async def wait_for(predicate, timeout=5.0):
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_a_channel_is_up_only_once_it_has_connected():
    supervisor = Supervisor(base_delay=0.01)
    slow = Flaky("slow", connect_after=0.3)
    supervisor.add(slow)
    supervisor.start()
    await asyncio.sleep(0.1)
    assert supervisor.states["slow"].status == "starting"
    await wait_for(lambda: supervisor.is_up("slow"))
    assert supervisor.states["slow"].detail == "connected"
    await supervisor.stop()


async def test_network_failures_are_retried_and_refused_credentials_stop_the_channel():
    supervisor = Supervisor(base_delay=0.05)
    flaky, refused = Flaky("flaky", fail=100), Flaky("refused", refuse=True)
    supervisor.add(flaky)
    supervisor.add(refused)
    supervisor.start()
    await wait_for(lambda: flaky.attempts >= 3 and refused.attempts >= 1)
    state = supervisor.states["flaky"]
    assert state.status in ("retrying", "starting") and state.failures >= 2
    assert state.last_error == "ConnectionError: connection refused"
    stopped = supervisor.states["refused"]
    assert stopped.status == "stopped" and "rejected" in stopped.last_error
    assert refused.attempts == 1  # never retried: retrying cannot fix a bad token
    await supervisor.stop()


async def test_ready_reports_each_component(server):
    url, runtime = server
    supervisor = Supervisor(base_delay=0.05)
    supervisor.add(Flaky("telegram"))
    supervisor.add(Flaky("discord", refuse=True))
    supervisor.add(Flaky("slack", fail=100))
    runtime.channel_states = supervisor.states
    supervisor.start()
    try:
        await wait_for(lambda: supervisor.is_up("telegram")
                       and supervisor.states["discord"].status == "stopped"
                       and supervisor.states["slack"].failures >= 1)
        async with httpx.AsyncClient(base_url=url + "/v1") as http:
            assert (await http.get("/health")).json()["data"]["status"] == "healthy"
            answer = await http.get("/ready")
        assert answer.status_code == 200
        report = answer.json()["data"]
        assert report["status"] == "degraded"
        components = report["components"]
        assert components["database"] == {"status": "up"}
        assert components["cache"]["status"] == "up"
        assert components["cache"]["bus"] in ("sqlite", "postgres")  # each replica told
        assert components["responder"] == {"status": "up", "name": "offline"}
        channels = components["channels"]
        assert channels["api"]["status"] == channels["web"]["status"] == "up"
        assert channels["telegram"]["status"] == "up"
        assert channels["discord"]["status"] == "stopped"
        assert "rejected" in channels["discord"]["last_error"]
        assert channels["slack"]["last_error"] == "ConnectionError: connection refused"
    finally:
        await supervisor.stop()


async def test_ready_is_503_while_the_database_is_down(server):
    url, runtime = server
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        assert (await http.get("/ready")).json()["data"]["status"] == "ready"
        await runtime.db.close()  # as good as an unreachable database
        answer = await http.get("/ready")
        health = await http.get("/health")
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "5"
    report = answer.json()["data"]
    assert report["status"] == "not_ready"
    assert report["components"]["database"]["status"] == "down"
    assert report["components"]["database"]["error"]
    assert health.status_code == 200  # liveness: the process still answers


async def test_ready_says_when_the_model_endpoint_is_down(server, monkeypatch):
    from gateway.conversation.responders.openai import OpenAIResponder
    from gateway.runtime import health
    from tests.peers.llm import ChatCompletionsPeer

    monkeypatch.setattr(health, "RESPONDER_TTL", 0.0)
    url, runtime = server
    peer = ChatCompletionsPeer()
    responder = OpenAIResponder(base_url=await peer.start(), model="test-model", api_key=None,
                                timeout=1)
    runtime.engine.responder = responder

    async def responder_report():
        async with httpx.AsyncClient(base_url=url + "/v1") as http:
            answer = await http.get("/ready")
        assert answer.status_code == 200  # without a model the assistant still apologises
        return answer.json()["data"]

    try:
        report = await responder_report()
        assert report["status"] == "ready"
        assert report["components"]["responder"] == {"status": "up", "name": "openai"}
        peer.mode = "error"
        report = await responder_report()
        assert report["status"] == "degraded"
        assert report["components"]["responder"]["error"] == (
            "ResponderError: model endpoint answered 503")
        await peer.stop()
        report = await responder_report()
        assert "unreachable" in report["components"]["responder"]["error"]
    finally:
        await responder.close()
        await peer.stop()
