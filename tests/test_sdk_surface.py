"""The official MUXI SDK's memory, scheduler and admin calls against a running server, on
SQLite and PostgreSQL (the `server` fixture runs both)."""

import asyncio
import re
import time
from datetime import UTC, datetime

import httpx
import pytest
from muxi import AsyncFormationClient, FormationClient
from muxi.errors import ConflictError, NotFoundError, ValidationError

from gateway.conversation.scheduler import Scheduler
from tests.conftest import ADMIN, CLIENT

OTHER_ADMIN, OTHER_CLIENT = "other-admin-0123456789ab", "other-client-0123456789a"


@pytest.fixture(autouse=True)
def _quiet_sdk(monkeypatch):
    monkeypatch.setenv("MUXI_SDK_VERSION_NOTIFICATION", "0")


@pytest.fixture
async def sdk(server):
    url, runtime = server
    async with AsyncFormationClient(server_url=url, formation_id=runtime.settings.formation_id,
                                    admin_key=ADMIN, client_key=CLIENT) as client:
        yield client


@pytest.fixture
async def other(server):
    url, _ = server
    async with AsyncFormationClient(server_url=url, formation_id="other",
                                    admin_key=OTHER_ADMIN, client_key=OTHER_CLIENT) as client:
        yield client


async def test_clear_session_buffer_empties_one_session_of_that_user_only(sdk):
    first = await sdk.chat({"message": "hello", "session_id": "trip"}, user_id="ann@x.co")
    second = await sdk.chat({"message": "hi again", "session_id": "work"},
                            user_id="ann@x.co")
    bob = await sdk.chat({"message": "hi", "session_id": "bobs"}, user_id="bob@x.co")
    assert first["session_id"] != second["session_id"]

    cleared = await sdk.clear_session_buffer("ann@x.co", first["session_id"])
    assert cleared["cleared_messages"] == 2 and cleared["session_id"] == first["session_id"]
    assert (await sdk.get_session_messages(first["session_id"], "ann@x.co"))["count"] == 0
    assert (await sdk.get_session_messages(second["session_id"], "ann@x.co"))["count"] == 2
    with pytest.raises(NotFoundError):  # bob's session is not ann's to clear
        await sdk.clear_session_buffer("ann@x.co", bob["session_id"])
    assert (await sdk.get_session_messages(bob["session_id"], "bob@x.co"))["count"] == 2
    with pytest.raises(NotFoundError):
        await sdk.clear_session_buffer("ann@x.co", "sess_nope")


async def test_buffer_stats_count_this_formations_sessions_and_messages(sdk, other, server):
    _, runtime = server
    empty = await sdk.get_buffer_stats()
    assert (empty["sessions"], empty["total_messages"], empty["oldest_message_at"]) == (
        0, 0, None)
    before = time.time()
    for session in ("a", "b"):
        await sdk.chat({"message": "hello", "session_id": session}, user_id="cy@x.co")
    await sdk.chat({"message": "hello"}, user_id="di@x.co")
    await other.chat({"message": "elsewhere"}, user_id="cy@x.co")  # another formation

    stats = await sdk.get_buffer_stats()
    assert stats["formation_id"] == runtime.settings.formation_id
    assert (stats["sessions"], stats["active_sessions"], stats["users"]) == (3, 3, 2)
    assert stats["total_messages"] == stats["buffered_messages"] == 6
    assert stats["buffer_size"] == runtime.memory.sessions.buffer_size
    assert stats["oldest_message_at"].endswith("Z") and stats["oldest_message_at"] <= stats[
        "newest_message_at"]
    assert abs(_epoch(stats["oldest_message_at"]) - before) < 60
    await sdk.clear_user_buffer("di@x.co")
    assert (await sdk.get_buffer_stats())["total_messages"] == 4
    assert (await other.get_buffer_stats())["total_messages"] == 2


async def test_memory_config_reports_the_running_settings_and_needs_the_admin_key(
        sdk, server):
    url, runtime = server
    config = await sdk.get_memory_config()
    assert config["buffer"]["size"] == runtime.settings.session_buffer_size
    assert config["buffer"]["session_idle_timeout_seconds"] == (
        runtime.settings.session_idle_timeout)
    assert config["persistent"]["backend"] == runtime.db.dialect
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        for path in ("/memory", "/memory/stats", "/scheduler", "/audit", "/formation"):
            r = await http.get(path, headers={"X-Muxi-Client-Key": CLIENT})
            assert r.status_code == 403 and r.json()["code"] == "FORBIDDEN", path


async def test_a_paused_job_never_fires_and_fires_at_its_next_due_time_once_resumed(
        sdk, server):
    _, runtime = server
    fid = runtime.settings.formation_id
    scheduler = Scheduler(runtime.memory, runtime.channels, formation=fid)
    job = await sdk.create_scheduler_job("recurring", "every 5 minutes", "stretch", "ed@x.co")
    due = _epoch(job["next_run"])  # times are ISO 8601 UTC strings

    paused = await sdk.pause_scheduler_job(job["id"])
    assert (paused["status"], paused["paused"], paused["next_run"]) == ("paused", True, None)
    assert (await sdk.pause_scheduler_job(job["id"]))["status"] == "paused"  # a repeat: no-op
    assert (await sdk.get_scheduler_config())["jobs"] == {"paused": 1}
    await scheduler.run_once(at=due + 3600)  # long past due: a paused job stays put
    still = await sdk.get_scheduler_job(job["id"])
    assert (still["status"], still["last_run"]) == ("paused", None)
    listed = await sdk.get_scheduler_jobs("ed@x.co")
    assert [j["status"] for j in listed["jobs"]] == ["paused"]

    resumed = await sdk.resume_scheduler_job(job["id"])
    assert resumed["status"] == "scheduled" and resumed["next_run"] == job["next_run"]
    await scheduler.run_once(at=due - 1)
    assert (await sdk.get_scheduler_job(job["id"]))["last_run"] is None
    await scheduler.run_once(at=due + 1)
    fired = await sdk.get_scheduler_job(job["id"])
    assert fired["last_run"] is not None and fired["status"] == "scheduled"
    assert fired["delivered_via"] == "transcript:api:api:ed@x.co"  # nobody listening now


async def test_resuming_a_recurring_job_skips_the_runs_it_missed(sdk, server):
    _, runtime = server
    job = await sdk.create_scheduler_job("recurring", "every 1 hours", "water", "fi@x.co")
    await sdk.pause_scheduler_job(job["id"])
    later = _epoch(job["next_run"]) + 2 * 3600 + 60
    resumed = await runtime.memory.tasks.resume(runtime.settings.formation_id, job["id"],
                                                at=later)
    assert resumed.next_run == pytest.approx(later + 3600)


async def test_update_changes_schedule_message_and_title_validated_as_on_create(sdk):
    job = await sdk.create_scheduler_job("one_time", "in 10 minutes", "call mum", "gu@x.co")
    changed = await sdk.update_scheduler_job(job["id"], schedule="in 2 hours",
                                             message="call dad", title="Family")
    assert (changed["message"], changed["schedule"], changed["title"]) == (
        "call dad", "in 2 hours", "Family")
    assert _epoch(changed["next_run"]) == pytest.approx(time.time() + 7200, abs=30)
    again = await sdk.get_scheduler_job(job["id"])
    assert (again["message"], again["title"], again["next_run"]) == (
        "call dad", "Family", changed["next_run"])
    with pytest.raises(ValidationError):
        await sdk.update_scheduler_job(job["id"], schedule="whenever")
    with pytest.raises(ValidationError):
        await sdk.update_scheduler_job(job["id"], schedule="2001-01-01T00:00:00Z")
    with pytest.raises(ValidationError):
        await sdk.update_scheduler_job(job["id"])  # nothing to change
    assert (await sdk.get_scheduler_job(job["id"]))["schedule"] == "in 2 hours"

    await sdk.pause_scheduler_job(job["id"])
    kept = await sdk.update_scheduler_job(job["id"], message="call both")
    assert kept["status"] == "paused" and kept["message"] == "call both"


async def test_finished_or_unknown_jobs_and_other_formations_jobs_are_refused(sdk, other):
    job = await sdk.create_scheduler_job("one_time", "in 10 minutes", "x", "ha@x.co")
    with pytest.raises(NotFoundError):  # scoped to the caller's formation
        await other.pause_scheduler_job(job["id"])
    with pytest.raises(NotFoundError):
        await other.update_scheduler_job(job["id"], message="hijack")
    await sdk.delete_scheduler_job(job["id"])
    with pytest.raises(ConflictError) as info:
        await sdk.resume_scheduler_job(job["id"])
    assert info.value.code == "JOB_NOT_ACTIVE"
    with pytest.raises(ConflictError):
        await sdk.update_scheduler_job(job["id"], message="too late")
    with pytest.raises(NotFoundError):
        await sdk.pause_scheduler_job("job_nope")


async def test_a_paused_job_can_be_deleted(sdk):
    job = await sdk.create_scheduler_job("one_time", "in 10 minutes", "x", "ia@x.co")
    await sdk.pause_scheduler_job(job["id"])
    await sdk.delete_scheduler_job(job["id"])
    assert (await sdk.get_scheduler_job(job["id"]))["status"] == "cancelled"
    assert (await sdk.get_scheduler_jobs("ia@x.co"))["count"] == 0


async def test_scheduler_config_says_how_jobs_fire_and_counts_them(sdk, server):
    _, runtime = server
    await sdk.create_scheduler_job("one_time", "in 10 minutes", "x", "jo@x.co")
    config = await sdk.get_scheduler_config()
    assert config["running"] is False  # the test server runs no scheduler loop
    assert config["interval_seconds"] == runtime.scheduler.interval
    assert config["retry"]["max_attempts"] == runtime.scheduler.backoff.max_attempts
    assert config["jobs"] == {"scheduled": 1}


async def test_status_and_formation_info(sdk, server):
    url, runtime = server
    await sdk.resolve_user("ka@x.co", create_user=True)
    await sdk.resolve_user("lu@x.co", create_user=True)
    status = await sdk.get_status()
    assert status["status"] in ("ready", "degraded")
    assert status["components"]["database"]["status"] == "up"
    assert status["formation_id"] == runtime.settings.formation_id and status["users"] == 2
    assert status["uptime_seconds"] >= 0 and status["started_at"].endswith("Z")
    info = await sdk.get_formation_info()
    assert info["formation_id"] == runtime.settings.formation_id
    assert info["memory"]["backend"] == runtime.db.dialect
    assert "telegram" in info["identifier_types"] and info["features"]["agents"] is False

    def sync_calls() -> None:
        with FormationClient(url=url, admin_key=ADMIN, client_key=CLIENT) as sync:
            assert sync.get_status()["users"] == 2
            assert sync.get_formation_info()["id"] == runtime.settings.formation_id

    await asyncio.to_thread(sync_calls)
    async with httpx.AsyncClient(base_url=url + "/v1") as http:
        r = await http.get("/status", headers={"X-Muxi-Client-Key": CLIENT})
    assert r.status_code == 403 and r.json()["code"] == "FORBIDDEN"


@pytest.mark.parametrize(("call", "feature"), [
    (lambda c: c.get_agents(), "agents"),
    (lambda c: c.get_agent("helper"), "agents"),
    (lambda c: c.get_mcp_servers(), "MCP"),
    (lambda c: c.get_mcp_tools(), "MCP"),
    (lambda c: c.get_sops(), "SOPs"),
    (lambda c: c.get_sop("refund"), "SOPs"),
    (lambda c: c.get_triggers(), "triggers"),
    (lambda c: c.fire_trigger("deploy", {"x": 1}), "triggers"),
])
async def test_agents_mcp_sops_and_triggers_are_not_supported(sdk, call, feature):
    with pytest.raises(NotFoundError) as info:
        await call(sdk)
    assert info.value.code == "NOT_SUPPORTED" and feature in info.value.message


async def test_the_audit_log_records_link_unlink_merge_and_code_redemption(sdk, server):
    url, runtime = server
    fid = runtime.settings.formation_id
    assert (await sdk.get_audit_log())["entries"] == []
    linked = await sdk.link_user_identifier(None, ["mo@x.co", ["U77", "slack"]])
    user = linked["muxi_user_id"]
    await sdk.unlink_user_identifier("slack:U77")
    log = await sdk.get_audit_log()
    assert [(e["action"], e["identifier"], e["actor"]) for e in log["entries"]] == [
        ("unlink", "U77", "admin_key"), ("link", "U77", "admin_key"),
        ("link", "mo@x.co", "admin_key")]
    assert log["entries"][0]["before"] == {"user_id": user}
    assert log["entries"][0]["after"] == {"user_id": None}
    assert log["entries"][2]["after"] == {"user_id": user, "created_user": True}
    assert log["entries"][0]["at"].endswith("Z")

    # /link on one channel, /link CODE from another: redeemed, and the users merged.
    told = await sdk.chat({"message": "/link"}, user_id="mo@x.co")
    code = re.search(r"[A-Z0-9]{5}-[A-Z0-9]{5}", told["message"]["content"]).group(0)
    newcomer = (await sdk.chat({"message": "hi"}, user_id="tg_4242"))["user_id"]
    await sdk.chat({"message": f"/link {code}"}, user_id="tg_4242")
    recent = (await sdk.get_audit_log())["entries"][:2]
    merge_id = (await runtime.identity.store.merges_of(fid, user))[0].id  # journaled
    assert [(e["action"], e["identifier"], e["actor"], e["before"], e["after"])
            for e in recent] == [
        ("merge", "tg_4242", "channel:telegram", {"user_id": newcomer},
         {"user_id": user, "merge_id": merge_id}),
        ("link_code_redeemed", "tg_4242", "channel:telegram", {"user_id": newcomer},
         {"user_id": user})]

    other = (await sdk.resolve_user("no@x.co", create_user=True))["muxi_user_id"]
    await asyncio.sleep(0.01)
    middle = time.time()
    await asyncio.sleep(0.01)
    await runtime.identity.merge(fid, user, other, actor="cli")
    async with httpx.AsyncClient(base_url=url + "/v1",
                                 headers={"X-Muxi-Admin-Key": ADMIN}) as http:
        by_id = (await http.get("/audit", params={"identifier": "no@x.co"})).json()["data"]
        assert [(e["action"], e["actor"]) for e in by_id["entries"]] == [("merge", "cli")]
        mine = (await http.get("/audit", params={"user_id": user})).json()["data"]
        assert mine["count"] == 6 and {e["user_id"] for e in mine["entries"]} == {user}
        as_iso = datetime.fromtimestamp(middle, UTC).isoformat()
        since = (await http.get("/audit", params={"user_id": user, "since": as_iso})).json()
        until = (await http.get("/audit", params={"user_id": user, "until": middle})).json()
        assert [e["actor"] for e in since["data"]["entries"]] == ["cli"]
        assert until["data"]["count"] == 5 and "cli" not in {
            e["actor"] for e in until["data"]["entries"]}
        bad = await http.get("/audit", params={"since": "yesterday-ish"})
        assert bad.status_code == 422 and bad.json()["message"].startswith("since:")
        elsewhere = await http.get(url + "/api/other/v1/audit",
                                   headers={"X-Muxi-Admin-Key": OTHER_ADMIN})
        assert elsewhere.status_code == 200, elsewhere.text
        assert elsewhere.json()["data"]["count"] == 0


async def test_the_audit_log_is_append_only(sdk, server):
    _, runtime = server
    await sdk.link_user_identifier(None, ["pa@x.co"])
    for statement in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log"):
        with pytest.raises(Exception, match="append-only"):
            await runtime.db.execute(statement)
    assert (await sdk.get_audit_log())["entries"][0]["actor"] == "admin_key"


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
