"""Merges with a preview and an undo from the merge journal, on SQLite and PostgreSQL: the
identity core with memory's merge hooks, the HTTP API and the command line."""

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from identity import MergeNotFoundError, MergeUndoRefusedError
from memory.merges import summary
from tests.conftest import ADMIN, CLIENT

THREADLINE = shutil.which("threadline", path=str(Path(sys.executable).parent)) or "threadline"


@pytest.fixture
def identity_with_memory(identity, memory_store):
    """The identity service with memory's hooks, as the wiring registers them."""
    identity.store.on_merge(memory_store.merge_into)
    identity.store.on_unmerge(memory_store.unmerge)
    return identity


async def _two_users(identity, mem, formation):
    """Alice (kept) and Bob (merged away), each with identifiers and memory; both know a
    color, so that fact collides and Alice's wins."""
    alice = (await identity.associate(formation, ["alice@x.co", "slack:UALICE1"])).user_id
    bob = (await identity.associate(formation, ["bob@x.co", "tg_4242", "internal:bob-7"])
           ).user_id
    await mem.users.set_fact(alice, "name", "Alice")
    await mem.users.set_fact(alice, "color", "teal")
    await mem.users.set_fact(bob, "color", "red", source={"channel": "telegram", "by": "rules"})
    await mem.users.set_fact(bob, "city", "Paris")
    await mem.users.set_fact(bob, "diet", "no peanuts", kind="preference")
    await mem.users.add_memory(alice, "likes green tea")
    await mem.users.add_memory(bob, "the demo is on Friday")
    await mem.users.add_memory(bob, "has a dog called Rex")
    await mem.users.remember_turn(bob, "telegram", [("user", "hi"), ("assistant", "hello")])
    await mem.sessions.open(alice, formation, "web", "c-alice")
    await mem.sessions.open(bob, formation, "telegram", "c-bob")
    await mem.tasks.add(bob, formation, "one_time", "in 10 minutes", "stretch")
    await mem.credentials.add(bob, "github", {"token": "ghp_bob1234567890"})
    await mem.users.refresh_synopsis(alice)
    await mem.users.refresh_synopsis(bob)
    return alice, bob


async def _state(identity, mem, db, formation, user):
    """Everything a user holds, as comparable values."""
    created = await db.fetchval("SELECT created_at FROM users WHERE public_id = $1", user)
    return {
        "created_at": created,
        "identifiers": [(i.identifier, i.type, i.created_at)
                        for i in await identity.identifiers_of(formation, user)],
        "facts": sorted((f.kind, f.key, f.value, f.updated_at)
                        for f in await mem.users.facts(user)),
        "sources": await mem.users.fact_sources(user),
        "memories": sorted(m.id for m in await mem.users.memories(user)),
        "working": [(w.channel, w.role, w.content) for w in await mem.users.working(user)],
        "sessions": sorted(s.id for s in await mem.sessions.list(user)),
        "tasks": sorted(t.id for t in await mem.tasks.list(user)),
        "credentials": sorted(c.id for c in await mem.credentials.list(user)),
        "synopsis": await mem.users.synopsis(user),
    }


async def _tables(db) -> dict[str, list]:
    if db.dialect == "sqlite":
        names = [r[0] for r in await db.fetch(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE '%fts%'")]
    else:
        names = [r[0] for r in await db.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
    return {name: sorted(repr(tuple(r)) for r in await db.fetch(f"SELECT * FROM {name}"))
            for name in names}


# ---------------------------------------------------------------- the identity core


async def test_a_preview_names_what_moves_and_which_fact_wins_and_writes_nothing(
        identity_with_memory, memory_store, db, formation):
    identity = identity_with_memory
    alice, bob = await _two_users(identity, memory_store, formation)
    assert await identity.resolve(formation, "tg_4242") == bob  # now cached
    before = await _tables(db)

    preview = await identity.merge(formation, alice, bob, dry_run=True)

    assert await _tables(db) == before  # not even the journal or the audit log
    assert await identity.cache.get(formation, "tg_4242") == bob  # no cache touched
    assert (preview.kept_user, preview.merged_user) == (alice, bob)
    assert sorted(i.identifier for i in preview.identifiers) == [
        "bob-7", "bob@x.co", "tg_4242"]
    moves = summary(preview.parts["memory"])
    assert moves["counts"] == {"facts": 2, "memories": 2, "working_memory": 2, "sessions": 1,
                               "scheduled_tasks": 1, "credentials": 1}
    assert moves["fact_collisions"] == [{"kind": "fact", "key": "color", "kept_value": "teal",
                                         "merged_value": "red", "winner": "kept"}]


async def test_an_undone_merge_restores_both_users_identifiers_and_memory(
        identity_with_memory, memory_store, db, formation):
    identity, mem = identity_with_memory, memory_store
    alice, bob = await _two_users(identity, mem, formation)
    alice_before = await _state(identity, mem, db, formation, alice)
    bob_before = await _state(identity, mem, db, formation, bob)

    merged = await identity.merge(formation, alice, bob, actor="cli")
    assert merged.id.startswith("mrg_") and merged.undone_at is None
    assert sorted(merged.keys) == ["bob-7", "bob@x.co", "tg_4242"]
    assert await identity.resolve(formation, "tg_4242") == alice  # cached to alice now
    assert (await mem.users.get_fact(alice, "color")).value == "teal"
    assert (await mem.users.get_fact(alice, "city")).value == "Paris"
    # After the merge the kept user learns more: it stays with the kept user.
    later = await mem.users.add_memory(alice, "moved to Lyon")
    await mem.users.set_fact(alice, "pet", "cat")

    undone = await identity.undo_merge(formation, merged.id, actor="cli")

    assert undone.undone_at is not None and undone.undone_by == "cli"
    for ident in ("bob@x.co", "tg_4242", "internal:bob-7"):
        assert await identity.resolve(formation, ident, create=False) == bob, ident
    for ident in ("alice@x.co", "slack:UALICE1"):
        assert await identity.resolve(formation, ident, create=False) == alice, ident
    assert await _state(identity, mem, db, formation, bob) == bob_before
    alice_after = await _state(identity, mem, db, formation, alice)
    assert alice_after["memories"] == sorted([*alice_before["memories"], later.id])
    assert ("fact", "pet", "cat") in {f[:3] for f in alice_after["facts"]}
    assert {f for f in alice_after["facts"] if f[1] != "pet"} == set(alice_before["facts"])
    for part in ("created_at", "identifiers", "working", "sessions", "tasks", "credentials"):
        assert alice_after[part] == alice_before[part], part
    assert "Lyon" in alice_after["synopsis"] and "Paris" not in alice_after["synopsis"]


async def test_a_merge_and_its_undo_are_audited_with_the_merge_id(
        identity_with_memory, memory_store, formation, db):
    from identity.audit import AuditLog

    identity = identity_with_memory
    alice, bob = await _two_users(identity, memory_store, formation)
    merged = await identity.merge(formation, alice, bob, actor="admin_key")
    await identity.undo_merge(formation, merged.id, actor="cli")
    entries = await AuditLog(db).entries(formation, identifier_key="tg_4242")
    assert [(e.action, e.actor, e.user_id) for e in entries[:2]] == [
        ("merge_undone", "cli", bob), ("merge", "admin_key", alice)]
    assert entries[0].before == {"user_id": alice, "merge_id": merged.id}
    assert entries[0].after == {"user_id": bob, "merge_id": merged.id}
    assert entries[1].after == {"user_id": alice, "merge_id": merged.id}


async def test_undoing_twice_is_refused(identity_with_memory, memory_store, formation):
    identity = identity_with_memory
    alice, bob = await _two_users(identity, memory_store, formation)
    merged = await identity.merge(formation, alice, bob)
    await identity.undo_merge(formation, merged.id)
    with pytest.raises(MergeUndoRefusedError) as info:
        await identity.undo_merge(formation, merged.id)
    assert info.value.reason == "already_undone" and merged.id in str(info.value)
    assert await identity.resolve(formation, "bob@x.co", create=False) == bob


async def test_an_expired_merge_cannot_be_undone(identity_with_memory, memory_store,
                                                 formation, db):
    identity = identity_with_memory
    alice, bob = await _two_users(identity, memory_store, formation)
    merged = await identity.merge(formation, alice, bob)
    assert merged.expires_at == pytest.approx(merged.at + 30 * 86400)
    await db.execute("UPDATE merge_journal SET expires_at = $2 WHERE id = $1",
                     merged.id, time.time() - 1)
    with pytest.raises(MergeUndoRefusedError) as info:
        await identity.undo_merge(formation, merged.id)
    assert info.value.reason == "expired"
    assert await identity.resolve(formation, "bob@x.co", create=False) == alice


async def test_past_its_window_a_journal_entry_keeps_who_and_when_but_not_what_moved(
        identity_with_memory, memory_store, formation, db):
    identity = identity_with_memory
    alice, bob = await _two_users(identity, memory_store, formation)
    old = await identity.merge(formation, alice, bob)
    await db.execute("UPDATE merge_journal SET expires_at = $2 WHERE id = $1",
                     old.id, time.time() - 1)
    carol = await identity.resolve(formation, "carol@x.co")
    await identity.merge(formation, alice, carol)  # a later merge clears what expired
    kept = await identity.merge_record(formation, old.id)
    assert kept.parts is None and (kept.kept_user, kept.merged_user) == (alice, bob)
    assert "Paris" not in str(await db.fetch("SELECT * FROM merge_journal WHERE id = $1",
                                             old.id))
    with pytest.raises(MergeUndoRefusedError, match="window closed"):
        await identity.undo_merge(formation, old.id)


async def test_an_identifier_relinked_or_unlinked_since_blocks_the_undo_and_is_named(
        identity_with_memory, memory_store, formation):
    identity = identity_with_memory
    alice, bob = await _two_users(identity, memory_store, formation)
    carol = await identity.resolve(formation, "carol@x.co")
    merged = await identity.merge(formation, alice, bob)
    await identity.unlink(formation, "tg_4242")
    await identity.associate(formation, ["tg_4242"], carol)
    with pytest.raises(MergeUndoRefusedError) as info:
        await identity.undo_merge(formation, merged.id)
    assert info.value.reason == "identifier_changed"
    assert "tg_4242" in str(info.value) and carol in str(info.value)
    await identity.unlink(formation, "tg_4242")
    with pytest.raises(MergeUndoRefusedError, match="tg_4242.*no longer linked"):
        await identity.undo_merge(formation, merged.id)
    # Nothing of the undo happened.
    assert await identity.resolve(formation, "bob@x.co", create=False) == alice
    assert not await identity.store.user_exists(formation, bob)


async def test_a_kept_user_merged_away_since_blocks_the_undo_until_that_is_undone(
        identity_with_memory, memory_store, formation):
    identity = identity_with_memory
    alice, bob = await _two_users(identity, memory_store, formation)
    dave = await identity.resolve(formation, "dave@x.co")
    first = await identity.merge(formation, alice, bob)
    second = await identity.merge(formation, dave, alice)
    with pytest.raises(MergeUndoRefusedError) as info:
        await identity.undo_merge(formation, first.id)
    assert info.value.reason == "kept_user_gone" and second.id in str(info.value)
    await identity.undo_merge(formation, second.id)
    await identity.undo_merge(formation, first.id)
    assert await identity.resolve(formation, "bob@x.co", create=False) == bob
    assert await identity.resolve(formation, "alice@x.co", create=False) == alice
    assert (await memory_store.users.get_fact(bob, "color")).value == "red"


async def test_unknown_merges_and_merges_of_other_formations_are_not_found(
        identity_with_memory, memory_store, formation):
    identity = identity_with_memory
    alice, bob = await _two_users(identity, memory_store, formation)
    merged = await identity.merge(formation, alice, bob)
    for formation_id, merge_id in ((formation, "mrg_nope"), (formation + "b", merged.id),
                                   (formation, "not a merge id\x00")):
        with pytest.raises(MergeNotFoundError):
            await identity.undo_merge(formation_id, merge_id)
    assert (await identity.merge_record(formation, merged.id)).kept_user == alice


async def test_a_merge_by_link_code_is_journaled_and_can_be_undone(engine, formation):
    from adapters.inmemory import InMemoryChannel

    slack, telegram = InMemoryChannel(engine, "slack"), InMemoryChannel(engine, "telegram")
    alice = (await slack.push(("U1", "slack"), "my budget is $5,000")).user_id
    newcomer = (await telegram.push(("789", "telegram"), "my color is blue")).user_id
    code = (await slack.push(("U1", "slack"), "/link")).text.split("send /link ")[1].split()[0]
    await telegram.push(("789", "telegram"), f"/link {code}")
    journal = await engine.identity.store.merges_of(formation, alice)
    assert [(m.merged_user, m.actor) for m in journal] == [(newcomer, "channel:telegram")]
    await engine.identity.undo_merge(formation, journal[0].id)
    assert (await telegram.push("tg_789", "what's my color?")).user_id == newcomer


# ---------------------------------------------------------------- the HTTP API


async def test_merge_preview_merge_and_undo_over_http(server):
    url, runtime = server
    fid = runtime.settings.formation_id
    alice, bob = await _two_users(runtime.identity, runtime.memory, fid)
    admin = {"X-Muxi-Admin-Key": ADMIN}
    async with httpx.AsyncClient(base_url=url + "/v1", headers=admin) as http:
        before = await _tables(runtime.db)
        r = await http.post(f"/users/{alice}/merge", json={"from": bob, "dry_run": True})
        assert r.status_code == 200, r.text
        preview = r.json()["data"]
        assert await _tables(runtime.db) == before
        assert preview["dry_run"] is True and preview["merge_id"] is None
        assert (preview["kept_user"], preview["merged_user"]) == (alice, bob)
        assert {i["identifier"] for i in preview["identifiers"]} == {
            "bob@x.co", "tg_4242", "bob-7"}
        assert preview["moves"]["memories"] == 2 and preview["moves"]["sessions"] == 1
        assert preview["fact_collisions"] == [{"kind": "fact", "key": "color",
                                               "kept_value": "teal", "merged_value": "red",
                                               "winner": "kept"}]

        r = await http.post(f"/users/{alice}/merge", json={"from": bob})
        assert r.status_code == 201, r.text
        done = r.json()["data"]
        merge_id = done["merge_id"]
        assert merge_id.startswith("mrg_") and done["dry_run"] is False
        assert done["at"].endswith("Z") and done["expires_at"].endswith("Z")
        assert done["undone_at"] is None and done["undo"] == f"POST /v1/merges/{merge_id}/undo"
        assert all(i["created_at"].endswith("Z") for i in done["identifiers"])
        shown = (await http.get(f"/merges/{merge_id}")).json()["data"]
        assert shown["merge_id"] == merge_id and shown["actor"] == "admin_key"
        assert await runtime.identity.resolve(fid, "tg_4242", create=False) == alice

        r = await http.post(f"/merges/{merge_id}/undo")
        assert r.status_code == 200, r.text
        assert r.json()["data"]["undone_at"].endswith("Z")
        assert await runtime.identity.resolve(fid, "tg_4242", create=False) == bob
        again = await http.post(f"/merges/{merge_id}/undo")
        assert again.status_code == 409 and again.json()["code"] == "MERGE_ALREADY_UNDONE"
        assert again.json()["details"]["merge_id"] == merge_id


async def test_merge_errors_over_http(server):
    url, runtime = server
    fid = runtime.settings.formation_id
    alice, bob = await _two_users(runtime.identity, runtime.memory, fid)
    admin = {"X-Muxi-Admin-Key": ADMIN}
    async with httpx.AsyncClient(base_url=url + "/v1") as http:

        async def post(path: str, json: dict | None = None, headers=admin) -> httpx.Response:
            return await http.post(path, json=json, headers=headers)

        r = await post(f"/users/{alice}/merge", {"from": alice})
        assert r.status_code == 422 and r.json()["code"] == "INVALID_PARAMS"
        r = await post(f"/users/{alice}/merge", {"from": "usr_nobody"})
        assert r.status_code == 404 and r.json()["code"] == "USER_NOT_FOUND"
        assert "usr_nobody" in r.json()["message"]
        r = await post("/users/usr_nobody/merge", {"from": bob})
        assert r.status_code == 404 and r.json()["details"]["user_id"] == "usr_nobody"
        r = await post(f"/users/{alice}/merge", {"from": "bob@x.co"})
        assert r.status_code == 422 and r.json()["details"]["errors"][0]["field"] == "from"
        r = await post(f"/users/{alice}/merge", {})
        assert r.status_code == 422 and "from" in r.json()["message"]
        r = await post("/merges/mrg_nope/undo")
        assert r.status_code == 404 and r.json()["code"] == "MERGE_NOT_FOUND"
        r = await http.get("/merges/mrg_nope", headers=admin)
        assert r.status_code == 404 and r.json()["code"] == "MERGE_NOT_FOUND"
        r = await post(f"/users/{alice}/merge", {"from": bob},
                       headers={"X-Muxi-Client-Key": CLIENT})
        assert r.status_code == 403 and r.json()["code"] == "FORBIDDEN"

        merge_id = (await post(f"/users/{alice}/merge", {"from": bob})).json()["data"][
            "merge_id"]
        await runtime.identity.unlink(fid, "tg_4242")
        r = await post(f"/merges/{merge_id}/undo")
        assert r.status_code == 409 and r.json()["code"] == "MERGE_IDENTIFIER_CHANGED"
        assert r.json()["details"]["identifier"] == "tg_4242"
        assert r.json()["details"]["owner_id"] is None
        await runtime.identity.associate(fid, ["tg_4242"], alice)
        checked = await post(f"/merges/{merge_id}/undo", {"dry_run": True})
        assert checked.status_code == 200 and checked.json()["data"]["dry_run"] is True
        assert await runtime.identity.resolve(fid, "bob@x.co", create=False) == alice
        await runtime.db.execute("UPDATE merge_journal SET expires_at = 1 WHERE id = $1",
                                 merge_id)
        r = await post(f"/merges/{merge_id}/undo")
        assert r.status_code == 409 and r.json()["code"] == "MERGE_EXPIRED"
        assert r.json()["details"]["expired_at"] == "1970-01-01T00:00:01.000000Z"


async def test_the_retention_window_is_a_setting(database_url, tmp_path, formation):
    from config.settings import load_settings
    from gateway.runtime.wiring import Runtime

    settings = load_settings({
        "THREADLINE_DATABASE_URL": database_url, "THREADLINE_DATA_DIR": str(tmp_path),
        "THREADLINE_FORMATION_ID": formation, "THREADLINE_MERGE_RETENTION_DAYS": "2"})
    runtime = await Runtime.open(settings)
    try:
        keep = await runtime.identity.resolve(formation, "keep@x.co")
        gone = await runtime.identity.resolve(formation, "gone@x.co")
        merged = await runtime.identity.merge(formation, keep, gone)
        assert merged.expires_at - merged.at == pytest.approx(2 * 86400)
    finally:
        await runtime.close()


# ---------------------------------------------------------------- the command line


@pytest.fixture
def cli(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    env["THREADLINE_DATA_DIR"] = str(tmp_path / "data")

    def run(*args: str, answer: str | None = None) -> subprocess.CompletedProcess:
        """Without `answer`, stdin is no terminal; with it, a terminal that types it."""
        if answer is None:
            return subprocess.run([THREADLINE, *args], cwd=tmp_path, env=env, text=True,
                                  capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        terminal, typing = pty.openpty()
        try:
            process = subprocess.Popen([THREADLINE, *args], cwd=tmp_path, env=env, text=True,
                                       stdin=typing, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE)
            os.write(terminal, answer.encode() + b"\n")
            out, err = process.communicate(timeout=60)
            while select.select([terminal], [], [], 0)[0]:  # the echo of what was typed
                os.read(terminal, 4096)
        finally:
            os.close(terminal)
            os.close(typing)
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    return run


def test_cli_merge_previews_asks_and_prints_how_to_undo(cli):
    alice = cli("users", "link", "alice@x.co", "slack:UALICE1").stdout.split()[0]
    bob = cli("users", "link", "bob@x.co", "tg_4242").stdout.split()[0]

    no_tty = cli("users", "merge", "alice@x.co", "tg_4242")
    assert no_tty.returncode == 1 and "--yes" in no_tty.stderr
    assert "Traceback" not in no_tty.stderr
    declined = cli("users", "merge", "alice@x.co", "tg_4242", answer="n")
    assert declined.returncode == 1 and "nothing changed" in declined.stderr.lower()
    assert "bob@x.co" in declined.stdout and "tg_4242" in declined.stdout  # the preview
    assert cli("users", "resolve", "tg_4242").stdout.strip() == bob

    merged = cli("users", "merge", "alice@x.co", "tg_4242", answer="y")
    assert merged.returncode == 0, merged.stderr
    assert f"merge {bob} into {alice}" in merged.stdout.replace("\n", " ")
    merge_id = next(w for w in merged.stdout.split() if w.startswith("mrg_"))
    assert f"threadline users undo-merge {merge_id}" in merged.stdout
    assert cli("users", "resolve", "tg_4242").stdout.strip() == alice

    refused = cli("users", "undo-merge", merge_id)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    undone = cli("users", "undo-merge", merge_id, answer="y")
    assert undone.returncode == 0, undone.stderr
    assert bob in undone.stdout and "tg_4242" in undone.stdout
    assert cli("users", "resolve", "tg_4242").stdout.strip() == bob
    twice = cli("users", "undo-merge", merge_id, "--yes")
    assert twice.returncode == 1 and "already undone" in twice.stderr


def test_cli_merge_with_yes_takes_user_ids_and_refuses_unknown_ones(cli):
    alice = cli("users", "link", "alice@x.co").stdout.split()[0]
    bob = cli("users", "link", "bob@x.co").stdout.split()[0]
    unknown = cli("users", "merge", alice, "ghost@x.co", "--yes")
    assert unknown.returncode == 1 and "no user has identifier ghost@x.co" in unknown.stderr
    itself = cli("users", "merge", alice, "alice@x.co", "--yes")
    assert itself.returncode == 1 and "itself" in itself.stderr
    merged = cli("users", "merge", alice, bob, "--yes")
    assert merged.returncode == 0, merged.stderr
    assert cli("users", "resolve", "bob@x.co").stdout.strip() == alice


def test_cli_merge_help_says_what_it_does(cli):
    merge_help = cli("users", "merge", "--help").stdout
    for words in ("preview", "--yes", "undo-merge", "identifier"):
        assert words in merge_help, words
    undo_help = cli("users", "undo-merge", "--help").stdout
    assert "days" in undo_help and "--yes" in undo_help
