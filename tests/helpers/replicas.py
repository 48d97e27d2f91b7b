"""`threadline serve` replicas for tests: several processes on one PostgreSQL (and Redis),
each on a port and in a data directory of its own, sharing one formation file and one set
of keys and secrets, as a deployment's replicas do. Killed with SIGKILL (a crash) or
stopped with SIGTERM (an operator).

The processes run this checkout's code (its root leads PYTHONPATH), with the test's own
environment otherwise (less THREADLINE_* settings, which are set here).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
THREADLINE = str(Path(sys.executable).parent / "threadline")
ADMIN_KEY = "tla_replicas_admin_key_0123456789"
CLIENT_KEY = "tlc_replicas_client_key_0123456789"
IDENTITY_SECRET = "replicas-identity-secret-0123456789"
CREDENTIALS_KEY = "kL3Z3fQ0m2nS4r8vYb1cD5eF7gH9iJ0kL2mN4oP6qR8="
ADMIN = {"X-Muxi-Admin-Key": ADMIN_KEY}
CLIENT = {"X-Muxi-Client-Key": CLIENT_KEY}


@dataclass
class Replica:
    name: str
    proc: asyncio.subprocess.Process
    url: str
    lines: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=3000))
    logged: int = 0  # lines written since it started
    _drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def events(self, name: str) -> list[dict[str, Any]]:
        """Its JSON log records whose event is `name`."""
        found = []
        for line in self.lines:
            if line.startswith("{") and f'"{name}"' in line:
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("event") == name:
                        found.append(record)
        return found

    def tail(self, n: int = 40) -> str:
        return "\n".join(list(self.lines)[-n:])


class Fleet:
    """Replicas started by name; `close()` stops those still running."""

    def __init__(self, home: Path, *, database_url: str, cache_url: str | None = None,
                 formation: str | None = None, channels: Mapping[str, Any] | None = None,
                 log_level: str = "info", settings: Mapping[str, str] | None = None) -> None:
        self.home = home
        self.database_url, self.cache_url = database_url, cache_url
        self.formation = formation or f"r{uuid.uuid4().hex[:10]}"
        self.log_level = log_level
        self.settings = dict(settings or {})
        self.replicas: dict[str, Replica] = {}
        self.killed: set[str] = set()  # by `kill`, on purpose
        self.formation_file: Path | None = None
        if channels:
            self.formation_file = home / "formation.yaml"
            self.formation_file.write_text(yaml.safe_dump({"channels": dict(channels)}))

    def env(self, name: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
        env.update(THREADLINE_DATA_DIR=str(self.home / name), THREADLINE_ENV="production",
                   THREADLINE_DATABASE_URL=self.database_url,
                   THREADLINE_FORMATION_ID=self.formation,
                   THREADLINE_ADMIN_KEY=ADMIN_KEY, THREADLINE_CLIENT_KEY=CLIENT_KEY,
                   THREADLINE_IDENTITY_SECRET=IDENTITY_SECRET,
                   THREADLINE_CREDENTIALS_KEY=CREDENTIALS_KEY,
                   THREADLINE_LOG_FORMAT="json", THREADLINE_LOG_LEVEL=self.log_level,
                   COLUMNS="200")  # rich would fold the start-up lines at 80
        if self.cache_url:
            env["THREADLINE_CACHE_URL"] = self.cache_url
        if self.formation_file is not None:
            env["THREADLINE_FORMATION_FILE"] = str(self.formation_file)
        env.update(self.settings)
        return env

    async def start(self, name: str, timeout: float = 60.0) -> Replica:
        """Start replica `name` and return once it accepts requests."""
        data = self.home / name
        data.mkdir(parents=True, exist_ok=True)
        proc = await asyncio.create_subprocess_exec(
            THREADLINE, "serve", "--host", "127.0.0.1", "--port", "0", cwd=data,
            env=self.env(name), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            limit=1 << 20)  # a traceback as one JSON line can be long
        assert proc.stderr is not None
        replica = Replica(name, proc, "")
        self.replicas[name] = replica
        try:
            async with asyncio.timeout(timeout):
                while not any("Press Ctrl+C" in line for line in replica.lines):
                    line = await proc.stderr.readline()
                    if not line:
                        break
                    replica.lines.append(line.decode(errors="replace").rstrip("\n"))
        except TimeoutError:
            pass
        up = re.search(r"is up on (http://127\.0\.0\.1:\d+)", "\n".join(replica.lines))
        if up is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise RuntimeError(f"replica {name} did not start:\n{replica.tail()}")
        replica.url = up.group(1)
        # Keep reading: a chatty replica would block on a full pipe.
        replica._drain = asyncio.create_task(_drain(proc.stderr, replica))
        return replica

    async def start_all(self, *names: str) -> list[Replica]:
        return list(await asyncio.gather(*(self.start(name) for name in names)))

    def running(self) -> list[Replica]:
        return [r for r in self.replicas.values() if r.running]

    async def kill(self, name: str) -> None:
        """SIGKILL: no shutdown, no lease released; its connections die with it."""
        replica = self.replicas[name]
        self.killed.add(name)
        with contextlib.suppress(ProcessLookupError):
            replica.proc.kill()
        await replica.proc.wait()

    async def stop(self, name: str, timeout: float = 30.0) -> int:
        replica = self.replicas[name]
        if replica.running:
            with contextlib.suppress(ProcessLookupError):
                replica.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(replica.proc.wait(), timeout)
            except TimeoutError:
                replica.proc.kill()
                await replica.proc.wait()
        if replica._drain is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(replica._drain, 5)
        assert replica.proc.returncode is not None
        return replica.proc.returncode

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(name) for name in list(self.replicas)),
                             return_exceptions=True)


async def _drain(stream: asyncio.StreamReader, replica: Replica) -> None:
    while line := await stream.readline():
        replica.lines.append(line.decode(errors="replace").rstrip("\n"))
        replica.logged += 1


@contextlib.asynccontextmanager
async def fresh_database(admin_url: str, prefix: str = "threadline_replicas"
                         ) -> AsyncIterator[str]:
    """A database of the caller's own on the server of `admin_url`, dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(admin_url, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield f"{admin_url.rsplit('/', 1)[0]}/{name}"
    finally:
        admin = await asyncpg.connect(admin_url, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def ready(http: httpx.AsyncClient, replica: Replica) -> dict[str, Any]:
    """The replica's readiness report (`/v1/ready`), whatever its status code."""
    answer = await http.get(f"{replica.url}/v1/ready", timeout=5)
    data: dict[str, Any] = answer.json()["data"]
    return data


async def wait_until(check: Any, timeout: float, interval: float = 0.05,
                     what: str = "condition") -> float:
    """Await `check()` (a coroutine function) until it is truthy; seconds it took."""
    started = time.monotonic()
    while True:
        if await check():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(interval)


# -- who holds a connection: /proc (Linux) ---------------------------------------------------

def _tcp_table() -> list[tuple[int, int, str, int]]:
    """(local port, remote port, state, inode) of every IPv4 TCP socket on this host."""
    rows = []
    for fields in map(str.split, Path("/proc/net/tcp").read_text().splitlines()[1:]):
        local, remote = int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)
        rows.append((local, remote, fields[3], int(fields[9])))
    return rows


def _socket_inodes(pid: int) -> set[int]:
    found = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    found.add(int(target[8:-1]))
    return found


def connected_to(port: int, replicas: list[Replica]) -> set[str]:
    """The replicas holding an established connection to 127.0.0.1:`port`."""
    inodes = {inode for _, remote, state, inode in _tcp_table()
              if remote == port and state == "01"}  # 01: ESTABLISHED
    return {r.name for r in replicas if r.running and _socket_inodes(r.pid) & inodes}


def owner_of_client_port(port: int, replicas: list[Replica]) -> str | None:
    """The replica whose socket has local port `port` (the far end of a connection a
    server accepted from it), or None when that connection is gone."""
    inodes = {inode for local, _, _, inode in _tcp_table() if local == port and inode}
    for r in replicas:
        if r.running and _socket_inodes(r.pid) & inodes:
            return r.name
    return None
