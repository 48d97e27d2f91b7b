"""`threadline serve` and `threadline doctor` as a person runs them."""

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

THREADLINE = str(Path(sys.executable).parent / "threadline")


def _read_until(stream, marker: str, seconds: float) -> str:
    """What a process wrote until `marker` (its start-up summary ends "Press Ctrl+C"), or
    until it stopped writing or `seconds` passed."""
    seen, deadline = "", time.monotonic() + seconds
    while marker not in seen and time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            break
        seen += line
    return seen


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    env.update({"THREADLINE_DATA_DIR": str(tmp_path / "data"), "THREADLINE_LOG_FORMAT": "json"})
    env.update(extra)
    return env


def test_serve_starts_with_no_configuration_answers_and_stops_on_sigterm(tmp_path):
    proc = subprocess.Popen([THREADLINE, "serve", "--port", "0"], cwd=tmp_path,
                            env=_env(tmp_path), stderr=subprocess.PIPE, text=True)
    try:
        seen = _read_until(proc.stderr, "Press Ctrl+C", 30)
        match = re.search(r"is up on (http://127\.0\.0\.1:\d+)", seen)
        assert match, seen
        assert "sqlite" in seen and "X-Muxi-Client-Key: tlc_" in seen
        client_key = re.search(r"X-Muxi-Client-Key: (\S+)", seen).group(1)
        with httpx.Client(base_url=match.group(1)) as http:
            assert http.get("/v1/health").json()["data"]["status"] == "healthy"
            reply = http.post("/v1/chat", json={"message": "my budget is $5,000"},
                              headers={"X-Muxi-Client-Key": client_key,
                                       "X-Muxi-User-ID": "user_123"})
            assert "$5,000" in reply.json()["data"]["message"]["content"]
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=20) == 0
        assert '"stopped"' in rest
    finally:
        if proc.poll() is None:
            proc.kill()


def test_doctor_reports_problems_with_fixes(tmp_path):
    bad = subprocess.run([THREADLINE, "doctor"], cwd=tmp_path, text=True, capture_output=True,
                         env=_env(tmp_path, THREADLINE_DATABASE_URL="postgresql://nobody@127.0.0.1:1/x"),
                         timeout=60)
    assert bad.returncode == 1
    assert "✗ database" in bad.stdout and "THREADLINE_DATABASE_URL" in bad.stdout
    fresh = subprocess.run([THREADLINE, "doctor"], cwd=tmp_path, text=True, capture_output=True,
                           env=_env(tmp_path), timeout=60)
    assert "pending; run: threadline migrate" in fresh.stdout and fresh.returncode == 1
    subprocess.run([THREADLINE, "migrate"], cwd=tmp_path, env=_env(tmp_path), check=True,
                   capture_output=True, timeout=60)
    good = subprocess.run([THREADLINE, "doctor"], cwd=tmp_path, text=True, capture_output=True,
                          env=_env(tmp_path), timeout=60)
    assert good.returncode == 0, good.stdout
    assert "all checks passed" in good.stdout


def test_a_misconfigured_channel_is_reported_by_doctor(tmp_path):
    (tmp_path / "formation.yaml").write_text("channels:\n  carrier_pigeon: {}\n")
    subprocess.run([THREADLINE, "migrate"], cwd=tmp_path, env=_env(tmp_path), check=True,
                   capture_output=True, timeout=60)
    out = subprocess.run([THREADLINE, "doctor"], cwd=tmp_path, text=True, capture_output=True,
                         env=_env(tmp_path), timeout=60)
    assert out.returncode == 1 and "no channel named 'carrier_pigeon'" in out.stdout


def test_a_reminder_set_in_threadline_chat_arrives_there_once(tmp_path):
    chat = subprocess.Popen([THREADLINE, "chat", "cli-user@example.com"], cwd=tmp_path,
                            env=_env(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert chat.stdin is not None
        chat.stdin.write("remind me in 2 seconds to stretch\n")
        chat.stdin.flush()
        # The reminder fires while the chat is open (waited for: a busy machine is slow),
        # and only once (nothing more in the seconds after).
        seen = _read_until(chat.stdout, "Reminder: stretch", 60)
        time.sleep(3)
        out, err = chat.communicate("", timeout=30)
        out = seen + out
    finally:
        chat.kill()
    assert chat.returncode == 0, err
    assert "OK, I'll remind you to stretch" in out
    assert out.count("⏰ Reminder: stretch") == 1, out


def test_the_systemd_unit_migrates_before_serving_and_never_gates_on_channels():
    unit = (Path(__file__).parent.parent / "deploy" / "threadline.service").read_text()
    lines = [line.strip() for line in unit.splitlines() if not line.startswith("#")]
    pre = [line for line in lines if line.startswith("ExecStartPre=")]
    assert pre == ["ExecStartPre=/srv/threadline/.venv/bin/threadline migrate"]
    assert "ExecStart=/srv/threadline/.venv/bin/threadline serve" in lines
    assert not any("doctor" in line for line in lines)


def test_migrate_on_a_fresh_install_succeeds_then_finds_nothing_pending(tmp_path):
    first = subprocess.run([THREADLINE, "migrate"], cwd=tmp_path, env=_env(tmp_path),
                           text=True, capture_output=True, timeout=60)
    assert first.returncode == 0, first.stderr
    again = subprocess.run([THREADLINE, "migrate", "--check"], cwd=tmp_path, env=_env(tmp_path),
                           text=True, capture_output=True, timeout=60)
    assert again.returncode == 0, again.stdout + again.stderr


def test_one_serve_per_sqlite_file_and_the_cli_beside_it_is_seen_at_once(tmp_path):
    env = _env(tmp_path)
    proc = subprocess.Popen([THREADLINE, "serve", "--port", "0"], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = _read_until(proc.stderr, "Press Ctrl+C", 30)
        base = re.search(r"is up on (http://127\.0\.0\.1:\d+)", seen).group(1)
        admin = {"X-Muxi-Admin-Key": re.search(r"X-Muxi-Admin-Key: +(\S+)", seen).group(1)}

        second = subprocess.run([THREADLINE, "serve", "--port", "0"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert f"already served by pid {proc.pid}" in second.stderr
        assert "PostgreSQL" in second.stderr and "Traceback" not in second.stderr

        with httpx.Client(base_url=base + "/v1", headers=admin) as http:
            def owner() -> int:
                return http.post("/users/resolve", json={"identifier": "side@x.co",
                                                         "create_user": False}).status_code
            linked = subprocess.run([THREADLINE, "users", "link", "side@x.co"], cwd=tmp_path,
                                    env=env, capture_output=True, text=True, timeout=60)
            assert linked.returncode == 0, linked.stderr
            assert owner() == 200  # now cached in the serving process
            unlinked = subprocess.run([THREADLINE, "users", "unlink", "side@x.co"],
                                      cwd=tmp_path, env=env, capture_output=True, text=True,
                                      timeout=60)
            assert unlinked.returncode == 0, unlinked.stderr
            deadline = time.monotonic() + 5
            while owner() != 404:
                assert time.monotonic() < deadline, "the serving process kept its stale entry"
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def test_serve_with_workers_shares_the_port_restarts_a_dead_worker_and_stops_cleanly(
        tmp_path, postgres_url):
    env = _env(tmp_path, THREADLINE_DATABASE_URL=postgres_url)
    assert subprocess.run([THREADLINE, "migrate"], env=env, cwd=tmp_path,
                          capture_output=True, timeout=120).returncode == 0
    proc = subprocess.Popen([THREADLINE, "serve", "--port", "0", "--workers", "2"],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        seen = _read_until(proc.stderr, "Press Ctrl+C", 60)
        assert "workers    2 processes" in seen, seen
        base = re.search(r"is up on (http://127\.0\.0\.1:\d+)", seen).group(1)
        workers = _children(proc.pid)
        assert len(workers) == 2
        with httpx.Client(base_url=base + "/v1") as http:
            assert all(http.get("/health").status_code == 200 for _ in range(20))
            os.kill(sorted(workers)[0], signal.SIGKILL)
            # New connections (one kept alive to the dead worker is reset, as it would be)
            # are answered by the other one meanwhile.
            assert all(httpx.get(base + "/v1/health").status_code == 200 for _ in range(10))
            deadline = time.monotonic() + 20
            while len(_children(proc.pid) - workers) < 1:
                assert time.monotonic() < deadline, "the dead worker was not started again"
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=30) == 0, rest
        assert _children(proc.pid) == set()
    finally:
        if proc.poll() is None:
            proc.kill()  # its workers end with it (they ask the kernel for that)


def test_workers_end_when_their_parent_is_killed_outright(tmp_path, postgres_url):
    env = _env(tmp_path, THREADLINE_DATABASE_URL=postgres_url)
    proc = subprocess.Popen([THREADLINE, "serve", "--port", "0", "--workers", "2"],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    try:
        seen = _read_until(proc.stderr, "Press Ctrl+C", 60)
        workers = _children(proc.pid)
        assert len(workers) == 2, seen
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 20
    while any(_running(pid) for pid in workers):
        assert time.monotonic() < deadline, "workers served on as orphans"
        time.sleep(0.1)


def test_workers_on_sqlite_are_refused_with_the_reason(tmp_path):
    refused = subprocess.run([THREADLINE, "serve", "--workers", "2"], cwd=tmp_path,
                             env=_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "needs PostgreSQL" in refused.stderr and "Traceback" not in refused.stderr


# --- slow clients and the connection cap --------------------------------------------------

class Served:
    """`threadline serve` in a subprocess, on a free port, with extra settings."""

    def __init__(self, tmp_path: Path, **settings: str) -> None:
        self.proc = subprocess.Popen([THREADLINE, "serve", "--port", "0"], cwd=tmp_path,
                                     env=_env(tmp_path, **settings), stderr=subprocess.PIPE,
                                     text=True)
        seen = _read_until(self.proc.stderr, "Press Ctrl+C", 30)
        match = re.search(r"is up on http://127\.0\.0\.1:(\d+)", seen)
        assert match, seen
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            rest = self.proc.stderr.read()
            self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return rest


async def _slowloris(port: int, interval: float, give_up: float, *,
                     kept_alive: bool = False) -> tuple[float, bytes]:
    """Open a connection and send a request's headers a byte at a time, never finishing;
    returns when the server closed it (seconds after it started trickling) and what it
    said. `kept_alive`: after one complete request on the same connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if kept_alive:
        writer.write(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
        await reader.readexactly(length)
    started = time.monotonic()
    writer.write(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    said = b""
    try:
        while time.monotonic() - started < give_up:
            try:
                chunk = await asyncio.wait_for(reader.read(1024), interval)
            except TimeoutError:
                writer.write(b"z")  # another byte: enough to reset an idle timer
                continue
            if not chunk:
                return time.monotonic() - started, said
            said += chunk
        return float("inf"), said
    except ConnectionResetError:
        return time.monotonic() - started, said
    finally:
        writer.close()


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def test_slow_clients_are_closed_after_the_header_timeout_while_others_are_served(
        tmp_path):
    served = Served(tmp_path, THREADLINE_HEADER_TIMEOUT="1")
    try:  # 300 clients, 20 of them after a first request on the same connection
        slow = [asyncio.create_task(_slowloris(served.port, 0.2, give_up=20, kept_alive=i < 20))
                for i in range(300)]
        await asyncio.sleep(0.5)
        async with httpx.AsyncClient(base_url=served.url) as http:
            assert (await http.get("/v1/health")).status_code == 200  # served meanwhile
            closed = await asyncio.gather(*slow)
            metrics = (await http.get("/metrics")).text
    finally:
        served.stop()
    after = sorted(seconds for seconds, _ in closed)
    # 1 s, and time for 300 connections at once on a busy two-core machine; without the
    # timeout they stay open until the clients give up.
    assert after[-1] < 8.0, after[-5:]
    assert after[0] >= 0.5  # not before the timeout (the client may see it a little late)
    assert all(said.startswith(b"HTTP/1.1 408 ") for _, said in closed)
    assert _metric(metrics, "threadline_http_header_timeouts_total") == 300
    print(f"\n300 slow clients closed {after[0]:.2f}-{after[-1]:.2f} s after connecting "
          "(header timeout 1 s)")


async def test_connections_over_the_cap_are_refused_at_once_with_503(tmp_path):
    served = Served(tmp_path, THREADLINE_MAX_CONNECTIONS="50", THREADLINE_HEADER_TIMEOUT="2")
    idle = []
    try:
        for _ in range(50):  # connected, saying nothing: each holds a slot for 2 s
            idle.append(await asyncio.open_connection("127.0.0.1", served.port))
        await asyncio.sleep(0.2)
        refused = []
        for _ in range(10):
            started = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
            said = await asyncio.wait_for(reader.read(), 2)
            refused.append((time.monotonic() - started, said))
            writer.close()
        for _, writer in idle:
            writer.close()
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=served.url) as http:
            assert (await http.get("/v1/health")).status_code == 200  # a slot is free again
            metrics = (await http.get("/metrics")).text
    finally:
        served.stop()
    assert all(said.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in said.lower()
               for _, said in refused), refused
    assert max(seconds for seconds, _ in refused) < 0.5
    assert _metric(metrics, "threadline_http_connections_refused_total") == 10
