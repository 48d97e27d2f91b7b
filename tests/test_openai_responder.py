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
    peer.tool_calls = [("remember_fact", {"key": "budget", "value": "$5,000"})]
    told = await web.push("user_123", "My budget is $5,000")
    peer.tool_calls = []
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


async def test_a_model_that_is_down_gets_an_apology_and_the_rules_still_remember(engine,
                                                                                 peer):
    url = peer.url
    await peer.stop()  # nothing listens there now: every request is refused
    responder = OpenAIResponder(base_url=url, model="test-model", api_key=None, timeout=0.5)
    engine.responder = responder
    try:
        web = InMemoryChannel(engine, "web")
        reply = await web.push("down@x.co", "my budget is $12")
        assert reply.text.startswith("Sorry")
        assert (await engine.memory.users.get_fact(reply.user_id, "budget")).value == "$12"
    finally:
        await responder.close()


async def test_the_model_decides_what_to_remember_and_it_is_recalled_on_another_channel(
        llm_engine, peer, identity, formation):
    telegram, slack = InMemoryChannel(llm_engine, "telegram"), InMemoryChannel(llm_engine, "slack")
    peer.tool_calls = [("remember_fact", {"key": "city", "value": "Berlin"}),
                       ("remember_note", {"note": "is allergic to peanuts"})]
    told = await telegram.push(("42", "telegram"), "Ich wohne in Berlin, und Erdnüsse vertrage "
                                                   "ich nicht")  # no rule reads this
    peer.tool_calls = []
    assert told.text == "Your budget is $5,000."  # the model's words, after its tool calls
    assert (await llm_engine.memory.users.get_fact(told.user_id, "city")).value == "Berlin"
    await identity.associate(formation, [("U7", "slack")], user_id=told.user_id)
    await slack.push(("U7", "slack"), "where do I live?")
    system = peer.requests[-1]["messages"][0]["content"]
    assert "city: Berlin" in system and "peanuts" in system
    assert peer.requests[-1]["tools"][0]["function"]["name"] == "remember_fact"


async def test_malformed_or_hostile_tool_calls_are_refused_whole(llm_engine, peer):
    peer.tool_calls = [
        ("remember_fact", {"key": "budget", "value": "$5,000"}),  # fine
        ("drop_all_tables", {}),  # no such tool
        ("remember_fact", '{"key": "name", "value": '),  # bad JSON
        ("remember_fact", {"key": "name", "value": "Eve", "user_id": "usr_someone_else"}),
        ("remember_fact", {"key": "Robert'); DROP", "value": "x"}),
        ("schedule_reminder", {"message": "stretch", "when": "whenever"}),
        ("remember_note", {"note": "x" * 5000}),
    ]
    reply = await InMemoryChannel(llm_engine, "web").push("a@x.co", "hello")
    users = llm_engine.memory.users
    assert [(f.key, f.value) for f in await users.facts(reply.user_id)] == [("budget", "$5,000")]
    assert await users.memories(reply.user_id) == []
    assert await llm_engine.memory.tasks.list(reply.user_id) == []
    told = [m for m in peer.requests[-1]["messages"] if m["role"] == "tool"]
    assert [m["content"] for m in told][0] == "done"
    assert sum(m["content"].startswith("refused") for m in told) == 6


async def test_a_streamed_answer_after_tool_calls_keeps_what_the_model_decided(llm_engine, peer):
    from gateway.conversation.messages import InboundMessage

    peer.tool_calls = [("remember_preference", {"preference": "short answers"})]
    pieces = []

    async def on_delta(piece):
        pieces.append(piece)

    reply = await llm_engine.handle(InboundMessage("web", "s@x.co", "main", "keep it short",
                                                   message_id="s-1"), on_delta=on_delta)
    assert "".join(pieces) == reply.text == "Your budget is $5,000."
    facts = await llm_engine.memory.users.facts(reply.user_id)
    assert [(f.kind, f.value) for f in facts] == [("preference", "short answers")]


async def test_a_fact_keeps_where_it_was_learnt(llm_engine, peer):
    peer.tool_calls = [("remember_fact", {"key": "city", "value": "Berlin"})]
    reply = await InMemoryChannel(llm_engine, "telegram").push(("42", "telegram"),
                                                               "I moved to Berlin",
                                                               message_id="tg-9")
    sources = await llm_engine.memory.users.fact_sources(reply.user_id)
    source = sources[("fact", "city")]
    assert (source["channel"], source["message_id"], source["by"]) == ("telegram", "tg-9",
                                                                        "openai")
    assert source["at"] > 0
