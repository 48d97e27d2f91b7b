"""Operators' user lifecycle over HTTP: list and search users, export one, erase one
everywhere (checked by scanning every table of the database)."""

import hashlib
import uuid

import httpx

from tests.conftest import ADMIN, CLIENT

ADMIN_HEADERS = {"X-Muxi-Admin-Key": ADMIN}


def as_user(user: str) -> dict[str, str]:
    return {"X-Muxi-Client-Key": CLIENT, "X-Muxi-User-ID": user}


async def every_row(runtime) -> list[tuple[str, str]]:
    """(table, the row as text) for every row of every table in the database."""
    db = runtime.db
    if db.dialect == "postgres":
        tables = [r[0] for r in await db.fetch(
            "SELECT table_name FROM information_schema.tables"
            " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")]
    else:
        tables = [r[0] for r in await db.fetch(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
    rows = []
    for table in tables:
        for row in await db.fetch(f'SELECT * FROM "{table}"'):
            rows.append((table, " | ".join(
                bytes(v).decode("latin-1") if isinstance(v, bytes | memoryview) else str(v)
                for v in row)))
    return rows


async def test_export_then_erase_leaves_no_row_mentioning_the_user(server):
    url, runtime = server
    tag = uuid.uuid4().hex[:8]
    email, slack, telegram = f"erin-{tag}@acme.com", f"U{tag.upper()}ERIN", f"tg_{tag}77"
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        for text in ("My budget is $5,317", "remember that my cat is called Quorra",
                     "remind me in 2 hours to call the vet"):
            said = await http.post("/chat", json={"message": text}, headers=as_user(email))
            assert said.status_code == 200, said.text
        user = said.json()["data"]["user_id"]
        linked = await http.post("/users/identifiers", headers=ADMIN_HEADERS, json={
            "muxi_user_id": user, "identifiers": [{"identifier": slack, "type": "slack"}]})
        assert linked.status_code == 201, linked.text
        # The third identifier came with a user of its own, merged in (journaled).
        other_self = (await http.post("/chat", json={"message": "remember that I sail"},
                                      headers=as_user(telegram))).json()["data"]["user_id"]
        merged = await http.post(f"/users/{user}/merge", headers=ADMIN_HEADERS,
                                 json={"from": other_self})
        assert merged.status_code == 201, merged.text
        await http.post("/chat", json={"message": "what's my budget?"},
                        headers=as_user(slack))
        stored = await http.post("/credentials", headers=as_user(email), json={
            "service": "github", "name": "work", "credential": {"token": f"ghp_{tag}SECRET"}})
        assert stored.status_code == 201, stored.text
        # A Slack message kept in the inbox, not answered yet, names them too.
        from gateway.conversation.messages import InboundMessage
        assert await runtime.engine.accept(InboundMessage(
            channel="slack", identifier=(slack, "slack"), conversation="D1",
            text="is my cat Quorra fed?", message_id=f"Ev{tag}"))
        other = (await http.post("/chat", json={"message": "my budget is $12"},
                                 headers=as_user(f"olga-{tag}@acme.com"))).json()["data"]

        exported = await http.get(f"/users/{user}/export", headers=ADMIN_HEADERS)
        assert exported.status_code == 200, exported.text
        doc = exported.json()["data"]
        assert {i["identifier"] for i in doc["identifiers"]} == {email, slack, telegram}
        assert {(f["key"], f["value"]) for f in doc["facts"]} >= {("budget", "$5,317")}
        assert [m["content"] for m in doc["memories"]] == ["my cat is called Quorra", "I sail"]
        assert [t["message"] for t in doc["scheduled_tasks"]] == ["call the vet"]
        said_texts = [m["content"] for s in doc["sessions"] for m in s["messages"]]
        assert "My budget is $5,317" in said_texts and "what's my budget?" in said_texts
        assert [(c["service"], c["name"]) for c in doc["credentials"]] == [("github", "work")]
        assert "SECRET" not in exported.text  # credential metadata only, never the secret
        assert {e["action"] for e in doc["audit"]} >= {"link", "export"}
        assert doc["memories"][0]["created_at"].endswith("Z")  # ISO 8601 UTC

        mentions = [user, other_self, email, slack, telegram, "5,317", "Quorra", "call the vet",
                    "I sail"]
        before = [m for m in mentions if any(m in text for _, text in await every_row(runtime))]
        assert before == mentions  # the scan finds each of them while the user exists

        erased = await http.delete(f"/users/{user}", headers=ADMIN_HEADERS)
        assert erased.status_code == 200, erased.text
        result = erased.json()["data"]
        assert result["removed"]["identifiers"] == 3 and result["removed"]["memories"] == 2
        assert result["removed"]["merge_journal_entries"] == 1
        assert result["removed"]["inbox_messages"] == 1
        assert result["user_ref"] == "sha256:" + hashlib.sha256(user.encode()).hexdigest()[:32]

        left = [(table, m) for table, text in await every_row(runtime) for m in mentions
                if m in text]
        assert left == []
        assert any(other["user_id"] in text for _, text in await every_row(runtime))
        for ident in (email, slack, telegram):
            assert await runtime.identity.resolve(runtime.settings.formation_id, ident,
                                                  create=False) is None
        gone = await http.get(f"/users/{user}/export", headers=ADMIN_HEADERS)
        assert gone.status_code == 404 and gone.json()["code"] == "USER_NOT_FOUND"
        again = await http.delete(f"/users/{user}", headers=ADMIN_HEADERS)
        assert again.status_code == 404

        audit = (await http.get("/audit", headers=ADMIN_HEADERS)).json()["data"]["entries"]
        erasure = [e for e in audit if e["action"] == "erase"]
        assert len(erasure) == 1 and erasure[0]["user_id"] is None
        assert erasure[0]["after"]["user_ref"] == result["user_ref"]
        # The older records stay, blanked: what happened and when, not to whom.
        assert any(e["action"] == "link" and e["identifier"] is None for e in audit)
        # The person writing again is a stranger: a new user, nothing remembered.
        asked = (await http.post("/chat", json={"message": "what's my budget?"},
                                 headers=as_user(email))).json()["data"]
        assert asked["user_id"] != user and "5,317" not in asked["message"]["content"]


async def test_the_audit_log_refuses_any_change_but_an_erasure_blanking(server):
    url, runtime = server
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        await http.post("/users/identifiers", headers=ADMIN_HEADERS,
                        json={"identifiers": ["audit-me@x.co"]})
    db = runtime.db
    entry = await db.fetchval("SELECT max(id) FROM audit_log")
    for sql in ("UPDATE audit_log SET actor = 'someone else' WHERE id = $1",
                "UPDATE audit_log SET user_id = NULL WHERE id = $1",
                "DELETE FROM audit_log WHERE id = $1"):
        try:
            await db.execute(sql, entry)
        except Exception as exc:  # noqa: BLE001 - each driver names it differently
            assert "append-only" in str(exc)
        else:
            raise AssertionError(f"the audit log allowed: {sql}")


async def test_users_are_listed_searched_and_paged(server):
    url, _ = server
    tag = uuid.uuid4().hex[:6].upper()
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        made = []
        for n in range(5):
            r = await http.post("/users/identifiers", headers=ADMIN_HEADERS, json={
                "identifiers": [f"p{tag}-{n}@x.co", {"identifier": f"U{tag}{n}", "type": "slack"}]})
            assert r.status_code == 201, r.text
            made.append(r.json()["data"]["muxi_user_id"])
        await http.post("/users/identifiers", headers=ADMIN_HEADERS,
                        json={"identifiers": [f"tg_{tag}9"]})

        seen, cursor = [], None
        while True:
            params = {"q": f"p{tag}-", "limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await http.get("/users", params=params, headers=ADMIN_HEADERS)).json()
            seen += [u["user_id"] for u in page["data"]["users"]]
            cursor = page["data"]["next_cursor"]
            if cursor is None:
                break
        assert seen == made  # creation order, each once, across three pages

        slack = (await http.get("/users", params={"type": "slack", "q": f"U{tag}3"},
                                headers=ADMIN_HEADERS)).json()["data"]["users"]
        assert [u["user_id"] for u in slack] == [made[3]]
        assert {i["identifier"] for i in slack[0]["identifiers"]} == {f"p{tag.lower()}-3@x.co",
                                                                     f"U{tag}3"}
        assert slack[0]["created_at"].endswith("Z")
        future = (await http.get("/users", params={"since": "2999-01-01T00:00:00Z"},
                                 headers=ADMIN_HEADERS)).json()["data"]
        assert future["users"] == [] and future["next_cursor"] is None
        recent = (await http.get("/users", params={"since": "2000-01-01", "q": f"p{tag}-"},
                                 headers=ADMIN_HEADERS)).json()["data"]["users"]
        assert len(recent) == 5

        bad = await http.get("/users", params={"cursor": "nonsense!"}, headers=ADMIN_HEADERS)
        assert bad.status_code == 422 and "cursor" in bad.json()["message"]
        bad = await http.get("/users", params={"since": "yesterday"}, headers=ADMIN_HEADERS)
        assert bad.status_code == 422 and "since" in bad.json()["message"]
        client = await http.get("/users", headers={"X-Muxi-Client-Key": CLIENT})
        assert client.status_code == 403


def test_the_cli_lists_exports_and_erases_with_confirmation(tmp_path):
    import json
    import os
    import subprocess

    from tests.test_cli import THREADLINE

    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    env["THREADLINE_DATA_DIR"] = str(tmp_path / "data")

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([THREADLINE, *args], cwd=tmp_path, env=env, text=True,
                              input=stdin, capture_output=True, timeout=60)

    user = run("users", "link", "ada@x.co", "slack:U0ADA").stdout.split()[0]
    run("users", "link", "bo@x.co")
    listed = run("users", "list", "--search", "ada")
    assert listed.returncode == 0 and user in listed.stdout and "bo@x.co" not in listed.stdout
    paged = run("users", "list", "--limit", "1")
    assert "more: --cursor " in paged.stdout
    cursor = paged.stdout.split("more: --cursor ")[1].split()[0]
    assert "bo@x.co" in run("users", "list", "--limit", "1", "--cursor", cursor).stdout

    exported = run("users", "export", "slack:U0ADA", "-o", str(tmp_path / "ada.json"))
    assert exported.returncode == 0, exported.stderr
    document = json.loads((tmp_path / "ada.json").read_text())
    assert document["user_id"] == user
    assert {i["identifier"] for i in document["identifiers"]} == {"ada@x.co", "U0ADA"}

    refused = run("users", "erase", "ada@x.co")  # no terminal to confirm on
    assert refused.returncode == 1 and "--yes" in refused.stderr
    assert run("users", "resolve", "ada@x.co").stdout.strip() == user  # still there
    erased = run("users", "erase", "ada@x.co", "--yes")
    assert erased.returncode == 0 and f"erased {user}" in erased.stdout
    assert "identifiers: 2" in erased.stdout
    assert run("users", "resolve", "ada@x.co").returncode == 1
    assert run("users", "show", user).returncode == 1
    logged = json.loads(run("audit", "--json").stdout)
    assert [e["action"] for e in logged][:2] == ["erase", "export"]
    assert logged[0]["actor"] == "cli" and logged[0]["user_id"] is None
    assert "ada@x.co" not in json.dumps(logged)  # blanked by the erasure
    assert "erase" in run("audit", "--limit", "3").stdout
