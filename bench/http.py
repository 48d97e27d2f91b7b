"""POST /v1/chat over real HTTP against `threadline serve`, driven by wrk, beside GET
/v1/health of the same server in the same run: 1 and 2 worker processes on PostgreSQL with
Redis, and one process on SQLite.

    python -m bench.http [--seconds 10] [--connections 32] [--threads 1] [--workers 1 2]
                         [--store postgres|sqlite|both] [--redis-db 14]
                         [--idempotency-keys] [--json]

Needs wrk (Debian and Ubuntu: `apt-get install wrk`). Closed loop, by wrk: each connection
sends its next request once the last one is answered (requests/s, p50, p99). Chat requests
rotate over 200 users (X-Muxi-User-ID), each created before the timed part. Open loop, by
this process with httpx, since wrk cannot send at a fixed rate (wrk2 can, but no distribution
packages it): chat requests on a timetable of 300 per second (--rate), latency counted from the
scheduled send time so a slow server cannot hide its backlog (coordinated omission).

Each server gets a database of its own (created and dropped here) and a formation id of its
own, so its keys in Redis (database --redis-db) meet no other run's; they are deleted after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import sniffio  # noqa: F401
except ImportError:
    # httpcore runs `import sniffio` on every request; when it is missing (anyio >= 4.12 no
    # longer needs it) each failed import walks sys.path, and the client, not the server,
    # becomes the bottleneck. A None entry makes that import fail at once.
    sys.modules["sniffio"] = None  # type: ignore[assignment]

import asyncpg
import httpx
import redis.asyncio as redis

from bench.pipeline import TEXTS, percentile

ADMIN_URL = os.environ.get("THREADLINE_BENCH_POSTGRES_URL",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("THREADLINE_BENCH_REDIS_URL", "redis://127.0.0.1:6379")
THREADLINE = str(Path(sys.executable).parent / "threadline")
WRK_SCRIPT = Path(__file__).with_name("wrk.lua")
CLIENT_KEY = "tlc_bench_client_key_0123456789"
ADMIN_KEY = "tla_bench_admin_key_0123456789"
USERS = [f"bench-user-{i}@bench.test" for i in range(200)]  # as wrk.lua names them
BODIES = [json.dumps({"message": text}) for text in TEXTS]
OPEN_RATE = 300  # requests/s for the open-loop latency target (--rate)
WARMUP_SECONDS = 2.0
PHASES = ("chat", "trivial", "open")
_HZ = os.sysconf("SC_CLK_TCK")
NO_WRK = ("bench.http drives the server with wrk, which is not installed here.\n"
          "  Debian, Ubuntu: apt-get install wrk\n  macOS: brew install wrk")

Send = Callable[[int], Awaitable[int]]  # request number -> HTTP status (0 on a client error)
Clients = asyncio.Queue[httpx.AsyncClient]  # idle connections
Result = dict[str, Any]


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Server:
    base: str
    pids: list[int]  # the processes that answer requests: the workers
    formation: str
    database: str | None  # PostgreSQL's name for it, to find its backends' CPU

    @property
    def port(self) -> int:
        return int(self.base.rsplit(":", 1)[1])


@contextlib.asynccontextmanager
async def postgres_database() -> AsyncIterator[str]:
    """A throwaway database, dropped even when the run fails."""
    name = f"threadline_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(ADMIN_URL)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{ADMIN_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@contextlib.asynccontextmanager
async def redis_keys_dropped(url: str, formation: str) -> AsyncIterator[None]:
    """Delete the formation's identity cache keys afterwards: they name users of a database
    that is dropped."""
    try:
        yield
    finally:
        client = redis.Redis.from_url(url)
        try:
            keys = [key async for key in client.scan_iter(f"tl:uid:{formation}:*", count=1000)]
            for start in range(0, len(keys), 1000):
                await client.delete(*keys[start:start + 1000])
        finally:
            await client.aclose()


def _listening_inodes(port: int) -> set[int] | None:
    """The inodes of the sockets listening on 127.0.0.1:`port` (one per worker of
    `serve --workers`), from /proc/net/tcp."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return None
    return {int(fields[9]) for fields in map(str.split, lines)
            if fields[1].endswith(f":{port:04X}") and fields[3] == "0A"}  # 0A: LISTEN


def _accepting(pid: int, inodes: set[int]) -> bool:
    """Whether process `pid` waits for connections on one of the sockets `inodes`: its
    event loop's epoll set holds it (fdinfo shows each watched file as `tfd: … ino:<hex>`)."""
    marks = [f"ino:{inode:x} " for inode in inodes]
    for info in Path(f"/proc/{pid}/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            text = info.read_text()
            if any(mark in text for mark in marks):
                return True
    return False


async def _all_accepting(pids: list[int], port: int) -> None:
    """Wait until every worker accepts connections. The first one's start-up summary comes
    while the others may still be starting; wrk connecting then would hand every
    connection to the first, for the whole run."""
    while True:
        inodes = _listening_inodes(port)
        if inodes is None:  # not Linux: no way to tell, give them time
            await asyncio.sleep(5)
            return
        if all(_accepting(pid, inodes) for pid in pids):
            return
        await asyncio.sleep(0.1)


def _connections(pids: list[int], port: int) -> list[int]:
    """How many established connections to `port` each process holds (the kernel spreads
    them across the workers' sockets; a kept-alive connection stays with its worker for
    the whole run)."""
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return [0] * len(pids)
    inodes = {f"socket:[{fields[9]}]" for fields in map(str.split, lines)
              if fields[1].endswith(f":{port:04X}") and fields[3] == "01"}  # 01: ESTABLISHED
    counts = []
    for pid in pids:
        held = 0
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    held += os.readlink(fd) in inodes
        counts.append(held)
    return counts


@contextlib.asynccontextmanager
async def server(data_dir: Path, database_url: str | None, cache_url: str | None,
                 workers: int, formation: str) -> AsyncIterator[Server]:
    """`threadline serve --port 0 [--workers N]` in processes of its own; yields once every
    worker accepts connections, stops it with SIGTERM like an operator."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THREADLINE_")}
    env.update(THREADLINE_DATA_DIR=str(data_dir), THREADLINE_CLIENT_KEY=CLIENT_KEY,
               THREADLINE_ADMIN_KEY=ADMIN_KEY, THREADLINE_LOG_LEVEL="error",
               THREADLINE_LOG_FORMAT="json", THREADLINE_FORMATION_ID=formation,
               COLUMNS="200")  # rich would fold the start-up lines at 80
    if database_url:
        env["THREADLINE_DATABASE_URL"] = database_url
    if cache_url:
        env["THREADLINE_CACHE_URL"] = cache_url
    command = [THREADLINE, "serve", "--host", "127.0.0.1", "--port", "0"]
    if workers > 1:
        command += ["--workers", str(workers)]
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=data_dir, env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    seen, drain = "", None
    try:
        async with asyncio.timeout(60):
            while (("Press Ctrl+C" not in seen or (workers > 1 and "(pids" not in seen))
                   and (line := await proc.stderr.readline())):
                seen += line.decode()
            up = re.search(r"is up on (http://127\.0\.0\.1:(\d+))", seen)
            if not up:
                raise RuntimeError(f"threadline serve did not start:\n{seen}")
            # Keep reading stderr, or a chatty server would block on a full pipe mid-run.
            drain = asyncio.create_task(proc.stderr.read())
            pids = [proc.pid]
            if workers > 1:
                listed = re.search(r"\(pids ([\d, ]+)\)", seen)
                assert listed, seen
                pids = [int(pid) for pid in listed.group(1).split(", ")]
            await _all_accepting(pids, int(up.group(2)))
        database = database_url.rsplit("/", 1)[1] if database_url else None
        yield Server(up.group(1), pids, formation, database)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if proc.returncode and drain:
            _log(f"threadline serve exited with {proc.returncode}: {(await drain)[-2000:]!r}")


def _wrk_arguments(endpoint: str, threads: int, idempotency: bool) -> list[str]:
    if endpoint == "trivial":
        return ["trivial"]
    prefix = uuid.uuid4().hex[:12] if idempotency else "-"  # keys unique to this wrk run
    return ["chat", CLIENT_KEY, str(len(USERS)), str(threads), prefix, *BODIES]


async def run_wrk(wrk: str, base: str, endpoint: str, seconds: float,
                  args: argparse.Namespace) -> Result:
    """One wrk run against `endpoint` ("chat" or "trivial"); wrk.lua's done() reports it."""
    command = [wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds:g}s",
               "--timeout", "10s", "-s", str(WRK_SCRIPT), base, "--",
               *_wrk_arguments(endpoint, args.threads, args.idempotency_keys)]
    proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    found = re.search(r"^WRK_RESULT (\{.*\})$", text, re.MULTILINE)
    if proc.returncode or not found:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}):\n{text}")
    w = json.loads(found.group(1))
    seconds_run = w["duration_us"] / 1e6
    # status: answers >= 400, which wrk counts among the requests; the others never answered.
    errors = sum(w[k] for k in ("connect", "read", "write", "status", "timeout"))
    return {"rps": (w["requests"] - w["status"]) / seconds_run, "p50_ms": w["p50_us"] / 1000,
            "p90_ms": w["p90_us"] / 1000, "p99_ms": w["p99_us"] / 1000,
            "max_ms": w["max_us"] / 1000, "requests": w["requests"], "errors": errors}


@contextlib.asynccontextmanager
async def http_clients(base: str, count: int) -> AsyncIterator[Clients]:
    """`count` connections, lent out one request at a time, each its own httpx.AsyncClient
    with one connection: one client with `count` connections makes the same traffic, but
    httpcore 1.0's pool scans every connection several times per request (O(N^2),
    encode/httpcore#1035), and the client, not the server, would saturate a core."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    clients = [httpx.AsyncClient(base_url=base, limits=limits, timeout=10) for _ in range(count)]
    idle: Clients = asyncio.Queue()
    for client in clients:
        idle.put_nowait(client)
    try:
        yield idle
    finally:
        for client in clients:
            await client.aclose()


def chat_sender(idle: Clients, idempotency: bool) -> Send:
    prefix = uuid.uuid4().hex[:12]

    async def chat(i: int) -> int:
        # As wrk.lua: the same user says something else each time it comes round.
        headers = {"X-Muxi-Client-Key": CLIENT_KEY, "X-Muxi-User-ID": USERS[i % len(USERS)],
                   "Content-Type": "application/json"}
        if idempotency:
            headers["X-Muxi-Idempotency-Key"] = f"{prefix}-{i}"
        body = BODIES[(i // len(USERS) + i) % len(BODIES)]
        client = await idle.get()  # waiting here for a free connection counts as latency
        try:
            return (await client.post("/v1/chat", content=body, headers=headers)).status_code
        except httpx.HTTPError:
            return 0  # refused, reset or timed out: an error like a 5xx
        finally:
            idle.put_nowait(client)

    return chat


async def open_loop(send: Send, rate: int, count: int) -> Result:
    """Send request i at start + i/rate whatever the answers do; latency counts from that
    scheduled instant, so time spent queued behind a slow server (or a late client) shows."""
    latencies = [0.0] * count
    errors = 0

    async def one(i: int, due: float) -> None:
        nonlocal errors
        status = await send(i)
        latencies[i] = (time.perf_counter() - due) * 1000
        errors += not 200 <= status < 300

    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(count):
        due = start + i / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        tasks.append(asyncio.create_task(one(i, due)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    # A server that keeps up answers the last sends like the first; one that cannot has a
    # queue that grows all run long (here: by more than the whole 50 ms budget).
    tenth = max(1, count // 10)
    growth = statistics.median(latencies[-tenth:]) - statistics.median(latencies[:tenth])
    return {"rps": (count - errors) / elapsed, "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99), "errors": errors, "kept_up": growth <= 50}


def _ticks(stat: str) -> float:
    """utime + stime, in seconds, from a /proc/<pid>/stat line."""
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _HZ


def _backends(database: str | None) -> dict[int, float]:
    """CPU seconds so far of each PostgreSQL backend serving `database` (on this machine):
    their titles read "postgres: … USER DATABASE HOST(PORT) STATE"."""
    found: dict[int, float] = {}
    if database is None:
        return found
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if title.startswith("postgres:") and f" {database} " in title:
                found[int(proc.name)] = _ticks((proc / "stat").read_text())
    return found


def _cpu_now(pids: list[int], database: str | None = None) -> dict[str, Any]:
    """CPU seconds so far: each worker, this process, wrk (children that ended), the
    database's backends, the whole machine, and steal (time a hypervisor took)."""
    workers = []
    for pid in pids:
        try:
            workers.append(_ticks(Path(f"/proc/{pid}/stat").read_text()))
        except OSError:  # not Linux, or the worker died: its column reads 0
            workers.append(0.0)
    try:
        machine = [int(n) for n in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
    except OSError:
        machine = [0] * 8
    user, nice, system, _idle, _iowait, irq, softirq, steal = machine
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"worker_cpu": workers, "client_cpu": time.process_time(),
            "wrk_cpu": children.ru_utime + children.ru_stime, "database_cpu": _backends(database),
            "machine_cpu": (user + nice + system + irq + softirq) / _HZ,
            "stolen_cpu": steal / _HZ}


async def with_cpu(phase: Awaitable[Result], srv: Server | None = None) -> Result:
    """Run one phase and add the cores each side used, in cores (CPU seconds per second).
    Each worker runs one event loop: a worker near 1.00 is the bottleneck; a machine near
    its core count leaves nobody room (client, server and database share it); steal makes
    a run slower for no reason of its own. With a server, also the connections each worker
    holds a second into the phase."""
    pids, database = (srv.pids, srv.database) if srv else ([], None)
    before, started = _cpu_now(pids, database), time.perf_counter()
    running = asyncio.ensure_future(phase)
    spread = [0] * len(pids)
    if srv:
        await asyncio.wait({running}, timeout=1.0)
        spread = _connections(pids, srv.port)
    result = await running
    result["connections"] = spread
    wall, after = time.perf_counter() - started, _cpu_now(pids, database)
    for key, value in after.items():
        if key == "worker_cpu":
            result[key] = [(a - b) / wall for a, b in zip(value, before[key], strict=True)]
            result["server_cpu"] = sum(result[key])
        elif key == "database_cpu":  # a backend that started during the phase: all of it
            result[key] = sum(t - before[key].get(pid, 0.0) for pid, t in value.items()) / wall
        else:
            result[key] = (value - before[key]) / wall
    return result


async def idle_machine(seconds: float = 2.0) -> Result:
    """Cores the machine spends while this benchmark does nothing: other people's work."""
    return await with_cpu(asyncio.sleep(seconds, {}))


async def measure(wrk: str, srv: Server, args: argparse.Namespace) -> dict[str, Result]:
    label = f"{len(srv.pids)} worker{'s' if len(srv.pids) > 1 else ''}"
    results = {"before": await idle_machine()}
    # First contact creates each user; keep that out of the timed part. The connections
    # close after, so that the workers hold only the measured ones.
    async with http_clients(srv.base, args.connections) as idle:
        chat = chat_sender(idle, args.idempotency_keys)
        await asyncio.gather(*(chat(i) for i in range(len(USERS))))
    await run_wrk(wrk, srv.base, "chat", WARMUP_SECONDS, args)
    await run_wrk(wrk, srv.base, "trivial", WARMUP_SECONDS / 2, args)
    _log(f"  {label}: wrk, {args.connections} connections, {args.seconds:g} s each")
    results["chat"] = await with_cpu(run_wrk(wrk, srv.base, "chat", args.seconds, args), srv)
    results["trivial"] = await with_cpu(run_wrk(wrk, srv.base, "trivial", args.seconds, args),
                                        srv)
    _log(f"  {label}: open loop (Python), {args.rate} chat requests/s for {args.seconds:g} s")
    async with http_clients(srv.base, args.connections) as idle:
        chat = chat_sender(idle, args.idempotency_keys)
        results["open"] = await with_cpu(
            open_loop(chat, args.rate, int(args.rate * args.seconds)), srv)
    return results


async def run_server(wrk: str, store: str, workers: int,
                     args: argparse.Namespace) -> dict[str, Result]:
    _log(f"{store}, {workers} worker{'s' if workers > 1 else ''}: starting threadline serve")
    with tempfile.TemporaryDirectory(prefix="threadline-bench-") as tmp:
        async with contextlib.AsyncExitStack() as stack:
            url = cache = None
            formation = f"bench{uuid.uuid4().hex[:8]}"
            if store == "postgres":
                url = await stack.enter_async_context(postgres_database())
                cache = f"{REDIS_URL}/{args.redis_db}"
                await stack.enter_async_context(redis_keys_dropped(cache, formation))
            srv = await stack.enter_async_context(
                server(Path(tmp), url, cache, workers, formation))
            return await measure(wrk, srv, args)


def targets(results: dict[str, dict[str, Result]], rate: int) -> dict[str, bool]:
    """The issue's targets, for the PostgreSQL servers measured."""
    met: dict[str, bool] = {}
    for label, r in results.items():
        if label.startswith("postgres"):
            met[f"{label}: chat >= 0.5x trivial"] = r["chat"]["rps"] >= 0.5 * r["trivial"]["rps"]
    if "postgres w2" in results:
        met["postgres w2: chat >= 1000 req/s"] = results["postgres w2"]["chat"]["rps"] >= 1000
    for label, r in results.items():
        if label.startswith("postgres") and rate == OPEN_RATE:  # the target's rate
            met[f"{label}: p99 <= 50 ms at {rate} req/s"] = r["open"]["p99_ms"] <= 50
    return met


def table(results: dict[str, dict[str, Result]], met: dict[str, bool], rate: int) -> None:
    print(f"{'server':<13}{'chat rps':>9}{'p50 ms':>8}{'p99 ms':>8}{'trivial rps':>13}"
          f"{'p50 ms':>8}{'p99 ms':>8}{'chat/triv':>11}{f'p99 ms @{rate}/s':>15}{'errors':>8}")
    for label, r in results.items():
        c, t, o = (r[phase] for phase in PHASES)
        late = "" if o["kept_up"] else " (fell behind)"
        print(f"{label:<13}{c['rps']:>9.0f}{c['p50_ms']:>8.1f}{c['p99_ms']:>8.1f}"
              f"{t['rps']:>13.0f}{t['p50_ms']:>8.1f}{t['p99_ms']:>8.1f}"
              f"{c['rps'] / t['rps']:>11.3f}{o['p99_ms']:>15.1f}"
              f"{c['errors'] + t['errors'] + o['errors']:>8.0f}{late}")
    print("postgres: PostgreSQL + Redis; sqlite: one process, in-process cache. Closed loop by "
          f"wrk; open loop ({rate} req/s) by this process with httpx (wrk has no fixed rate)")
    for name, ok in met.items():
        print(f"  {'met   ' if ok else 'MISSED'} {name}")
    print(f"CPU in cores: server (per worker) / wrk / this process / PostgreSQL backends / "
          f"whole machine ({os.cpu_count()} cores), and steal; connections each worker held")
    for label, r in results.items():
        for phase in PHASES:
            p = r[phase]
            each = "+".join(f"{w:.2f}" for w in p["worker_cpu"])
            held = "+".join(str(n) for n in p["connections"])
            print(f"  {label:<13}{phase:<8}{p['server_cpu']:.2f} ({each}) / {p['wrk_cpu']:.2f}"
                  f" / {p['client_cpu']:.2f} / {p['database_cpu']:.2f} / {p['machine_cpu']:.2f}"
                  f" ({p['stolen_cpu']:.2f})   {held}")
    print("  machine busy before each server's runs, with this benchmark idle (other work): "
          + ", ".join(f"{label} {r['before']['machine_cpu']:.2f}" for label, r in results.items()))
    if any(p["stolen_cpu"] > 0.1 for r in results.values() for p in r.values()):
        print("warning: the hypervisor took CPU during this run; its figures are low and noisy")
    for label, phase in uneven(results):
        held = "+".join(str(n) for n in results[label][phase]["connections"])
        print(f"warning: {label} {phase}: the workers held {held} connections (one listening "
              "socket shared: the worker that wakes first accepts them); not an even split")


def uneven(results: dict[str, dict[str, Result]]) -> list[tuple[str, str]]:
    """The phases whose connections went mostly to some workers: one held under half of
    what another did."""
    return [(label, phase) for label, r in results.items() for phase in PHASES
            if len(held := r[phase]["connections"]) > 1 and min(held) < max(held) / 2]


def as_json(results: dict[str, dict[str, Result]], met: dict[str, bool],
            args: argparse.Namespace, load: tuple[float, float]) -> str:
    out: dict[str, Any] = {}
    for label, r in results.items():
        store, workers = label.split(" ")
        prefix = "" if store == "postgres" else f"{store}_"  # PostgreSQL is the primary
        for phase in ("chat", "trivial"):
            for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "server_cpu", "wrk_cpu",
                        "database_cpu", "machine_cpu", "stolen_cpu"):
                out[f"{prefix}{phase}_{key}_{workers}"] = round(r[phase][key], 3)
        out[f"{prefix}chat_trivial_ratio_{workers}"] = round(
            r["chat"]["rps"] / r["trivial"]["rps"], 4)
        out[f"{prefix}chat_p99_ms_at_{args.rate}rps_{workers}"] = round(r["open"]["p99_ms"], 3)
        out[f"{prefix}kept_up_at_{args.rate}rps_{workers}"] = bool(r["open"]["kept_up"])
        out[f"{prefix}errors_{workers}"] = int(sum(r[p]["errors"] for p in PHASES))
        out[f"{prefix}busy_before_cpu_{workers}"] = round(r["before"]["machine_cpu"], 3)
        for phase in PHASES:
            out[f"{prefix}{phase}_connections_{workers}"] = r[phase]["connections"]
    # The headline: the worst of the PostgreSQL servers measured.
    open_p99 = [r["open"]["p99_ms"] for label, r in results.items()
                if label.startswith("postgres")]
    if open_p99:
        out[f"chat_p99_ms_at_{args.rate}rps"] = round(max(open_p99), 3)
    out.update(missed=[name for name, ok in met.items() if not ok],
               uneven=[f"{label} {phase}" for label, phase in uneven(results)],
               seconds=args.seconds,
               connections=args.connections, wrk_threads=args.threads, users=len(USERS),
               idempotency_keys=args.idempotency_keys, open_loop="python-httpx",
               loadavg_before=load[0], loadavg_after=load[1])
    return json.dumps(out)


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per measured phase")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="PostgreSQL servers to measure, by worker count")
    parser.add_argument("--store", choices=["postgres", "sqlite", "both"], default="both")
    parser.add_argument("--rate", type=int, default=OPEN_RATE,
                        help="chat requests/s of the open loop (the target is set at 300)")
    parser.add_argument("--redis-db", type=int, default=14)
    parser.add_argument("--idempotency-keys", action="store_true",
                        help="send a unique X-Muxi-Idempotency-Key with each chat request "
                             "(each turn then claims its message)")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None:
        _log(NO_WRK)
        raise SystemExit(2)
    configs = [("postgres", n) for n in args.workers] if args.store != "sqlite" else []
    if args.store != "postgres":
        configs.append(("sqlite", 1))  # SQLite serves one process
    load_before = os.getloadavg()[0]
    results = {f"{store} w{n}": await run_server(wrk, store, n, args) for store, n in configs}
    met = targets(results, args.rate)
    table(results, met, args.rate)
    if args.json:
        print(as_json(results, met, args, (load_before, os.getloadavg()[0])))


if __name__ == "__main__":
    asyncio.run(main())
