"""Streaming end to end: the model's pieces reach an SSE client (the API, the web chat)
while the model is still writing; a stream that breaks ends in a clear error and keeps
nothing."""

import json

import httpx
import pytest

from gateway.conversation.responders.openai import OpenAIResponder
from tests.conftest import CLIENT
from tests.peers.llm import ChatCompletionsPeer
from tests.test_webchat import serve  # noqa: F401  (the web chat server fixture)

REPLY = "Your budget is five thousand dollars, as you told me."


@pytest.fixture
async def peer():
    server = ChatCompletionsPeer()
    server.reply = REPLY
    await server.start()
    yield server
    await server.stop()


def use_model(runtime, peer) -> OpenAIResponder:
    responder = OpenAIResponder(base_url=peer.url, model="test-model", api_key=None,
                                timeout=5)
    runtime.engine.responder = responder
    return responder


async def frames(lines):
    """(event, data) pairs from an SSE line iterator."""
    event, data = "message", []
    async for line in lines:
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield event, json.loads("\n".join(data))
            event, data = "message", []


async def test_the_first_piece_reaches_an_api_client_before_the_model_has_finished(server,
                                                                                   peer):
    url, runtime = server
    responder = use_model(runtime, peer)
    peer.released.clear()  # the model holds back its last word until we have read a piece
    try:
        async with httpx.AsyncClient(base_url=url + "/v1", timeout=10) as http:
            async with http.stream("POST", "/chat", json={"message": "what's my budget?",
                                                          "stream": True},
                                   headers={"X-Muxi-Client-Key": CLIENT,
                                            "X-Muxi-User-ID": "stream@x.co"}) as answer:
                assert answer.status_code == 200
                pieces, done = [], None
                async for event, data in frames(answer.aiter_lines()):
                    if event == "message":
                        if not pieces:
                            assert not peer.finished.is_set()  # still writing
                            peer.released.set()
                        pieces.append(data["token"])
                    elif event == "done":
                        done = data
        assert "".join(pieces) == REPLY and len(pieces) > 3
        buffer = await runtime.memory.sessions.buffer(done["session_id"])
        assert [m.content for m in buffer] == ["what's my budget?", REPLY]
        assert peer.requests[-1]["stream"] is True
    finally:
        await responder.close()


async def test_a_stream_that_breaks_ends_in_an_error_event_and_keeps_nothing(server, peer):
    url, runtime = server
    responder = use_model(runtime, peer)
    peer.mode = "drop"
    headers = {"X-Muxi-Client-Key": CLIENT, "X-Muxi-User-ID": "dropped@x.co",
               "X-Muxi-Idempotency-Key": "drop-1"}
    try:
        async with httpx.AsyncClient(base_url=url + "/v1", timeout=10) as http:
            async with http.stream("POST", "/chat", json={"message": "my budget is $7",
                                                          "stream": True},
                                   headers=headers) as answer:
                events = [pair async for pair in frames(answer.aiter_lines())]
            assert events[0][0] == "message"  # part of the answer was out
            assert events[-1] == ("error", {
                "error": "the model stopped answering partway through; nothing was kept, so "
                         "please send the message again", "type": "stream_broken"})
            user = await runtime.identity.resolve(runtime.settings.formation_id,
                                                  "dropped@x.co", create=False)
            assert await runtime.memory.sessions.list(user) == []
            assert await runtime.memory.users.get_fact(user, "budget") is None
            peer.mode = "answer"  # the same request again is answered (its claim was freed)
            again = await http.post("/chat", json={"message": "my budget is $7"},
                                    headers=headers)
        assert again.status_code == 200
        assert again.json()["data"]["message"]["content"] == REPLY
    finally:
        await responder.close()


async def test_the_web_chat_streams_the_models_pieces(serve, peer):  # noqa: F811
    url, runtime = await serve()
    responder = use_model(runtime, peer)
    peer.released.clear()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as http:
            async with http.stream("POST", "/webchat/messages", json={
                    "text": "hello", "conversation": "t", "name": "web@x.co"}) as answer:
                pieces = []
                async for event, data in frames(answer.aiter_lines()):
                    if event == "message":
                        if not pieces:
                            assert not peer.finished.is_set()
                            peer.released.set()
                        pieces.append(data["token"])
        assert "".join(pieces) == REPLY
    finally:
        await responder.close()


async def test_a_growing_reply_edits_in_place_and_splits_at_the_limit():
    from adapters._common import GrowingReply

    shown: dict[int, str] = {}
    calls: list[str] = []

    async def post(text: str) -> int:
        shown[len(shown)] = text
        calls.append("post")
        return len(shown) - 1

    async def edit(handle: int, text: str) -> None:
        shown[handle] = text
        calls.append("edit")

    growing = GrowingReply(post, edit, limit=20, interval=0)
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    for n, word in enumerate(words):
        await growing.add(word if n == 0 else " " + word)
    final = " ".join(words)
    await growing.finish(final)
    assert all(len(text) <= 20 for text in shown.values())
    assert " ".join(shown[n] for n in sorted(shown)) == final  # nothing lost or doubled
    assert calls.count("post") == len(shown) and calls.count("edit") >= 3
