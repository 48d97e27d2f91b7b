"""A turn is one unit of work: kill the gateway (SIGKILL) at each step of a turn, restart
it, and each message is answered exactly once with its memory stored once."""

import asyncio
import json
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "helpers" / "turn_worker.py"
TEXT = "remember that the demo is on Friday"


async def run(*args: str) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(WORKER), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode in (0, -9), err.decode()
    return proc.returncode


@pytest.mark.parametrize("crash_at", ["after_claim", "after_model", "after_commit",
                                      "before_send"])
async def test_a_gateway_killed_mid_turn_answers_once_after_restart(
        database_url, db, formation, tmp_path, crash_at):
    outbox = tmp_path / "said.jsonl"
    args = [database_url, formation, f"msg-{crash_at}", TEXT, str(outbox)]
    assert await run(*args, crash_at) == -9  # killed
    assert not outbox.exists()  # nothing was said before the kill
    await asyncio.sleep(0.6)  # the dead process's lease runs out
    assert await run(*args, "none") == 0  # restarted, the platform delivers it again
    assert await run(*args, "none") == 0  # and once more: nothing new
    said = [json.loads(line) for line in outbox.read_text().splitlines()]
    assert [s["text"] for s in said] == ["I'll remember that the demo is on Friday."]
    user = await db.fetchval("SELECT user_id FROM sessions WHERE id = $1", said[0]["session_id"])
    memories = await db.fetch("SELECT content FROM memories WHERE user_id = $1", user)
    assert [m[0] for m in memories] == ["the demo is on Friday"]
    buffer = await db.fetch("SELECT role FROM session_messages WHERE session_id = $1",
                            said[0]["session_id"])
    assert sorted(r[0] for r in buffer) == ["assistant", "user"]  # one turn
    sessions = await db.fetch("SELECT id FROM sessions WHERE conversation = 'main' AND "
                              "formation_id = $1", formation)
    assert len(sessions) == 1


@pytest.mark.parametrize("crash_at", ["after_claim", "after_model", "after_commit",
                                      "before_send"])
async def test_a_turn_whose_gateway_died_is_answered_once_by_another_without_redelivery(
        database_url, db, formation, tmp_path, crash_at):
    """The platform never sends it again (its acknowledgement was given): another
    process's inbox worker finds the message with its dead claim and answers it, once."""
    outbox = tmp_path / "said.jsonl"
    args = [database_url, formation, f"inbox-{crash_at}", TEXT, str(outbox)]
    assert await run(*args, crash_at) == -9
    await asyncio.sleep(0.6)  # the dead process's lease runs out
    assert await run(*args, "inbox") == 0  # another process, no redelivery
    assert await run(*args, "inbox") == 0  # and again: nothing more to answer
    said = [json.loads(line) for line in outbox.read_text().splitlines()]
    assert [s["text"] for s in said] == ["I'll remember that the demo is on Friday."]
    assert said[0]["via"] == "inbox"
    memories = await db.fetch(
        "SELECT m.content FROM memories m JOIN users u ON u.public_id = m.user_id"
        " WHERE u.formation_id = $1", formation)
    assert [m[0] for m in memories] == ["the demo is on Friday"]
