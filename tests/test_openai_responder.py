"""The OpenAI-compatible responder against a local chat-completions server."""

import pytest

from adapters.inmemory import InMemoryChannel
from gateway.conversation.responders.openai import OpenAIResponder
from tests.peers.llm import ChatCompletionsPeer


@pytest.fixture
async def peer():
    server = ChatCompletionsPeer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def llm_engine(engine, peer):
    responder = OpenAIResponder(base_url=peer.url, model="test-model", api_key="sk-test",
                                timeout=0.5)
    engine.responder = responder
    yield engine
    await responder.close()


async def test_the_model_sees_memory_from_other_channels_and_the_session(llm_engine, peer,
                                                                         identity, formation):
    web = InMemoryChannel(llm_engine, "web")
    told = await web.push("user_123", "My budget is $5,000")
    await identity.associate(formation, [("U1", "slack")], user_id=told.user_id)
    slack = InMemoryChannel(llm_engine, "slack")
    asked = await slack.push(("U1", "slack"), "What's my budget?")
    assert asked.text == "Your budget is $5,000."
    request = peer.requests[-1]
    assert request["model"] == "test-model"
    system = request["messages"][0]["content"]
    assert "budget: $5,000" in system and "slack" in system
    assert request["messages"][-1] == {"role": "user", "content": "What's my budget?"}
    assert peer.headers[-1]["Authorization"] == "Bearer sk-test"


@pytest.mark.parametrize("mode", ["error", "slow", "garbage"])
async def test_a_failing_model_gets_an_apology_and_nothing_is_lost(llm_engine, peer, mode):
    peer.mode = mode
    web = InMemoryChannel(llm_engine, "web")
    reply = await web.push("a@x.co", "my budget is $9")
    assert reply.text.startswith("Sorry")
    assert (await llm_engine.memory.users.get_fact(reply.user_id, "budget")).value == "$9"
    buffer = await llm_engine.memory.sessions.buffer(reply.session_id)
    assert [m.role for m in buffer] == ["user"]  # the apology is said, never kept
